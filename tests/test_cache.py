"""Status entries and the read-through status cache, against a real Redis (db 14)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from cache.connection import AnyRedis, open_redis
from cache.entry import (
    FORMAT_VERSION,
    EntryFormatError,
    StatusEntry,
    UnknownVersionError,
    pack,
    unpack,
)
from cache.entry_v2 import pack_v2
from cache.keys import TOMBSTONE, BucketLayout, legacy_status_key, status_field, status_slot
from cache.status_cache import StatusCache
from cache.status_writer import StatusWriter
from tests.redis_targets import SINGLE_URL, Counting, CountingRedis, counting_client, key_count
from tests.support import cached_statuses

REDIS_URL = SINGLE_URL
DEAD_REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1


class Loader:
    """Stands in for the app's Postgres read; counts calls, can be held until released."""

    def __init__(self, known: dict[bytes, StatusEntry] | None = None) -> None:
        self.known = dict(known or {})
        self.calls: list[bytes] = []
        self.gate: asyncio.Event | None = None
        self.error: Exception | None = None

    async def __call__(self, pseudonym: bytes) -> StatusEntry | None:
        self.calls.append(pseudonym)
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        return self.known.get(pseudonym)


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pseudonym(n: int) -> bytes:
    return hashlib.sha256(n.to_bytes(8, "big")).digest()[:16]


# One moment for every entry of a run, so that two entries made apart compare equal.
NOW = int(time.time())


def make_entry(**changes: Any) -> StatusEntry:
    now = NOW
    entry = StatusEntry(
        colour="yellow",
        reasons=("contact.secondary", "arrival.risk_area.medium"),
        popup=True,
        vaccine_doses=3,
        vaccine_complete=True,
        last_test_at=now - 7200,
        last_test_result="negative",
        ruleset="cq-2022.03",
        computed_at=now - 60,
        valid_until=now + 3600,
        version=1,
        id_type="resident",
        masked_name="欧阳*",
        masked_number="5***************2X",
    )
    return replace(entry, **changes)


async def until(condition: Callable[[], bool]) -> None:
    """Yield to the loop until `condition` holds (bounded), instead of sleeping a guessed time."""
    deadline = time.monotonic() + 5
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0)


@pytest.fixture
async def redis(cache_redis_url: str) -> AsyncIterator[Counting]:
    """A client of one server or of the cluster: each test taking it runs on both."""
    client = counting_client(cache_redis_url)
    await client.flushdb()
    client.reset_counts()
    yield client
    await client.flushdb()
    await client.aclose()


@pytest.fixture
async def dead_redis() -> AsyncIterator[CountingRedis]:
    client = open_redis(DEAD_REDIS_URL, client_class=CountingRedis)
    yield client
    await client.aclose()


@pytest.fixture
def loader() -> Loader:
    return Loader()


@pytest.fixture
def writer(redis: Counting) -> StatusWriter:
    return StatusWriter(redis)


@pytest.fixture
async def cache(redis: Counting, loader: Loader) -> AsyncIterator[StatusCache]:
    status_cache = StatusCache(redis, loader)
    yield status_cache
    await status_cache.drain()


async def server_ms(redis: AnyRedis) -> int:
    seconds, micros = await redis.time()
    return seconds * 1000 + micros // 1000


# -- packing --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "entry",
    [
        make_entry(),
        make_entry(
            colour="green",
            reasons=(),
            popup=False,
            vaccine_doses=0,
            vaccine_complete=False,
            last_test_at=None,
            last_test_result=None,
            masked_name="",
            masked_number="",
        ),
        make_entry(colour="red", reasons=("case.confirmed",), last_test_result="positive", masked_name="Ñúñez*"),
        make_entry(masked_name="😷*", id_type="passport", masked_number="E*******9", last_test_at=0),
    ],
    ids=["yellow-unicode", "green-none-fields", "red-positive", "emoji-passport"],
)
def test_pack_round_trip(entry: StatusEntry) -> None:
    data = pack(entry)
    assert data[0] == FORMAT_VERSION
    assert data != TOMBSTONE
    assert unpack(data) == entry


