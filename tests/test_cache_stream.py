"""Scan-event stream, against a real Redis (db 14) and a Redis Cluster."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.crc import key_slot

from cache.connection import AnyRedis, open_redis
from cache.scan_stream import Backlog, ScanStream

DEAD_REDIS_URL = "redis://127.0.0.1:1/0"


@pytest.fixture
async def redis(cache_redis_url: str) -> AsyncIterator[AnyRedis]:
    """One server (db 14 of REDIS_URL) or the cluster: each test taking it runs on both."""
    client = open_redis(cache_redis_url)
    await client.flushdb()
    yield client
    await client.flushdb()
    await client.aclose()


@pytest.fixture
async def stream(redis: AnyRedis) -> ScanStream:
    scans = ScanStream(redis, maxlen=1000)
    await scans.ensure_group()
    return scans


class PipelineCountingRedis(Redis):
    pipelines = 0

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> Pipeline:
        self.pipelines += 1
        return super().pipeline(transaction, shard_hint)


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- scan stream ----------------------------------------------------------------------------------


async def test_add_read_ack(stream: ScanStream, redis: AnyRedis) -> None:
    ids = [
        await stream.add({"checkpoint": "gate-7", "sub": b"\x00\xff" * 8, "at": 1_700_000_000 + n, "st": "G"})
        for n in range(3)
    ]

    entries = await stream.read("writer-1", count=10, block_ms=0)

    assert [entry_id for entry_id, _ in entries] == ids
    assert entries[0][1] == {
        b"checkpoint": b"gate-7",
        b"sub": b"\x00\xff" * 8,
        b"at": b"1700000000",
        b"st": b"G",
    }
    assert await stream.ack(ids) == 3
    assert await stream.read("writer-1", count=10, block_ms=0) == []
    assert (await redis.xpending("hc:scans", "scan-writers"))["pending"] == 0


async def test_read_respects_count_and_hands_new_entries_to_one_consumer(stream: ScanStream) -> None:
    ids = [await stream.add({"n": n}) for n in range(5)]

    first = await stream.read("writer-1", count=2, block_ms=0)
    await stream.ack(entry_id for entry_id, _ in first)
    second = await stream.read("writer-2", count=10, block_ms=0)

    assert [entry_id for entry_id, _ in first] == ids[:2]
    assert [entry_id for entry_id, _ in second] == ids[2:]


async def test_unacked_entries_are_read_again_first(stream: ScanStream, redis: AnyRedis) -> None:
    ids = [await stream.add({"n": n}) for n in range(3)]
    delivered = await stream.read("writer-1", count=2, block_ms=0)
    assert [entry_id for entry_id, _ in delivered] == ids[:2]

    # The write to Postgres failed, nothing acked: the same entries come back before new ones.
    again = await stream.read("writer-1", count=10, block_ms=0)
    assert again == delivered

    await stream.ack([ids[0], ids[1]])
    assert [entry_id for entry_id, _ in await stream.read("writer-1", count=10, block_ms=0)] == [ids[2]]


async def test_restarted_consumer_reclaims_its_pending_entries(stream: ScanStream, redis: AnyRedis) -> None:
    ids = [await stream.add({"n": n}) for n in range(2)]
    await stream.read("writer-1", count=10, block_ms=0)  # then the process dies before acking

    restarted = ScanStream(redis, maxlen=1000)
    entries = await restarted.read("writer-1", count=10, block_ms=0)

    assert [entry_id for entry_id, _ in entries] == ids


async def test_pending_entries_trimmed_away_are_acked_and_skipped(stream: ScanStream, redis: AnyRedis) -> None:
    ids = [await stream.add({"n": n}) for n in range(4)]
    await stream.read("writer-1", count=10, block_ms=0)
    await redis.xtrim("hc:scans", maxlen=1, approximate=False)  # the drain was too slow

    entries = await stream.read("writer-1", count=2, block_ms=0)

    assert [entry_id for entry_id, _ in entries] == [ids[3]]
    pending = await redis.xpending("hc:scans", "scan-writers")
    assert pending["pending"] == 1


async def test_stream_is_bounded(redis: AnyRedis) -> None:
    scans = ScanStream(redis, maxlen=100)
    for n in range(2000):
        await scans.add({"n": n})
    # "MAXLEN ~" trims whole nodes (100 entries each by default), so allow one node of slack.
    assert 100 <= await redis.xlen("hc:scans") <= 200


async def test_read_blocks_briefly_then_returns_empty(stream: ScanStream) -> None:
    assert await stream.read("writer-1", count=10, block_ms=20) == []


async def test_ensure_group_is_idempotent(stream: ScanStream, redis: AnyRedis) -> None:
    await stream.ensure_group()
    groups = await redis.xinfo_groups("hc:scans")
    assert [group["name"] for group in groups] == [b"scan-writers"]


# -- a Redis that lost its data, dead consumers, dead letters, the backlog -------------------------------


async def test_read_recreates_the_group_a_redis_restart_lost(stream: ScanStream, redis: AnyRedis) -> None:
    await stream.add({"n": 0})
    await stream.read("writer-1", count=10, block_ms=0)  # pending, then Redis restarts without persistence
    await redis.delete("hc:scans")
    fresh = await stream.add({"n": 1})  # recorded after the restart: a new stream, no group

    entries = await stream.read("writer-1", count=10, block_ms=0)

    assert [entry_id for entry_id, _ in entries] == [fresh]
    assert stream.groups_created == 2
    assert await stream.ack([fresh]) == 1


async def test_ack_after_the_group_is_gone_acks_nothing(stream: ScanStream, redis: AnyRedis) -> None:
    entry_id = await stream.add({"n": 0})
    await stream.read("writer-1", count=10, block_ms=0)
    await redis.delete("hc:scans")
    assert await stream.ack([entry_id]) == 0


async def idle(redis: AnyRedis, consumer: str, ids: list[bytes], idle_ms: int) -> None:
    """Make entries pending for `consumer` with this idle time, as if it read them that long ago and died."""
    claimed: list[Any] = list(ids)
    await redis.xclaim("hc:scans", "scan-writers", consumer, 0, claimed, idle=idle_ms, force=True)


async def test_claim_idle_takes_over_what_a_dead_consumer_left(stream: ScanStream, redis: AnyRedis) -> None:
    ids = [await stream.add({"n": n}) for n in range(3)]
    await stream.read("dead-host", count=10, block_ms=0)
    await idle(redis, "dead-host", ids[:2], 120_000)  # the third was read moments ago: its reader may live

    claimed = await stream.claim_idle("writer-1", min_idle_ms=60_000, count=10)

    assert [entry_id for entry_id, _ in claimed] == ids[:2]
    assert claimed[0][1] == {b"n": b"0"}
    consumers = {c["name"]: c["pending"] for c in await redis.xinfo_consumers("hc:scans", "scan-writers")}
    assert consumers == {b"dead-host": 1, b"writer-1": 2}
    assert await stream.claim_idle("writer-1", min_idle_ms=60_000, count=10) == []


async def test_claim_idle_acks_entries_trimmed_away(stream: ScanStream, redis: AnyRedis) -> None:
    ids = [await stream.add({"n": n}) for n in range(3)]
    await stream.read("dead-host", count=10, block_ms=0)
    await idle(redis, "dead-host", ids, 120_000)
    await redis.xtrim("hc:scans", maxlen=1, approximate=False)

    claimed = await stream.claim_idle("writer-1", min_idle_ms=60_000, count=10)

    assert [entry_id for entry_id, _ in claimed] == [ids[2]]
    assert (await redis.xpending("hc:scans", "scan-writers"))["pending"] == 1


async def test_claim_idle_recreates_a_lost_group(stream: ScanStream, redis: AnyRedis) -> None:
    await redis.delete("hc:scans")
    assert await stream.claim_idle("writer-1", min_idle_ms=0, count=10) == []
    assert [g["name"] for g in await redis.xinfo_groups("hc:scans")] == [b"scan-writers"]


async def test_dead_letter_moves_an_entry_aside_once_and_counts_it(stream: ScanStream, redis: AnyRedis) -> None:
    bad = await stream.add({"cp": b"gate\x007"})
    good = await stream.add({"cp": b"gate-8"})
    [(entry_id, fields), _] = await stream.read("writer-1", count=10, block_ms=0)

    assert await stream.dead_letter(entry_id, fields, "CharacterNotInRepertoireError: 0x00", 3) is True
    assert await stream.dead_letter(entry_id, fields, "again", 4) is False  # already moved: not counted twice

    [(_, kept)] = await stream.dead_letters()
    assert kept == {
        b"cp": b"gate\x007",
        b"_id": bad,
        b"_error": b"CharacterNotInRepertoireError: 0x00",
        b"_attempts": b"3",
    }
    assert await redis.get("{hc:scans}:dead:count") == b"1"
    pending = await redis.xpending_range("hc:scans", "scan-writers", "-", "+", 10)
    assert [p["message_id"] for p in pending] == [good]


def test_dead_letter_keys_hash_to_the_stream_slot() -> None:
    stream = ScanStream(Redis(), maxlen=10)
    slots = {key_slot(key.encode()) for key in (stream.stream, stream.dead_stream, stream.dead_count_key)}
    assert len(slots) == 1
    with pytest.raises(ValueError, match="braces"):
        ScanStream(Redis(), stream="hc:{scans}")


async def test_backlog_counts_pending_and_unread_and_dates_the_oldest(stream: ScanStream, redis: AnyRedis) -> None:
    now_ms = 1_700_000_000_000
    for n, age_ms in enumerate((300_000, 200_000, 100_000)):
        await redis.xadd("hc:scans", {"n": n}, id=f"{now_ms - age_ms}-0")
    assert await stream.backlog() == Backlog(0, 3, now_ms - 300_000, 0, group_exists=True)

    [(first, fields)] = await stream.read("writer-1", count=1, block_ms=0)  # read, never written
    backlog = await stream.backlog()
    assert backlog == Backlog(1, 2, now_ms - 300_000, 0, group_exists=True)
    assert backlog.oldest_age_seconds(now_ms) == 300.0

    await stream.dead_letter(first, fields, "refused", 3)
    assert await stream.backlog() == Backlog(0, 2, now_ms - 200_000, 1, group_exists=True)
    await stream.ack(entry_id for entry_id, _ in await stream.read("writer-1", count=10, block_ms=0))
    assert await stream.backlog() == Backlog(0, 0, None, 1, group_exists=True)
    assert Backlog(0, 0, None, 1, group_exists=True).oldest_age_seconds(now_ms) == 0.0


async def test_backlog_without_a_group_is_the_whole_stream(redis: AnyRedis) -> None:
    stream = ScanStream(redis, maxlen=1000)
    assert await stream.backlog() == Backlog(0, 0, None, 0, group_exists=False)
    await redis.xadd("hc:scans", {"n": 0}, id="1700000000000-0")  # after a restart, before a writer reads
    await redis.xadd("hc:scans", {"n": 1}, id="1700000001000-0")
    assert await stream.backlog() == Backlog(0, 2, 1_700_000_000_000, 0, group_exists=False)
