"""Redis failing never fails a status write: Postgres stores it, Redis is owed it, and is repaid later."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import asyncpg
import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from app.dev.demo import load_population
from app.dev.population import synthetic_people
from app.rules.ruleset import load_ruleset
from app.settings import Settings
from app.statuses.publish import StatusPublisher
from cache.connection import open_redis
from cache.entry import unpack
from cache.keys import status_field
from cache.status_writer import StatusWriter

RULESET = load_ruleset()
DEAD_REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1


@pytest.fixture
async def dead_redis() -> AsyncIterator[Redis]:
    client = open_redis(DEAD_REDIS_URL, client_class=Redis)
    yield client
    await client.aclose()


async def owed(db: asyncpg.Connection) -> set[bytes]:
    return {bytes(r["pseudonym"]) for r in await db.fetch("SELECT pseudonym FROM status_refresh_owed")}


async def test_statuses_are_stored_and_owed_while_redis_is_down_then_repaid(
    db: asyncpg.Connection, redis: Redis, dead_redis: Redis, settings: Settings
) -> None:
    now = int(time.time())
    people = await load_population(db, synthetic_people(150, 5), settings.pepper, now)
    down = StatusPublisher(StatusWriter(dead_redis), RULESET)

    assert await down.refresh(db, people, now) == 150  # bulk: staged upsert, pipelined publish
    assert await down.recompute(db, people[:3], now + 1) != {}  # one at a time, as a miss does

    assert await db.fetchval("SELECT count(*) FROM statuses") == 150
    assert await owed(db) == set(people)
    assert down.owed == 153
    assert await redis.dbsize() == 0

    up = StatusPublisher(StatusWriter(redis), RULESET)
    assert await up.repay(db) == 150
    assert await owed(db) == set()
    for p in people[:5]:
        raw = await redis.hget(*status_field(p))
        assert isinstance(raw, bytes)
        stored = await db.fetchrow("SELECT colour, version FROM statuses WHERE pseudonym = $1", p)
        assert stored is not None
        assert (unpack(raw).colour, unpack(raw).version) == (stored["colour"], stored["version"])


async def test_repaying_into_a_redis_still_down_keeps_everything_owed(
    db: asyncpg.Connection, dead_redis: Redis, settings: Settings
) -> None:
    now = int(time.time())
    people = await load_population(db, synthetic_people(20, 6), settings.pepper, now)
    down = StatusPublisher(StatusWriter(dead_redis), RULESET)
    await down.refresh(db, people, now)

    with pytest.raises(RedisConnectionError):
        await down.repay(db)
    assert await owed(db) == set(people)