def test_pack_is_compact() -> None:
    # A typical person: 19 bytes of numbers, one byte per known word (rule set, document type, reason)
    # and a count, the masked name (张 + one asterisk) and number (two characters, 14 asterisks, two).
    entry = make_entry(ruleset="default-2022.1", reasons=("risk_area_arrival",), masked_name="张*")
    entry = replace(entry, masked_number="50**************1X")
    assert len(pack(entry)) == 19 + 4 + (1 + 3 + 1 + 1) + (1 + 2 + 1 + 1 + 2) == 36
    assert len(pack_v2(entry)) == 48 + len("risk_area_arrivaldefault-2022.1resident张*50**************1X".encode())
    # A word the table does not know is spelt out: 0, its length, its bytes.
    assert len(pack(replace(entry, ruleset="cq-2022.03"))) == 36 - 1 + 2 + len("cq-2022.03")


def test_format_2_entries_are_still_read() -> None:
    # Written by the previous release; read during a rolling upgrade.
    assert unpack(pack_v2(make_entry())) == make_entry()


def test_unpack_unknown_version_is_a_clear_error() -> None:
    data = bytes([FORMAT_VERSION + 1]) + pack(make_entry())[1:]
    with pytest.raises(UnknownVersionError, match=r"format version 4 is not supported \(this code reads 2 and 3\)"):
        unpack(data)


@pytest.mark.parametrize("data", [b"", pack(make_entry())[:-1], pack(make_entry()) + b"x", b"\x01" + b"\x00" * 39])
def test_unpack_rejects_corrupt_bytes(data: bytes) -> None:
    with pytest.raises(EntryFormatError):
        unpack(data)


