"""Read-through status cache: one Redis round trip per event-loop turn, one loader call per missing subject.

The hot path (a hit or a negative hit) is one GET of one key, and concurrent look-ups issued in the same
loop turn share one round trip. A miss goes to the loader (Postgres, owned by the app) once per subject
however many callers are waiting for it, and the answer is written back with a TTL that ends at
`valid_until`; an unknown subject is written back as a short-lived tombstone. If Redis fails, answers
come from the loader and a circuit breaker keeps Redis out of the path for a while (no retry storm).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from enum import Enum
from typing import Any, cast

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from cache.breaker import Breaker
from cache.bulk import Command, read_many, write_many
from cache.connection import REDIS_ERRORS
from cache.entry import EntryFormatError, StatusEntry, UnknownVersionError, pack, unpack
from cache.keys import TOMBSTONE, status_key

log = logging.getLogger(__name__)

Loader = Callable[[bytes], Awaitable[StatusEntry | None]]

WRITE_CHUNK = 1000
BULK_CHUNK = 10_000


class _Fill(Enum):
    IF_ABSENT = 1  # an ordinary miss: SET NX, so a concurrent put_many with fresher data wins
    OVERWRITE = 2  # the key holds bytes we cannot read and that no newer writer produced
    SKIP = 3  # the key holds an entry from a newer format version; leave it to the newer code


class _Flight:
    """One in-progress load of one subject, shared by every caller that missed it."""

    __slots__ = ("future", "stale")

    def __init__(self, future: asyncio.Future[StatusEntry | None]) -> None:
        self.future = future
        # Set when put_many/forget_many touched the subject during the load: our answer may predate
        # theirs, so it must not be written to Redis.
        self.stale = False


class StatusCache:
    """Read-through cache of computed statuses keyed by pseudonym.

    Counters: `hits` and `negative_hits` answered from Redis; `misses` went to the loader path
    (including requests that bypassed Redis while the breaker was open); `loads` is how many loader
    calls actually ran (misses minus the ones that joined a load in flight); `redis_errors` counts
    failed round trips. Call `drain()` before closing the Redis client.
    """

    def __init__(
        self,
        redis: Redis | RedisCluster,
        loader: Loader,
        *,
        negative_ttl_seconds: float = 30,
        breaker_seconds: float = 5.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if isinstance(redis, Redis) and redis.connection_pool.connection_kwargs.get("decode_responses"):
            raise ValueError("StatusCache needs a Redis client with decode_responses=False (entries are bytes)")
        if negative_ttl_seconds <= 0:
            raise ValueError("negative_ttl_seconds must be positive")
        self._redis = redis
        self._loader = loader
        self._negative_ttl_ms = round(negative_ttl_seconds * 1000)
        self._clock = clock  # wall clock, epoch seconds: compared with valid_until
        self._breaker = Breaker(breaker_seconds, clock=monotonic)  # monotonic: a clock step cannot stick it open
        # A plain Redis answers one MGET far faster than a pipeline of GETs; a cluster cannot MGET keys of
        # different slots, and its pipeline groups the GETs by node (see _fetch).
        self._use_mget = not isinstance(redis, RedisCluster)
        # The read path's own deadline: the client's socket timeout, so a stalled Redis fails as fast.
        kwargs = redis.connection_pool.connection_kwargs if isinstance(redis, Redis) else {}
        self._read_timeout = float(kwargs.get("socket_timeout") or 0.5)

        self._batch: dict[bytes, list[asyncio.Future[bytes | None]]] = {}
        self._pumping = False  # a _pump task is sending batches
        self._flights: dict[bytes, _Flight] = {}
        self._tasks: set[asyncio.Task[None]] = set()

        # Counters for metrics; plain ints, read them whenever.
        self.hits = 0
        self.misses = 0
        self.negative_hits = 0
        self.loads = 0
        self.redis_errors = 0
        self.reads = 0  # round trips of the read path (one MGET each on plain Redis)

    @property
    def redis_available(self) -> bool:
        """False while the circuit breaker keeps Redis out of the path after a failure."""
        return self._breaker.closed

    async def get(self, pseudonym: bytes) -> StatusEntry | None:
        """The subject's current status, or None if no agency knows the subject."""
        key = status_key(pseudonym)
        fill = _Fill.IF_ABSENT
        if self._breaker.closed:
            raw = await self._read(key)
            if raw is not None:
                if raw == TOMBSTONE:
                    self.negative_hits += 1
                    return None
                try:
                    entry = unpack(raw)
                except UnknownVersionError:
                    fill = _Fill.SKIP
                except EntryFormatError:
                    log.warning("unreadable status entry in Redis, reloading", extra={"key": key.decode()})
                    fill = _Fill.OVERWRITE
                else:
                    self.hits += 1
                    return entry
        self.misses += 1
        return await self._load(pseudonym, key, fill)

    async def put_many(self, entries: Mapping[bytes, StatusEntry]) -> int:
        """Write fresh entries (after a batch, or to warm the cache); returns how many were stored.

        Entries whose `valid_until` has passed are deleted rather than stored, so an older entry cannot
        outlive them. Redis errors are raised: a refresh that did not happen must not go unnoticed.
        """
        now_ms = int(self._clock() * 1000)
        stored = 0
        items = list(entries.items())
        if isinstance(self._redis, Redis):
            # Plain Redis: hand-packed commands, replies read in bulk (cache/bulk.py: ~2.5 us an entry
            # against ~45 us through a redis-py pipeline).
            commands: list[Command] = []
            for pseudonym, entry in items:
                self._mark_stale(pseudonym)
                expire_ms = entry.valid_until * 1000
                if expire_ms > now_ms:
                    commands.append((status_key(pseudonym), pack(entry), expire_ms))
                    stored += 1
                else:
                    commands.append((status_key(pseudonym), None, 0))
            for start in range(0, len(commands), BULK_CHUNK):
                try:
                    await write_many(self._redis, commands[start : start + BULK_CHUNK])
                except REDIS_ERRORS as exc:
                    self._redis_failed(exc)
                    raise
            return stored
        for start in range(0, len(items), WRITE_CHUNK):
            chunk = items[start : start + WRITE_CHUNK]
            async with self._redis.pipeline(transaction=False) as pipe:
                for pseudonym, entry in chunk:
                    self._mark_stale(pseudonym)
                    expire_ms = entry.valid_until * 1000
                    if expire_ms > now_ms:
                        pipe.set(status_key(pseudonym), pack(entry), pxat=expire_ms)
                        stored += 1
                    else:
                        pipe.delete(status_key(pseudonym))
                await self._guard(pipe.execute())
        return stored

    async def forget_many(self, pseudonyms: Iterable[bytes]) -> int:
        """Delete cached entries and tombstones; returns how many keys existed. Redis errors are raised."""
        keys = []
        for pseudonym in pseudonyms:
            self._mark_stale(pseudonym)
            keys.append(status_key(pseudonym))
        deleted = 0
        for start in range(0, len(keys), WRITE_CHUNK):
            # One DEL per key: a multi-key DEL would cross cluster slots.
            async with self._redis.pipeline(transaction=False) as pipe:
                for key in keys[start : start + WRITE_CHUNK]:
                    pipe.delete(key)
                deleted += sum(await self._guard(pipe.execute()))
        return deleted

    async def drain(self) -> None:
        """Wait for background round trips and cache fills; call before closing the Redis client."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- coalesced reads --------------------------------------------------------------------------

    def _read(self, key: bytes) -> asyncio.Future[bytes | None]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bytes | None] = loop.create_future()
        if not self._pumping:
            # The task's first step is scheduled with loop.call_soon, so it runs after every callback
            # already due in this loop turn: all their keys join this batch, one round trip in all.
            self._pumping = True
            self._spawn(self._pump())
        # One future per caller, not per key: a cancelled caller must not cancel the others.
        self._batch.setdefault(key, []).append(future)
        return future

    async def _pump(self) -> None:
        """Send the waiting keys, one round trip at a time, until none is left.

        Keys asked for while a round trip is in flight wait for it and then go together in the next:
        a busy process sends fewer, larger MGETs, and redis-py's cost per command (over 100 us of CPU
        here) is shared by more requests. Measured with `make bench`: see the commit that added this.
        """
        try:
            while self._batch:
                batch, self._batch = self._batch, {}
                await self._fetch(batch)
        except BaseException:
            batch, self._batch = self._batch, {}
            _cancel(batch)  # cancelled (shutdown): nobody may wait forever
            raise
        finally:
            self._pumping = False

    async def _fetch(self, batch: dict[bytes, list[asyncio.Future[bytes | None]]]) -> None:
        keys = list(batch)
        values: list[bytes | None]
        try:
            self.reads += 1
            if self._use_mget:
                # Measured on this machine (redis-py 8.1 + hiredis, local Redis 7.0), per batch:
                # 10 keys MGET 160 us vs pipeline of GETs 340 us; 100 keys 270 us vs 1580 us.
                # A hand-packed MGET (cache/bulk.py) cuts the CPU of one from ~145 us to ~21 us.
                values = await read_many(cast(Redis, self._redis), keys, self._read_timeout)
            else:
                # Cluster-safe: single-key GETs, which the cluster pipeline routes node by node.
                async with self._redis.pipeline(transaction=False) as pipe:
                    for key in keys:
                        pipe.get(key)
                    values = await pipe.execute()
        except REDIS_ERRORS as exc:
            self._redis_failed(exc)
            values = [None] * len(keys)  # read as misses; the breaker is now open, so no fill follows
        except BaseException:
            _cancel(batch)  # cancelled (shutdown): nobody may wait forever
            raise
        for key, value in zip(keys, values, strict=True):
            for future in batch[key]:
                if not future.done():
                    future.set_result(value)

    # -- single-flight loads ----------------------------------------------------------------------

    async def _load(self, pseudonym: bytes, key: bytes, fill: _Fill) -> StatusEntry | None:
        flight = self._flights.get(pseudonym)
        if flight is None:
            flight = _Flight(asyncio.get_running_loop().create_future())
            self._flights[pseudonym] = flight
            self._spawn(self._load_and_fill(pseudonym, key, flight, fill))
        # shield: one waiter giving up must not cancel the load the others are waiting for.
        return await asyncio.shield(flight.future)

    async def _load_and_fill(self, pseudonym: bytes, key: bytes, flight: _Flight, fill: _Fill) -> None:
        try:
            self.loads += 1
            try:
                entry = await self._loader(pseudonym)
            except asyncio.CancelledError:
                flight.future.cancel()
                raise
            except Exception as exc:
                flight.future.set_exception(exc)
                return
            flight.future.set_result(entry)
            # The flight stays registered until the fill is done, so callers arriving meanwhile join
            # the finished future instead of missing in Redis and loading again.
            if fill is not _Fill.SKIP and not flight.stale and self._breaker.closed:
                await self._fill(key, entry, if_absent=fill is _Fill.IF_ABSENT)
        finally:
            if self._flights.get(pseudonym) is flight:
                del self._flights[pseudonym]

    async def _fill(self, key: bytes, entry: StatusEntry | None, *, if_absent: bool) -> None:
        try:
            if entry is None:
                await self._redis.set(key, TOMBSTONE, px=self._negative_ttl_ms, nx=if_absent)
                return
            expire_ms = entry.valid_until * 1000
            if expire_ms <= int(self._clock() * 1000):
                return  # already out of date: caching it would only serve it after it has changed
            await self._redis.set(key, pack(entry), pxat=expire_ms, nx=if_absent)
        except REDIS_ERRORS as exc:
            self._redis_failed(exc)
        except ValueError:
            # The loader gave an entry the format cannot carry; the caller has its answer, only
            # caching is lost. Logged, not raised: this runs after the answer was delivered.
            log.exception("status entry could not be packed; not cached", extra={"key": key.decode()})

    # -- helpers ----------------------------------------------------------------------------------

    def _mark_stale(self, pseudonym: bytes) -> None:
        flight = self._flights.get(pseudonym)
        if flight is not None:
            flight.stale = True

    async def _guard(self, call: Awaitable[list[Any]]) -> list[Any]:
        try:
            return await call
        except REDIS_ERRORS as exc:
            self._redis_failed(exc)
            raise

    def _redis_failed(self, exc: BaseException) -> None:
        self.redis_errors += 1
        if self._breaker.closed:
            log.warning("Redis failed, bypassing it for a while: %s", exc.__class__.__name__)
        self._breaker.trip()

    def _spawn(self, coro: Coroutine[None, None, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _cancel(batch: dict[bytes, list[asyncio.Future[bytes | None]]]) -> None:
    for futures in batch.values():
        for future in futures:
            future.cancel()


async def _refuse_load(pseudonym: bytes) -> None:
    raise RuntimeError("this status cache only writes entries; reading through it is a bug")


def writer_cache(redis: Redis | RedisCluster) -> StatusCache:
    """A cache for work that only writes entries (warming, loads, sweeps, overrides, the demo)."""
    return StatusCache(redis, _refuse_load)
