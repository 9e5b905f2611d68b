"""Postgres: connection pool with bounded retries, and numbered SQL migrations."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import orjson
from asyncpg.connection import LoggedQuery

log = logging.getLogger(__name__)

# A plain connection or one lent by a pool: what code that runs queries takes.
Conn = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
_MIGRATION_NAME = re.compile(r"(\d{3})_([a-z0-9_]+)\.sql")
# Any constant works: it only has to be the same in every process that migrates.
_MIGRATION_LOCK = 0x4843_0001

# What Postgres raises when it cannot answer now, as opposed to refusing a query: not reachable or
# refusing connections (OSError, class 08), shutting down, restarting or cancelling on a timeout
# (class 57), out of connections or resources (class 53), or too slow for a caller's deadline.
UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
)


class DatabaseUnavailable(Exception):
    """Postgres cannot answer now (down, restarting, unreachable or too slow); try again later.

    Raised from one of UNAVAILABLE_ERRORS; callers answer 503 with Retry-After, never 500.
    """


def unavailable_reason(exc: BaseException) -> str:
    """A short description of an UNAVAILABLE_ERRORS failure for one log line (no traceback)."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    return f"{exc.__class__.__name__}: {exc}"[:200]


async def create_pool(
    dsn: str,
    *,
    min_size: int,
    max_size: int,
    attempts: int = 5,
    connect_timeout: float = 10.0,
    command_timeout: float = 30.0,
    query_logger: Callable[[LoggedQuery], None] | None = None,
) -> asyncpg.Pool:
    """Connect, retrying a few times with a growing pause, then give up with the last error.

    `connect_timeout` bounds each new connection (asyncpg waits 60 s by default), so a pool that has
    to reconnect to an unreachable server fails within it instead of holding callers.
    """
    _quiet_floor_retries()
    init = init_connection if query_logger is None else _with_logger(query_logger)
    delay = 0.2
    for attempt in range(1, attempts + 1):
        try:
            pool = await asyncpg.create_pool(
                dsn,
                min_size=min_size,
                max_size=max_size,
                timeout=connect_timeout,
                command_timeout=command_timeout,
                max_inactive_connection_lifetime=300,
                init=init,
            )
        except (OSError, asyncpg.PostgresError) as exc:
            if attempt == attempts:
                raise
            log.warning("postgres not reachable (%s), attempt %d of %d", exc, attempt, attempts)
            await asyncio.sleep(delay)
            delay *= 2
        else:
            assert pool is not None
            return pool
    raise AssertionError("unreachable")


class _FloorRetries(logging.Filter):
    """Drops asyncpg's warning, with a traceback, each time it fails to reopen the pool's minimum
    connections (every 1 to 60 s while Postgres is down): the outage is logged once, by app.health."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Failed to restore the pool connection floor")


def _quiet_floor_retries() -> None:
    pool_log = logging.getLogger("asyncpg.pool")
    if not any(isinstance(f, _FloorRetries) for f in pool_log.filters):
        pool_log.addFilter(_FloorRetries())


async def close_pool(pool: asyncpg.Pool, grace_seconds: float = 10.0) -> None:
    """Close gracefully, and terminate if that fails or takes too long, so shutdown cannot hang."""
    try:
        await asyncio.wait_for(pool.close(), grace_seconds)
    except (TimeoutError, asyncio.CancelledError, asyncpg.PostgresError, OSError):
        pool.terminate()
        raise


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


class MigrationError(RuntimeError):
    pass


def load_migrations(directory: Path = SQL_DIR) -> list[Migration]:
    migrations = []
    for path in sorted(directory.glob("*.sql")):
        match = _MIGRATION_NAME.fullmatch(path.name)
        if not match:
            continue  # query files live beside migrations
        migrations.append(Migration(int(match[1]), match[2], path.read_text()))
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migrations share a number in {directory}")
    return migrations


async def migrate(conn: asyncpg.Connection, migrations: list[Migration] | None = None) -> list[Migration]:
    """Apply what is not yet applied, in order, each in its own transaction; return what was applied."""
    migrations = load_migrations() if migrations is None else migrations
    applied_now = []
    # The lock comes first: two first-ever runs would otherwise race to create the bookkeeping table.
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version    integer PRIMARY KEY,
                   name       text        NOT NULL,
                   checksum   text        NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = {
            r["version"]: r["checksum"] for r in await conn.fetch("SELECT version, checksum FROM schema_migrations")
        }
        for migration in migrations:
            if migration.version in done:
                if done[migration.version] != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.version:03d}_{migration.name} changed after it was applied; "
                        "add a new migration instead of editing an old one"
                    )
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
            log.info("applied migration %03d_%s", migration.version, migration.name)
            applied_now.append(migration)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
    return applied_now


def _with_logger(logger: Callable[[LoggedQuery], None]) -> Callable[[asyncpg.Connection], Coroutine[Any, Any, None]]:
    """The pool's connection set-up plus a query logger (asyncpg times each statement; used for metrics)."""

    async def init(conn: asyncpg.Connection) -> None:
        await init_connection(conn)
        conn.add_query_logger(logger)

    return init


async def init_connection(conn: asyncpg.Connection) -> None:
    """Per-connection set-up: json and jsonb travel as Python objects through orjson."""
    for name in ("json", "jsonb"):
        await conn.set_type_codec(name, schema="pg_catalog", encoder=_json_dumps, decoder=orjson.loads)


def _json_dumps(value: object) -> str:
    return orjson.dumps(value).decode()


async def connect(dsn: str) -> asyncpg.Connection:
    """One connection for command-line work, set up like the pool's."""
    conn = await asyncpg.connect(dsn)
    await init_connection(conn)
    return conn


@asynccontextmanager
async def connection(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """`connect`, closed when the block ends however it ends."""
    conn = await connect(dsn)
    try:
        yield conn
    finally:
        await conn.close()


def _admin_url(url: str) -> tuple[str, str]:
    """The same server's `postgres` database, and the name of the database `url` names."""
    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
        raise ValueError(f"database name {name!r} must be a plain lower-case identifier")
    return urlunsplit((parts.scheme, parts.netloc, "/postgres", parts.query, parts.fragment)), name


async def recreate_database(url: str) -> None:
    """Drop and create the database `url` names, then migrate it: for tests and benchmarks only."""
    admin_url, name = _admin_url(url)
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    async with connection(url) as conn:
        await migrate(conn)


async def drop_database(url: str) -> None:
    admin_url, name = _admin_url(url)
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await admin.close()