def test_damaged_entries_raise_only_entry_format_errors() -> None:
    # Whatever Redis hands back, the reader gets a value or EntryFormatError (read as a miss), never
    # an IndexError or a UnicodeDecodeError from inside the decoder.
    rng = random.Random(3)
    data = pack(make_entry(reasons=("risk_area_arrival", "spelt.out"), id_type="passport"))
    for _ in range(5000):
        damaged = bytearray(data)
        at = rng.randrange(1, len(data))
        cut, flip = rng.random() < 0.3, rng.randrange(256)
        if cut:
            del damaged[at:]
        else:
            damaged[at] = flip
        with contextlib.suppress(EntryFormatError):
            unpack(bytes(damaged))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"colour": "blue"}, "colour"),
        ({"last_test_result": "maybe"}, "last_test_result"),
        ({"reasons": ("x" * 256,)}, "over 255 bytes"),
        ({"masked_name": "é" * 128}, "over 255 bytes"),
        ({"version": 2**32}, "out of range"),
        ({"valid_until": -1}, "out of range"),
        ({"reasons": ("",)}, "empty"),
        ({"vaccine_doses": -1}, "out of range"),
    ],
)
def test_pack_rejects_what_it_cannot_carry(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        pack(make_entry(**changes))


# -- reads ----------------------------------------------------------------------------------------


async def test_hit_is_one_mget_and_does_not_call_loader(cache: StatusCache, redis: Counting, loader: Loader) -> None:
    entry = make_entry()
    await redis.hset(*status_field(pseudonym(1)), pack(entry))
    redis.reset_counts()

    assert await cache.get(pseudonym(1)) == entry

    assert loader.calls == []
    assert (cache.reads, redis.commands) == (1, [])
    assert (cache.hits, cache.misses, cache.loads) == (1, 0, 0)


async def test_miss_loads_once_and_fills_redis_until_valid_until(
    cache: StatusCache, redis: Counting, loader: Loader
) -> None:
    entry = make_entry()
    loader.known[pseudonym(2)] = entry

    assert await cache.get(pseudonym(2)) == entry
    await cache.drain()

    bucket, field = status_field(pseudonym(2))
    assert await redis.hget(bucket, field) == pack(entry)
    # The bucket lives as long as its latest entry; this one is its only entry.
    expected_pttl = entry.valid_until * 1000 - await server_ms(redis)
    assert expected_pttl - 50 <= await redis.pttl(bucket) <= expected_pttl
    assert await cache.get(pseudonym(2)) == entry
    assert loader.calls == [pseudonym(2)]
    assert (cache.hits, cache.misses, cache.loads) == (1, 1, 1)


async def test_entry_already_past_valid_until_is_not_cached(
    cache: StatusCache, redis: Counting, loader: Loader
) -> None:
    stale = make_entry(valid_until=int(time.time()) - 1)
    loader.known[pseudonym(3)] = stale

    assert await cache.get(pseudonym(3)) == stale
    await cache.drain()

    assert await redis.hget(*status_field(pseudonym(3))) is None


async def test_an_entry_past_valid_until_in_redis_is_a_miss(
    cache: StatusCache, redis: Counting, loader: Loader, writer: StatusWriter
) -> None:
    # Fields have no TTL of their own: the reader checks valid_until, and the fill replaces the entry.
    await writer.put_many({pseudonym(3): make_entry(valid_until=int(time.time()) + 60)})
    later = StatusCache(redis, loader, clock=lambda: time.time() + 61)
    fresh = make_entry(version=2, valid_until=int(time.time()) + 3600)
    loader.known[pseudonym(3)] = fresh

    assert await later.get(pseudonym(3)) == fresh
    await later.drain()

    assert (later.hits, later.misses) == (0, 1)
    assert await redis.hget(*status_field(pseudonym(3))) == pack(fresh)


async def test_concurrent_misses_of_one_subject_call_loader_once(cache: StatusCache, loader: Loader) -> None:
    entry = make_entry()
    loader.known[pseudonym(4)] = entry
    loader.gate = asyncio.Event()

    first_wave = [asyncio.create_task(cache.get(pseudonym(4))) for _ in range(100)]
    await until(lambda: cache.misses == 100)
    # A second wave arrives while the load is still running: it misses in Redis and joins the load.
    second_wave = [asyncio.create_task(cache.get(pseudonym(4))) for _ in range(100)]
    await until(lambda: cache.misses == 200)
    loader.gate.set()

    results = await asyncio.gather(*first_wave, *second_wave)
    assert results == [entry] * 200
    assert loader.calls == [pseudonym(4)]
    assert cache.loads == 1


async def test_unknown_subject_is_negatively_cached(cache: StatusCache, redis: Counting, loader: Loader) -> None:
    assert await cache.get(pseudonym(5)) is None
    await cache.drain()

    key = status_slot(pseudonym(5)).tombstone
    assert await redis.get(key) == TOMBSTONE
    assert 29_000 <= await redis.pttl(key) <= 30_000

    redis.reset_counts()
    assert await cache.get(pseudonym(5)) is None
    assert (cache.reads, redis.commands) == (2, [])  # the negative hit is one more read of the same key
    assert loader.calls == [pseudonym(5)]
    assert (cache.negative_hits, cache.misses, cache.loads) == (1, 1, 1)


async def test_negative_ttl_is_configurable(redis: Counting, loader: Loader) -> None:
    cache = StatusCache(redis, loader, negative_ttl_seconds=2.5)
    assert await cache.get(pseudonym(6)) is None
    await cache.drain()
    assert 2_400 <= await redis.pttl(status_slot(pseudonym(6)).tombstone) <= 2_500


async def test_concurrent_gets_share_one_round_trip(
    cache: StatusCache, redis: Counting, loader: Loader, writer: StatusWriter
) -> None:
    entries = {pseudonym(n): make_entry(vaccine_doses=n % 4) for n in range(50)}
    await writer.put_many(entries)
    redis.reset_counts()

    results = await asyncio.gather(*(cache.get(p) for p in entries), cache.get(pseudonym(1)))

    assert results == [*entries.values(), entries[pseudonym(1)]]
    assert (cache.reads, redis.commands) == (1, [])
    assert redis.pipelines == 0
    assert loader.calls == []
    assert cache.hits == 51


async def test_sequential_turns_each_get_their_own_round_trip(
    cache: StatusCache, redis: Counting, loader: Loader, writer: StatusWriter
) -> None:
    await writer.put_many({pseudonym(1): make_entry()})
    redis.reset_counts()
    await cache.get(pseudonym(1))
    await cache.get(pseudonym(1))
    assert (cache.reads, redis.commands) == (2, [])


async def test_loader_error_reaches_every_waiter_and_is_not_cached(cache: StatusCache, loader: Loader) -> None:
    loader.error = RuntimeError("postgres unavailable")
    results = await asyncio.gather(*(cache.get(pseudonym(7)) for _ in range(5)), return_exceptions=True)
    assert [str(r) for r in results] == ["postgres unavailable"] * 5
    assert len(loader.calls) == 1

    loader.error = None
    loader.known[pseudonym(7)] = make_entry()
    assert await cache.get(pseudonym(7)) == make_entry()
    assert len(loader.calls) == 2


async def test_cancelled_waiter_does_not_cancel_the_others(cache: StatusCache, loader: Loader) -> None:
    loader.known[pseudonym(8)] = make_entry()
    loader.gate = asyncio.Event()
    quitter = asyncio.create_task(cache.get(pseudonym(8)))
    stayer = asyncio.create_task(cache.get(pseudonym(8)))
    await until(lambda: len(loader.calls) == 1)

    quitter.cancel()
    loader.gate.set()

    assert await stayer == make_entry()
    with pytest.raises(asyncio.CancelledError):
        await quitter


async def test_unreadable_bytes_are_reloaded_and_replaced(cache: StatusCache, redis: Counting, loader: Loader) -> None:
    key = status_field(pseudonym(9))
    await redis.hset(*key, b"\x01garbage")
    loader.known[pseudonym(9)] = make_entry()

    assert await cache.get(pseudonym(9)) == make_entry()
    await cache.drain()
    assert await redis.hget(*key) == pack(make_entry())


async def test_newer_format_is_read_as_miss_but_left_in_place(
    cache: StatusCache, redis: Counting, loader: Loader
) -> None:
    key = status_field(pseudonym(10))
    newer = bytes([FORMAT_VERSION + 1]) + b"written by the next release"
    await redis.hset(*key, newer)
    loader.known[pseudonym(10)] = make_entry()

    assert await cache.get(pseudonym(10)) == make_entry()
    await cache.drain()
    assert await redis.hget(*key) == newer
    assert cache.misses == 1


async def test_put_many_during_a_load_wins_over_the_load(
    cache: StatusCache, redis: Counting, loader: Loader, writer: StatusWriter
) -> None:
    old = make_entry(colour="green", reasons=())
    new = make_entry(colour="red", reasons=("case.confirmed",), version=2)
    loader.known[pseudonym(11)] = old
    loader.gate = asyncio.Event()
    reader = asyncio.create_task(cache.get(pseudonym(11)))
    await until(lambda: len(loader.calls) == 1)

    await writer.put_many({pseudonym(11): new})  # a batch recomputed the status meanwhile
    loader.gate.set()
    assert await reader == old  # that reader asked first
    await cache.drain()

    assert await cache.get(pseudonym(11)) == new


async def test_fill_does_not_overwrite_a_concurrent_writer(cache: StatusCache, redis: Counting, loader: Loader) -> None:
    # Another process stored a newer entry between our miss and our fill: the guarded fill keeps it.
    loader.known[pseudonym(12)] = make_entry(colour="green", reasons=())
    loader.gate = asyncio.Event()
    reader = asyncio.create_task(cache.get(pseudonym(12)))
    await until(lambda: len(loader.calls) == 1)
    fresh = pack(make_entry(colour="red", reasons=("case.confirmed",), version=2))
    await redis.hset(*status_field(pseudonym(12)), fresh)
    loader.gate.set()
    await reader
    await cache.drain()

    assert await redis.hget(*status_field(pseudonym(12))) == fresh


# -- Redis unavailable ----------------------------------------------------------------------------


async def test_dead_redis_answers_from_loader_and_opens_breaker(dead_redis: CountingRedis, loader: Loader) -> None:
    monotonic = FakeMonotonic()
    cache = StatusCache(dead_redis, loader, breaker_seconds=5.0, monotonic=monotonic)
    entry = make_entry()
    loader.known[pseudonym(13)] = entry

    assert await cache.get(pseudonym(13)) == entry
    assert (cache.reads, dead_redis.commands) == (1, [])
    assert cache.redis_available is False
    assert cache.redis_errors == 1

    monotonic.now += 4.9
    assert await cache.get(pseudonym(13)) == entry
    assert (cache.reads, dead_redis.commands) == (1, [])  # breaker open: Redis not tried, no fill attempted
    assert len(loader.calls) == 2

    monotonic.now += 0.2  # window over: the next request tries Redis once more
    assert cache.redis_available is True
    assert await cache.get(pseudonym(13)) == entry
    await cache.drain()
    assert (cache.reads, dead_redis.commands) == (2, [])
    assert cache.redis_errors == 2
    assert cache.redis_available is False


async def test_dead_redis_keeps_single_flight(dead_redis: CountingRedis, loader: Loader) -> None:
    cache = StatusCache(dead_redis, loader)
    loader.known[pseudonym(14)] = make_entry()

    results = await asyncio.gather(*(cache.get(pseudonym(14)) for _ in range(50)))

    assert results == [make_entry()] * 50
    assert len(loader.calls) == 1
    assert (cache.reads, dead_redis.commands) == (1, [])
    assert cache.redis_errors == 1


async def test_redis_failing_during_fill_opens_breaker(loader: Loader) -> None:
    client = open_redis(REDIS_URL, client_class=CountingRedis)
    cache = StatusCache(client, loader)
    loader.known[pseudonym(15)] = make_entry()
    loader.gate = asyncio.Event()
    try:
        reader = asyncio.create_task(cache.get(pseudonym(15)))
        await until(lambda: len(loader.calls) == 1)
        # Redis goes away while Postgres is being read: drop the pool's connections, aim new ones at
        # a closed port.
        await client.connection_pool.disconnect()
        client.connection_pool.connection_kwargs["port"] = 1
        client.connection_pool.reset()  # type: ignore[no-untyped-call]
        loader.gate.set()

        assert await reader == make_entry()
        await cache.drain()
        assert (cache.reads, client.commands) == (1, [])  # the fill is a hand-packed guarded write
        assert cache.redis_errors == 1
        assert cache.redis_available is False
    finally:
        await client.aclose()


async def test_put_many_raises_when_redis_is_down(dead_redis: CountingRedis) -> None:
    with pytest.raises(RedisConnectionError):
        await StatusWriter(dead_redis).put_many({pseudonym(16): make_entry()})


# -- bulk writes ----------------------------------------------------------------------------------


async def test_put_many_stores_every_entry_with_ttl_in_bulk(
    cache: StatusCache, redis: Counting, writer: StatusWriter
) -> None:
    now = int(time.time())
    entries = {pseudonym(n): make_entry(valid_until=now + 600 + n) for n in range(2500)}
    tombstone = status_slot(pseudonym(0)).tombstone
    await redis.set(tombstone, TOMBSTONE, px=30_000)  # a real entry replaces a tombstone
    redis.reset_counts()

    assert await writer.put_many(entries) == 2500

    assert redis.pipelines == 0  # plain Redis: hand-packed bulk writes (cache/bulk.py), no redis-py pipeline
    assert await cached_statuses(redis) == 2500
    assert await redis.exists(tombstone) == 0
    stored = await redis.hget(*status_field(pseudonym(0)))
    assert isinstance(stored, bytes)
    assert unpack(stored) == entries[pseudonym(0)]
    # A bucket expires with the latest valid_until written into it; 2499's is the latest of all.
    expected = entries[pseudonym(2499)].valid_until * 1000 - await server_ms(redis)
    assert expected - 50 <= await redis.pttl(status_field(pseudonym(2499))[0]) <= expected


async def test_put_many_deletes_entries_already_expired(
    cache: StatusCache, redis: Counting, writer: StatusWriter
) -> None:
    await writer.put_many({pseudonym(1): make_entry()})
    expired = make_entry(valid_until=int(time.time()) - 5)

    assert await writer.put_many({pseudonym(1): expired, pseudonym(2): make_entry()}) == 1

    assert await redis.hget(*status_field(pseudonym(1))) is None
    assert await redis.hget(*status_field(pseudonym(2))) is not None


def test_status_key_layout() -> None:
    p = bytes.fromhex("00112233445566778899aabbccddeeff")
    where = status_slot(p)
    assert (where.bucket, where.field) == (b"hc:{s0011}", p[2:])
    assert where.tombstone == b"hc:{s0011}:nx:" + p[2:]  # the bucket's hash tag: one cluster slot
    # 19 bits: 0x00112233 >> 13 = 0x89, in five hex digits; the field keeps the bytes the bits share.
    assert (status_slot(p, 19).bucket, status_slot(p, 19).field) == (b"hc:{s00089}", p[2:])
    assert legacy_status_key(p) == b"hc:{00112233445566778899aabbccddeeff}:st"
    with pytest.raises(ValueError, match="16 bytes"):
        status_slot(b"short")
    with pytest.raises(ValueError, match="between 1 and 24"):
        BucketLayout(25)


async def test_subjects_share_few_buckets(redis: Counting, loader: Loader) -> None:
    writer = StatusWriter(redis, layout=BucketLayout(4))
    entries = {pseudonym(n): make_entry(vaccine_doses=n % 4) for n in range(300)}
    assert await writer.put_many(entries) == 300

    assert await key_count(redis) == 16
    cache = StatusCache(redis, loader, writer=writer)
    assert await asyncio.gather(*(cache.get(p) for p in entries)) == list(entries.values())
    assert loader.calls == []


async def test_a_status_written_after_a_tombstone_removes_it(
    cache: StatusCache, redis: Counting, loader: Loader, writer: StatusWriter
) -> None:
    assert await cache.get(pseudonym(20)) is None
    await cache.drain()
    assert await writer.put_many({pseudonym(20): make_entry()}) == 1

    assert await redis.exists(status_slot(pseudonym(20)).tombstone) == 0
    assert await cache.get(pseudonym(20)) == make_entry()


async def test_rolling_upgrade_reads_and_writes_format_2_keys_too(redis: Counting, loader: Loader) -> None:
    # While processes of the previous release run, they read and write one string key per subject in
    # format 2. The new release writes both places and reads both, and the newer entry wins.
    writer = StatusWriter(redis, legacy_keys=True)
    cache = StatusCache(redis, loader, writer=writer)
    assert await writer.put_many({pseudonym(21): make_entry(version=3)}) == 1
    assert await redis.get(legacy_status_key(pseudonym(21))) == pack_v2(make_entry(version=3))

    # An old process publishes a newer status only to its key: the new release still sees it.
    newer = make_entry(colour="red", reasons=("confirmed",), version=4)
    await redis.set(legacy_status_key(pseudonym(21)), pack_v2(newer))
    assert await cache.get(pseudonym(21)) == newer
    # And an older one there loses to the bucket's.
    await redis.set(legacy_status_key(pseudonym(21)), pack_v2(make_entry(version=2)))
    assert await cache.get(pseudonym(21)) == make_entry(version=3)

    # The new release never puts an older status back into the old release's key either.
    await redis.set(legacy_status_key(pseudonym(21)), pack_v2(newer))
    assert await writer.put_many({pseudonym(21): make_entry(version=3)}) == 1  # the bucket holds the same
    assert await redis.get(legacy_status_key(pseudonym(21))) == pack_v2(newer)
    assert loader.calls == []


async def test_refuses_a_decoding_client() -> None:
    client = Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        with pytest.raises(ValueError, match="decode_responses"):
            StatusCache(client, Loader())
    finally:
        await client.aclose()
