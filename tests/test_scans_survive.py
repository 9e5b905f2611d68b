"""Scans are never lost: what the recorder streamed survives Redis losing its data, and across a Redis
restart and a poison entry, scans sent == scans stored + scans dead-lettered (+ refused ones counted)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest
from redis.asyncio import Redis

from app.http.appkeys import PG, SCANS
from app.scans import ScanEvent, ScanRecorder, ScanWriter
from app.settings import Settings
from cache.connection import open_redis
from cache.scan_stream import ScanStream
from tests.conftest import AppFactory
from tests.own_redis import OwnRedis
from tests.test_api_verify import CHECKPOINT, Api, post_verify, token_for

BOUND_SECONDS = 20.0


async def until(
    condition: Callable[[], Awaitable[bool]], between: Callable[[], Awaitable[object]] | None = None
) -> None:
    """Poll `condition` (doing `between` each time, as the background loop would) until it holds; bounded."""
    deadline = time.monotonic() + BOUND_SECONDS
    while not await condition():
        assert time.monotonic() < deadline, "condition not reached"
        if between is not None:
            await between()
        await asyncio.sleep(0.01)


def event(n: int) -> ScanEvent:
    return ScanEvent(int(time.time()), f"gate-{n}", 1, bytes(16), True, "ok", "green", "green")


async def stored(db: asyncpg.Connection, checkpoint: str | None = None) -> int:
    if checkpoint is None:
        count: int = await db.fetchval("SELECT count(*) FROM scan_events")
    else:
        count = await db.fetchval("SELECT count(*) FROM scan_events WHERE checkpoint = $1", checkpoint)
    return count


async def test_kept_scans_are_forgotten_once_written(api: Api, db: asyncpg.Connection, redis: Redis) -> None:
    recorder = api.app[SCANS]
    for n in range(3):
        await recorder.record(event(n))
    assert await recorder.guard() == 0
    assert recorder.kept == 3  # not yet written: kept

    writer = ScanWriter(ScanStream(redis), api.app[PG], "writer-1")
    assert await writer.drain_once(block_ms=0) == 3
    await recorder.record(event(3))  # recorded after the writer's round: still unwritten
    assert await recorder.guard() == 0
    assert recorder.kept == 1


async def test_kept_scans_are_rewritten_when_redis_lost_its_data(
    api: Api, db: asyncpg.Connection, redis: Redis
) -> None:
    recorder = api.app[SCANS]
    writer = ScanWriter(ScanStream(redis), api.app[PG], "writer-1")
    await recorder.record(event(0))
    assert await writer.drain_once(block_ms=0) == 1  # written before the loss
    for n in range(1, 4):
        await recorder.record(event(n))
    await recorder.guard()
    await redis.flushdb()  # what a restart without persistence does to the data

    assert await recorder.guard() == 3
    assert (await stored(db), recorder.rewritten, recorder.kept) == (4, 3, 0)
    await recorder.record(event(4))
    assert await writer.drain_once(block_ms=0) == 1
    assert await stored(db) == 5


async def test_a_rewrite_that_fails_is_tried_again(
    api: Api, db: asyncpg.Connection, redis: Redis, settings: Settings
) -> None:
    recorder = api.app[SCANS]
    await recorder.record(event(1))
    await recorder.guard()
    await redis.flushdb()
    working = recorder.pool
    recorder.pool = await asyncpg.create_pool(
        settings.database_url, min_size=1, max_size=1, server_settings={"search_path": "nowhere"}
    )
    try:
        with pytest.raises(asyncpg.UndefinedTableError):
            await recorder.guard()
    finally:
        await recorder.pool.close()
        recorder.pool = working
    assert recorder.kept == 1
    assert await recorder.guard() == 1
    assert await stored(db) == 1


async def test_what_is_kept_is_bounded(api: Api, redis: Redis) -> None:
    recorder = ScanRecorder(ScanStream(redis), api.app[PG], keep=2)
    for n in range(3):
        await recorder.record(event(n))
    assert (recorder.kept, recorder.unkept) == (2, 1)


@pytest.mark.slow
async def test_scans_sent_equal_stored_plus_dead_lettered_across_a_redis_restart_and_a_poison_entry(
    make_client: AppFactory, db: asyncpg.Connection, client_keys: dict[str, str], tmp_path: Path
) -> None:
    server = OwnRedis(tmp_path)
    server.start()
    api = await make_client(redis_url=server.url)
    recorder = api.app[SCANS]
    key = client_keys["scanner"]
    writer_redis = open_redis(server.url, socket_timeout=5.0, client_class=Redis)
    writer = ScanWriter(ScanStream(writer_redis), api.app[PG], "writer-1", first_pause=0.01, max_pause=0.1)
    sent = refused = 0

    async def scan(count: int, *, junk: int = 0) -> None:
        nonlocal sent, refused
        for _ in range(count):
            r = await post_verify(api, key, {"token": token_for(api, bytes(16)), "checkpoint": CHECKPOINT})
            assert r.status == 200, await r.text()
            assert (await r.json())["valid"] is True
            sent += 1
        for _ in range(junk):
            r = await post_verify(api, key, {"token": "junk", "checkpoint": CHECKPOINT})
            assert r.status == 200, await r.text()
            refused += 1

    task = asyncio.create_task(writer.run())
    try:
        await scan(20, junk=5)
        await until(lambda: _equals(stored(db, CHECKPOINT), 20))

        # The writer falls behind (here: stopped), scans pile up unread, and Redis dies with them.
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await scan(20)
        await recorder.guard()  # the background loop does this every second
        server.kill()
        task = asyncio.create_task(writer.run())  # a writer that finds Redis down backs off, never dies
        await scan(10, junk=5)  # Redis down: straight to Postgres
        await until(lambda: _at_least(writer, 2))
        server.start()  # empty: no stream, no group, no epoch
        await scan(20)
        poison = ScanEvent(int(time.time()), "gate\x00poison", 1, bytes(16), True, "ok", "green", "green")
        await ScanStream(writer_redis).add(poison.to_fields())  # past the edge somehow
        sent += 1

        await until(lambda: _equals(stored(db, CHECKPOINT), 70), between=recorder.guard)
        dead = ScanStream(writer_redis)
        await until(lambda: _equals(_dead_count(writer_redis, dead), 1))
        assert await recorder.refusals.flush(api.app[PG]) == refused
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await writer_redis.aclose()
        server.kill()

    counted = await db.fetchval("SELECT coalesce(sum(scans), 0) FROM scan_refusals WHERE checkpoint = $1", CHECKPOINT)
    assert (sent, refused) == (71, 10)
    assert sent + refused == await stored(db) + writer.dead_lettered + counted
    assert (await stored(db), writer.dead_lettered, counted) == (70, 1, 10)  # every real scan stored
    assert recorder.rewritten >= 20  # the twenty Redis lost unread came back from the recorder


async def _equals(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


async def _at_least(writer: ScanWriter, failures: int) -> bool:
    return writer.failures >= failures


async def _dead_count(redis: Redis, stream: ScanStream) -> int:
    return int(await redis.get(stream.dead_count_key) or 0)
