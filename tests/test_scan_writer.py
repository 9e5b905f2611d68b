"""The scan writer against real Postgres and Redis: poison entries, a Redis that lost its data or is
down at start-up, and entries a dead consumer left behind."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import asyncpg
import pytest
from redis.asyncio import Redis

from app.db import close_pool, create_pool
from app.scans import ScanEvent, ScanWriter
from app.settings import Settings
from cache.connection import open_redis
from cache.scan_stream import ScanStream
from tests.own_redis import OwnRedis
from tests.test_cache_stream import idle


@pytest.fixture
async def pool(settings: Settings, db: asyncpg.Connection) -> AsyncIterator[asyncpg.Pool]:
    created = await create_pool(settings.database_url, min_size=1, max_size=2)
    yield created
    await close_pool(created)


@pytest.fixture
def stream(redis: Redis) -> ScanStream:
    return ScanStream(redis)


def scan(checkpoint: str = "gate-7", n: int = 0) -> dict[str, bytes | str | int]:
    return ScanEvent(int(time.time()), checkpoint, 1, bytes([n]) * 16, True, "ok", "green", "green").to_fields()


async def stored(db: asyncpg.Connection) -> list[str]:
    return [r["checkpoint"] for r in await db.fetch("SELECT checkpoint FROM scan_events ORDER BY stream_id")]


async def pending(redis: Redis) -> int:
    count: int = (await redis.xpending("hc:scans", "scan-writers"))["pending"]
    return count


async def until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    """Let the loop run until `condition` holds; bounded, never a guessed sleep."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


async def test_a_poison_entry_is_dead_lettered_and_never_blocks_the_others(
    stream: ScanStream, pool: asyncpg.Pool, db: asyncpg.Connection, redis: Redis
) -> None:
    await stream.add(scan("gate-1"))
    poison = await stream.add(scan("gate\x002"))  # past the edge somehow: Postgres text refuses NUL
    await stream.add(scan("gate-3"))
    writer = ScanWriter(stream, pool, "writer-1", batch_size=10, max_attempts=3)

    assert await writer.drain_once(block_ms=0) == 3
    assert await stored(db) == ["gate-1", "gate-3"]  # stored in the same round, around the poison
    assert await pending(redis) == 1
    assert await writer.drain_once(block_ms=0) == 1  # attempt 2
    assert await writer.drain_once(block_ms=0) == 1  # attempt 3: set aside
    assert await pending(redis) == 0
    assert await writer.drain_once(block_ms=0) == 0

    [(_, letter)] = await stream.dead_letters()
    assert (letter[b"_id"], letter[b"cp"], letter[b"_attempts"]) == (poison, b"gate\x002", b"3")
    assert letter[b"_error"].startswith(b"CharacterNotInRepertoireError: invalid byte sequence")
    assert (writer.written, writer.dead_lettered) == (2, 1)
    assert await redis.get("{hc:scans}:dead:count") == b"1"

    await stream.add(scan("gate-4"))
    assert await writer.drain_once(block_ms=0) == 1
    assert await stored(db) == ["gate-1", "gate-3", "gate-4"]


async def test_an_unreadable_entry_is_dead_lettered_at_once(
    stream: ScanStream, pool: asyncpg.Pool, db: asyncpg.Connection
) -> None:
    await stream.add({"at": "soon"})
    await stream.add(scan("gate-1"))
    writer = ScanWriter(stream, pool, "writer-1")

    assert await writer.drain_once(block_ms=0) == 2
    assert await stored(db) == ["gate-1"]
    [(_, letter)] = await stream.dead_letters()
    assert letter[b"_error"] == b"unreadable entry: invalid literal for int() with base 10: b'soon'"
    assert letter[b"_attempts"] == b"1"


async def test_postgres_refusing_every_row_alike_is_not_poison(
    settings: Settings, stream: ScanStream, db: asyncpg.Connection, redis: Redis
) -> None:
    # A misconfigured or failing database refuses every entry: they must wait, not be dead-lettered.
    broken = await asyncpg.create_pool(
        settings.database_url, min_size=1, max_size=1, server_settings={"search_path": "nowhere"}
    )
    try:
        await stream.add(scan("gate-1"))
        writer = ScanWriter(stream, broken, "writer-1", max_attempts=1)
        for _ in range(3):
            with pytest.raises(asyncpg.UndefinedTableError):
                await writer.drain_once(block_ms=0)
    finally:
        await broken.close()
    assert (writer.dead_lettered, await pending(redis)) == (0, 1)
    assert await stream.dead_letters() == []


async def test_the_group_a_redis_restart_lost_is_recreated(
    stream: ScanStream, pool: asyncpg.Pool, db: asyncpg.Connection, redis: Redis
) -> None:
    writer = ScanWriter(stream, pool, "writer-1")
    await stream.add(scan("gate-1"))
    assert await writer.drain_once(block_ms=0) == 1
    await redis.delete("hc:scans")  # what a restart without persistence leaves: no stream, no group
    await stream.add(scan("gate-2"))  # the recorder's XADD makes a new stream, without the group

    assert await writer.drain_once(block_ms=0) == 1
    assert await stored(db) == ["gate-1", "gate-2"]
    assert await pending(redis) == 0


async def test_what_a_dead_consumer_left_pending_is_claimed_and_stored(
    stream: ScanStream, pool: asyncpg.Pool, db: asyncpg.Connection, redis: Redis
) -> None:
    ids = [await stream.add(scan(f"gate-{n}")) for n in range(2)]
    await stream.read("dead-host", count=10, block_ms=0)  # read, then its host is gone for good
    await idle(redis, "dead-host", ids, 120_000)
    writer = ScanWriter(stream, pool, "writer-1", claim_idle_ms=60_000)

    assert await writer.drain_once(block_ms=0) == 2
    assert await stored(db) == ["gate-0", "gate-1"]
    assert (writer.claimed, await pending(redis)) == (2, 0)


async def test_entries_another_consumer_read_moments_ago_are_left_to_it(
    stream: ScanStream, pool: asyncpg.Pool, db: asyncpg.Connection, redis: Redis
) -> None:
    await stream.add(scan("gate-1"))
    await stream.read("busy-host", count=10, block_ms=0)
    writer = ScanWriter(stream, pool, "writer-1", claim_idle_ms=60_000)
    assert await writer.drain_once(block_ms=0) == 0
    assert (await stored(db), await pending(redis)) == ([], 1)


@pytest.mark.slow
async def test_the_writer_survives_redis_down_at_start_up(
    tmp_path: Path, pool: asyncpg.Pool, db: asyncpg.Connection
) -> None:
    server = OwnRedis(tmp_path)  # its port is free: nothing answers there yet
    client = open_redis(server.url, socket_timeout=5.0, client_class=Redis)
    writer = ScanWriter(ScanStream(client), pool, "writer-1", first_pause=0.01, max_pause=0.05)
    task = asyncio.create_task(writer.run())
    try:
        await until(lambda: writer.failures >= 3)
        assert not task.done()
        server.start()
        recorder_stream = ScanStream(client)
        for n in range(5):
            await recorder_stream.add(scan(f"gate-{n}"))
        await until(lambda: writer.written == 5)
        assert await stored(db) == [f"gate-{n}" for n in range(5)]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.aclose()
        server.kill()
