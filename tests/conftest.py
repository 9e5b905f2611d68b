"""Fixtures against the real servers: a dedicated Postgres database and a dedicated Redis db number.

DATABASE_URL / REDIS_URL (as `make test` exports them) say where the servers are. Each run creates its
own database on that server (dropped at the end) and picks a Redis db number from its process id, so two
runs on one machine do not clean each other's data; both are cleaned per test.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from app.clients import add_client
from app.db import connect, drop_database, recreate_database
from app.http.app import create_app
from app.keys.lifecycle import activate, new_key
from app.limits import unbounded
from app.scopes import CLIENT_KINDS, RECORD_KINDS
from app.settings import Settings

TEST_DATABASE = f"healthcode_test_{os.getpid()}"
# Db 0 is the demo's and 14 the cache tests'; the rest are spread over runs.
TEST_REDIS_DB = 1 + os.getpid() % 13
# Everything but the append-only audit log, which refuses deletion by design. DELETE, not TRUNCATE:
# on these small tables it takes about 10 ms where TRUNCATE of every partition takes up to 0.6 s.
# Staging and rejection rows go with their batch (ON DELETE CASCADE).
_CLEAN_TABLES = (
    "appeal_decisions", "appeals",  # first: they refer to clients and overrides
    "declarations", "relation_lookups", "relations",
    "subjects", "vaccinations", "nucleic_tests", "travel_arrivals", "designations", "statuses", "risk_areas",
    "api_clients", "signing_keys", "scan_events", "scan_refusals", "status_overrides", "batch_rejections", "samples",
    "staging_population", "staging_vaccination", "staging_test", "staging_travel", "staging_designation",
    "staging_risk_area", "batches", "status_refresh_owed", "record_history",
    "peers", "federation_subjects", "credential_keys",
)  # fmt: skip
_CLEAN = ";".join(f"DELETE FROM {table}" for table in _CLEAN_TABLES)


def _with_path(url: str, path: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, parts.fragment))


@pytest.fixture(scope="session")
def server_urls() -> tuple[str, str]:
    database = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    redis = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    return _with_path(database, f"/{TEST_DATABASE}"), _with_path(redis, f"/{TEST_REDIS_DB}")


@pytest.fixture(scope="session")
def database_url(server_urls: tuple[str, str]) -> Iterator[str]:
    """A fresh database for the session, migrated once, dropped at the end."""
    url = server_urls[0]
    asyncio.run(recreate_database(url))
    yield url
    asyncio.run(drop_database(url))


@pytest.fixture
def settings(database_url: str, server_urls: tuple[str, str], tmp_path: Path) -> Settings:
    return Settings(
        database_url=database_url,
        redis_url=server_urls[1],
        pepper=secrets.token_bytes(32),
        handle_key=secrets.token_bytes(32),
        keys_dir=tmp_path / "keys",
        token_ttl_seconds=300,
        negative_ttl_seconds=30,
        pg_pool_min=1,
        pg_pool_max=5,
        # Tests of something else may send many requests from one client; limits have tests of their own.
        rate_limits=unbounded(),
    )


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the test database, emptied before the test."""
    conn = await connect(settings.database_url)
    await conn.execute(_CLEAN)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[Redis]:
    client = Redis.from_url(settings.redis_url)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.flushdb()
        await client.aclose()


@pytest.fixture
async def signing_key(db: asyncpg.Connection, settings: Settings) -> str:
    """The thumbprint of an active ES256 key."""
    return await activate(db, await new_key(db, settings.keys_dir))


@pytest.fixture
async def client_keys(db: asyncpg.Connection) -> dict[str, str]:
    """A secret per client kind: citizen-backend, scanner, agency (with every record kind)."""
    scopes = {"agency": RECORD_KINDS}
    return {kind: (await add_client(db, f"test-{kind}", kind, scopes.get(kind, ()))).secret for kind in CLIENT_KINDS}


Api = TestClient[web.Request, web.Application]
AppFactory = Callable[..., Awaitable[Api]]


@pytest.fixture
def make_client(
    aiohttp_client: Callable[..., Awaitable[Api]],
    settings: Settings,
    db: asyncpg.Connection,
    redis: Redis,
    signing_key: str,
    client_keys: dict[str, str],
) -> AppFactory:
    """Start the app (without background tasks) on the test servers; keyword arguments change settings."""

    async def start(**overrides: object) -> Api:
        app = create_app(replace(settings, **overrides), background=False)  # type: ignore[arg-type]
        return await aiohttp_client(app)

    return start


@pytest.fixture
async def api(make_client: AppFactory) -> Api:
    return await make_client()
