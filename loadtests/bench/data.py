"""The benchmark's own data: a dedicated Postgres database, Redis db and key folder, loaded by `demo`.

The development data (`make run`) is left alone: the bench uses database `healthcode_bench` on the same
Postgres server, Redis db 12 on the same Redis, and its own keys folder beside the configured one (the
demo writes its client secrets there). It loads the usual demo population, so the identity numbers
come from `app.dev.population.synthetic_people` with the demo's seed.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import orjson
from redis import Redis

from app.db import recreate_database
from app.dev.population import synthetic_people
from app.identity import Identity, pseudonym
from app.limits import as_spec, unbounded
from app.settings import Settings, SettingsError
from cache.keys import status_field
from loadtests.bench import BenchError

BENCH_DATABASE: Final = "healthcode_bench"
BENCH_REDIS_DB: Final = 12
PEOPLE: Final = 10_000
SEED: Final = 2022  # `healthcode demo`'s default
IDENTITIES: Final = 1000  # requests rotate through this many people, so the load is not one key


@dataclass(frozen=True, slots=True)
class BenchData:
    env: dict[str, str]  # the environment for `healthcode` commands run against the bench data
    settings: Settings
    bearer: str  # a citizen-backend client key
    bodies: list[bytes]  # one POST /v1/status body per identity
    status_keys: list[tuple[bytes, bytes]]  # the Redis bucket and field of each identity's entry


def with_path(url: str, path: str) -> str:
    """`url` with its path replaced: another database on the same server, another Redis db."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, parts.fragment))


async def scratch_stores(database: str, redis_db: int) -> tuple[str, str]:
    """(database URL, Redis URL): `database` made new on the configured Postgres server, and db `redis_db`
    of the configured Redis, for a benchmark that loads data of its own."""
    server = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    url = with_path(server, f"/{database}")
    redis_url = with_path(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"), f"/{redis_db}")
    try:
        await recreate_database(url)
    except (OSError, asyncpg.PostgresError) as exc:
        raise BenchError(f"cannot create database {database} ({exc}); start the servers with `make servers`") from exc
    return url, redis_url


def bench_env(base: Mapping[str, str]) -> dict[str, str]:
    try:
        Settings.from_env(base)
    except SettingsError as exc:
        raise BenchError(f"{exc}; run `make bench`, or source .healthcode/env.sh first") from None
    keys_dir = Path(base["HEALTHCODE_KEYS_DIR"])
    return {
        **base,
        "DATABASE_URL": with_path(base["DATABASE_URL"], f"/{BENCH_DATABASE}"),
        "REDIS_URL": with_path(base["REDIS_URL"], f"/{BENCH_REDIS_DB}"),
        "HEALTHCODE_KEYS_DIR": str(keys_dir.parent / f"{keys_dir.name}-bench"),
        # One demo key stands in for a province's clients: the limiter runs on every request, as in
        # production, with buckets no run can empty.
        "HEALTHCODE_RATE_LIMITS": as_spec(unbounded()),
    }


async def _ensure_database(url: str) -> None:
    admin = await asyncpg.connect(with_path(url, "/postgres"))
    try:
        if not await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", BENCH_DATABASE):
            await admin.execute(f"CREATE DATABASE {BENCH_DATABASE}")
    finally:
        await admin.close()


def healthcode_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "app.cli", *args]


def prepare(base: Mapping[str, str] | None = None) -> BenchData:
    """Load the demo population into the bench database and Redis db; pick the identities to query."""
    env = bench_env(os.environ if base is None else base)
    settings = Settings.from_env(env)
    try:
        asyncio.run(_ensure_database(settings.database_url))
    except (OSError, asyncpg.PostgresError) as exc:
        raise BenchError(f"cannot create database {BENCH_DATABASE}: {exc}") from None
    print(f"loading {PEOPLE} demo people into {BENCH_DATABASE} and Redis db {BENCH_REDIS_DB}…", file=sys.stderr)
    demo = subprocess.run(
        healthcode_command("demo", "--people", str(PEOPLE), "--seed", str(SEED)),
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if demo.returncode != 0:
        raise BenchError(f"healthcode demo failed:\n{demo.stdout}{demo.stderr}")
    secrets = json.loads((settings.keys_dir / "demo-clients.json").read_text())
    people = list(synthetic_people(PEOPLE, SEED))[:: PEOPLE // IDENTITIES]
    bodies, keys = [], []
    for person in people:
        bodies.append(orjson.dumps({"id_type": "resident", "id_number": person.number}))
        keys.append(status_field(pseudonym(Identity("resident", person.number), settings.pepper)))
    return BenchData(env, settings, secrets["citizen-backend"], bodies, keys)


def cached_count(data: BenchData) -> int:
    """How many of the identities have their entry in Redis (all of them, after a warm-up)."""
    with Redis.from_url(data.settings.redis_url) as redis, redis.pipeline(transaction=False) as pipe:
        for key in data.status_keys:
            pipe.hexists(*key)
        return sum(pipe.execute())
