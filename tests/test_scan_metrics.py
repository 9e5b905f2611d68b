"""A scan writer stuck for good shows in /metrics: the backlog, the age of its oldest scan, dead letters."""

from __future__ import annotations

import time

import asyncpg
from aiohttp import web
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from app.http.appkeys import PG, SCAN_WRITER, SCANS
from app.http.handlers.metrics import sync
from app.ops.metrics import Metrics
from app.scans import ScanWriter
from cache.scan_stream import ScanStream
from tests.conftest import AppFactory

Api = TestClient[web.Request, web.Application]


async def metrics(api: Api) -> dict[str, float]:
    r = await api.get("/metrics")
    assert r.status == 200, await r.text()
    samples = {}
    for line in (await r.text()).splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


async def test_a_stuck_writer_shows_as_an_old_backlog(api: Api, redis: Redis) -> None:
    stream = ScanStream(redis)
    await stream.ensure_group()
    now_ms = int(time.time() * 1000)
    await redis.xadd("hc:scans", {"n": 0}, id=f"{now_ms - 120_000}-0")
    await stream.read("stuck-host", count=1, block_ms=0)  # read two minutes ago, never written
    await redis.xadd("hc:scans", {"n": 1}, id=f"{now_ms - 60_000}-0")  # never read

    samples = await metrics(api)

    assert samples["healthcode_scan_backlog_up"] == 1
    assert samples['healthcode_scan_backlog_entries{state="pending"}'] == 1
    assert samples['healthcode_scan_backlog_entries{state="undelivered"}'] == 1
    assert 120 <= samples["healthcode_scan_backlog_oldest_seconds"] < 180
    assert samples["healthcode_scan_dead_letters_total"] == 0

    [(entry_id, fields)] = await stream.read("stuck-host", count=1, block_ms=0)
    await stream.dead_letter(entry_id, fields, "refused", 3)
    samples = await metrics(api)
    assert samples['healthcode_scan_backlog_entries{state="pending"}'] == 0
    assert 60 <= samples["healthcode_scan_backlog_oldest_seconds"] < 120
    assert samples["healthcode_scan_dead_letters_total"] == 1


async def test_an_idle_stream_has_no_backlog(api: Api, redis: Redis) -> None:
    samples = await metrics(api)
    assert samples["healthcode_scan_backlog_up"] == 1
    assert samples["healthcode_scan_backlog_oldest_seconds"] == 0
    assert samples['healthcode_scans_recorded_total{to="stream"}'] == 0
    assert samples["healthcode_scans_refused_total"] == 0


async def test_redis_down_still_answers_and_says_the_backlog_is_unknown(make_client: AppFactory) -> None:
    api = await make_client(redis_url="redis://127.0.0.1:1/0")
    samples = await metrics(api)
    assert samples["healthcode_scan_backlog_up"] == 0
    assert "healthcode_scan_backlog_oldest_seconds" not in samples


async def test_the_writers_own_counts_are_rendered(api: Api, db: asyncpg.Connection, redis: Redis) -> None:
    writer = ScanWriter(ScanStream(redis), api.app[PG], "writer-1")
    await writer.stream.add({"garbage": 1})
    await writer.drain_once(block_ms=0)
    app = web.Application()
    app[SCANS] = api.app[SCANS]
    app[SCAN_WRITER] = writer
    kept = Metrics()
    sync(app, kept)
    lines = kept.render().decode().splitlines()
    assert "healthcode_scan_writer_dead_lettered_total 1.0" in lines
    assert "healthcode_scan_writer_written_total 0.0" in lines
