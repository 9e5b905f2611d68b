"""The version-guarded status writer (cache/status_writer.py) against real Redis."""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from cache.bulk import round_trip
from cache.cluster import cluster_round_trip
from cache.connection import AnyRedis, open_redis
from cache.entry import FORMAT_VERSION, StatusEntry, unpack
from cache.keys import TOMBSTONE, status_field, status_slot
from cache.status_writer import StatusWriter
from tests.redis_targets import key_count
from tests.support import cached_statuses


def subject(n: int) -> bytes:
    return hashlib.sha256(b"writer-%d" % n).digest()[:16]


def entry(**changes: Any) -> StatusEntry:
    now = int(time.time())
    base = StatusEntry(
        colour="green",
        reasons=(),
        popup=False,
        vaccine_doses=2,
        vaccine_complete=True,
        last_test_at=None,
        last_test_result=None,
        ruleset="cq-2022.03",
        computed_at=now - 10,
        valid_until=now + 600,
        version=5,
        id_type="resident",
        masked_name="张*",
        masked_number="5***************1X",
    )
    return replace(base, **changes)


async def stored(redis: AnyRedis, n: int) -> StatusEntry:
    raw = await redis.hget(*status_field(subject(n)))
    assert isinstance(raw, bytes)
    return unpack(raw)


@pytest.fixture
async def redis(cache_redis_url: str) -> AsyncIterator[AnyRedis]:
    """One server or the cluster: each test runs on both."""
    client = open_redis(cache_redis_url)
    await client.flushdb()
    yield client
    await client.flushdb()
    await client.aclose()


@pytest.fixture
async def writer(redis: AnyRedis) -> StatusWriter:
    await redis.script_flush()  # every test starts with the script unknown to the server
    return StatusWriter(redis)


async def test_stores_entries_with_their_expiry(redis: AnyRedis, writer: StatusWriter) -> None:
    now = int(time.time())
    entries = {subject(n): entry(valid_until=now + 600 + n) for n in range(2500)}

    assert await writer.put_many(entries) == 2500

    assert await cached_statuses(redis) == 2500
    assert await stored(redis, 7) == entries[subject(7)]
    # A bucket expires with the latest valid_until written into it.
    assert await redis.pexpiretime(status_field(subject(2499))[0].decode()) == (now + 600 + 2499) * 1000


async def test_an_older_version_never_replaces_a_newer_one(redis: AnyRedis, writer: StatusWriter) -> None:
    red = entry(colour="red", reasons=("case.confirmed",), version=6)
    await writer.put_many({subject(1): red})

    assert await writer.put_many({subject(1): entry(version=5)}) == 0
    assert await writer.put_many({subject(1): entry(version=6, computed_at=red.computed_at - 1)}) == 0

    assert await stored(redis, 1) == red
    assert writer.refused == 2


async def test_a_newer_version_or_a_later_computation_replaces(redis: AnyRedis, writer: StatusWriter) -> None:
    await writer.put_many({subject(1): entry(version=5)})
    later = entry(version=5, computed_at=int(time.time()))
    newer = entry(colour="yellow", reasons=("contact.secondary",), version=6)

    assert await writer.put_many({subject(1): later}) == 1
    assert await stored(redis, 1) == later
    assert await writer.put_many({subject(1): newer}) == 1
    assert await stored(redis, 1) == newer


async def test_an_expired_entry_deletes_an_older_one_only(redis: AnyRedis, writer: StatusWriter) -> None:
    expired = entry(version=6, valid_until=int(time.time()) - 5)
    await writer.put_many({subject(1): entry(version=5), subject(2): entry(version=7)})

    assert await writer.put_many({subject(1): expired, subject(2): expired}) == 0

    assert await redis.hget(*status_field(subject(1))) is None
    assert (await stored(redis, 2)).version == 7


async def test_tombstones_older_formats_and_junk_are_replaced(redis: AnyRedis, writer: StatusWriter) -> None:
    await redis.set(status_slot(subject(1)).tombstone, TOMBSTONE)
    await redis.hset(*status_field(subject(2)), bytes([FORMAT_VERSION - 1]) + b"\x00" * 60)
    await redis.hset(*status_field(subject(3)), b"junk")

    assert await writer.put_many({subject(n): entry() for n in (1, 2, 3)}) == 3

    assert [await stored(redis, n) for n in (1, 2, 3)] == [entry()] * 3
    assert await redis.exists(status_slot(subject(1)).tombstone) == 0


async def test_an_entry_of_a_newer_format_is_left_alone(redis: AnyRedis, writer: StatusWriter) -> None:
    newer = bytes([FORMAT_VERSION + 1]) + b"\x00" * 60
    await redis.hset(*status_field(subject(1)), newer)

    assert await writer.put_many({subject(1): entry(version=10**9)}) == 0
    assert await redis.hget(*status_field(subject(1))) == newer


async def test_a_tombstone_never_replaces_a_status(redis: AnyRedis, writer: StatusWriter) -> None:
    await writer.put_many({subject(1): entry()})
    await writer.put_tombstone(subject(1), 30_000)
    await writer.put_tombstone(subject(2), 30_000)

    assert await stored(redis, 1) == entry()
    assert await redis.exists(status_slot(subject(1)).tombstone) == 0
    assert await redis.get(status_slot(subject(2)).tombstone) == TOMBSTONE


async def test_the_script_is_loaded_again_after_a_flush(redis: AnyRedis, writer: StatusWriter) -> None:
    await writer.put_many({subject(1): entry(version=1)})
    await redis.script_flush()

    assert await writer.put_many({subject(1): entry(version=2)}) == 1
    assert (await stored(redis, 1)).version == 2


async def test_every_reply_is_read_before_raising(redis: AnyRedis, writer: StatusWriter) -> None:
    await redis.set(status_field(subject(2))[0], "a string where a bucket belongs")

    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await writer.put_many({subject(n): entry() for n in (1, 2, 3)})

    # The writes around the refused one were applied, and the pooled connection still answers in step.
    assert [await stored(redis, n) for n in (1, 3)] == [entry()] * 2
    ping = b"*1\r\n$4\r\nPING\r\n"
    if isinstance(redis, RedisCluster):
        assert await cluster_round_trip(redis, [(status_field(subject(2))[0], ping)], 1.0) == [b"PONG"]
    else:
        assert await round_trip(redis, ping, 1, 1.0) == [b"PONG"]
    assert await writer.put_many({subject(4): entry()}) == 1


async def test_nothing_to_write_sends_nothing(redis: AnyRedis, writer: StatusWriter) -> None:
    assert await writer.put_many({}) == 0
    assert await key_count(redis) == 0
