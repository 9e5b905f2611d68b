"""Read-through status cache: one Redis round trip per loop turn, one loader call per missing subject.

The hot path (a hit or a negative hit) is one HGET of the subject's field in its bucket and one GET of
its tombstone key (cache/keys.py), and concurrent look-ups issued in the same loop turn share one round
trip (the HGETs and one MGET of the tombstones, in one buffer; on a Redis Cluster, each subject's HGET
and GET in the buffer of the node that holds its bucket, the nodes at once). An entry past its
`valid_until` is a miss: bucket fields carry no expiry of their own. A miss goes to the loader (Postgres,
owned by the app) once per subject however many callers are waiting for it, and the answer is written
back through the version-guarded `StatusWriter` (so a fill can never replace a newer status that a
recompute published meanwhile); an unknown subject is written back as a short-lived tombstone. If Redis
fails, answers come from the loader and a circuit breaker keeps Redis out of the path for a while (no
retry storm). This class only reads; bulk writes are `StatusWriter.put_many`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import cast

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from cache.breaker import Breaker
from cache.bulk import pack_hget, pack_mget, round_trip
from cache.cluster import Command, cluster_round_trip, pack_get
from cache.connection import REDIS_ERRORS
from cache.entry import EntryFormatError, StatusEntry, unpack
from cache.keys import BUCKET_PATTERN, TOMBSTONE, legacy_status_key
from cache.rate_limit import Admission, RateLimiter
from cache.status_writer import StatusWriter

log = logging.getLogger(__name__)

Loader = Callable[[bytes], Awaitable[StatusEntry | None]]


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
        writer: StatusWriter | None = None,
        negative_ttl_seconds: float = 30,
        breaker_seconds: float = 5.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        limiter: RateLimiter | None = None,
    ) -> None:
        kwargs = redis.connection_pool.connection_kwargs if isinstance(redis, Redis) else redis.get_connection_kwargs()
        if kwargs.get("decode_responses"):
            raise ValueError("StatusCache needs a Redis client with decode_responses=False (entries are bytes)")
        if negative_ttl_seconds <= 0:
            raise ValueError("negative_ttl_seconds must be positive")
        self._redis = redis
        self._loader = loader
        self._writer = writer or StatusWriter(redis, clock=clock)
        self._slot = self._writer.layout.slot
        # During a rolling upgrade from format 2, its string keys are read too and the newer entry wins.
        self._legacy = self._writer.legacy_keys
        self._negative_ttl_ms = round(negative_ttl_seconds * 1000)
        self._clock = clock  # wall clock, epoch seconds: compared with valid_until
        self._breaker = Breaker(breaker_seconds, clock=monotonic)  # monotonic: a clock step cannot stick it open
        # The read path's own deadline: the client's socket timeout, so a stalled Redis fails as fast.
        self._read_timeout = float(kwargs.get("socket_timeout") or 0.5)

        self._batch: dict[bytes, list[asyncio.Future[bytes | None]]] = {}
        self._pumping = False  # a _pump task is sending batches
        # One in-progress load per subject, shared by every caller that missed it.
        self._flights: dict[bytes, asyncio.Future[StatusEntry | None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # Rate-limit takes waiting to be sent ride along with each read: the limit costs no round trip.
        self._limiter = limiter
        if self._limiter is not None:
            self._limiter.carrier = self

        # Counters for metrics; plain ints, read them whenever.
        self.hits = 0
        self.misses = 0
        self.negative_hits = 0
        self.loads = 0
        self.redis_errors = 0
        self.reads = 0  # round trips of the read path (one buffer each on plain Redis, one per node on a cluster)
        self.redis_up = True  # as the last round trip found it; logged when it changes
        # Called with the seconds of each read round trip (metrics); None: not timed.
        self.on_read: Callable[[float], None] | None = None

    @property
    def pumping(self) -> bool:
        """Reads are being sent; takes waiting in the limiter go with the next one."""
        return self._pumping

    @property
    def redis_available(self) -> bool:
        """False while the circuit breaker keeps Redis out of the path after a failure."""
        return self._breaker.closed

    async def get(self, pseudonym: bytes, admission: Admission | None = None) -> StatusEntry | None:
        """The subject's current status, or None if no agency knows the subject.

        `admission` (a rate-limit take issued just before, in the same loop turn) goes out with the
        read; if it is refused, `Refused` is raised and nothing is loaded: a client over its limit
        learns nothing and costs Postgres nothing.
        """
        if self._breaker.closed:
            raw = await self._read(pseudonym)
            if admission is not None and (refused := await admission) is not None:
                raise refused
            if raw is not None:
                if raw == TOMBSTONE:
                    self.negative_hits += 1
                    return None
                try:
                    entry = unpack(raw)
                except EntryFormatError as exc:
                    # Another format (a rolling deploy) or damage: answered from Postgres; the fill's
                    # guard replaces an older format and leaves a newer one alone.
                    log.info("status entry in Redis not readable here, loading: %s", exc)
                else:
                    if entry.valid_until > self._clock():
                        self.hits += 1
                        return entry
        elif admission is not None and (refused := await admission) is not None:
            raise refused
        self.misses += 1
        return await self._load(pseudonym)

    async def drain(self) -> None:
        """Wait for background round trips and cache fills; call before closing the Redis client."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- coalesced reads --------------------------------------------------------------------------

    def _read(self, pseudonym: bytes) -> asyncio.Future[bytes | None]:
        """The subject's entry, TOMBSTONE if it is known not to exist, None if Redis has nothing."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bytes | None] = loop.create_future()
        if not self._pumping:
            # The task's first step is scheduled with loop.call_soon, so it runs after every callback
            # already due in this loop turn: all their keys join this batch, one round trip in all.
            self._pumping = True
            self._spawn(self._pump())
        # One future per caller, not per key: a cancelled caller must not cancel the others.
        self._batch.setdefault(pseudonym, []).append(future)
        return future

    async def _pump(self) -> None:
        """Send the waiting keys, one round trip at a time, until none is left.

        Keys asked for while a round trip is in flight wait for it and then go together in the next:
        a busy process sends fewer, larger MGETs, and redis-py's cost per command (over 100 us of CPU
        here) is shared by more requests. Measured with `make bench`: see the commit that added this.
        """
        limiter = self._limiter
        try:
            # Takes the limiter holds keep the pump going: a verify whose token failed takes a token
            # but reads nothing, and its take must not wait for another read to come along.
            while self._batch or (limiter is not None and limiter.pending):
                batch, self._batch = self._batch, {}
                await self._fetch(batch)
        except BaseException:
            batch, self._batch = self._batch, {}
            _cancel(batch)  # cancelled (shutdown): nobody may wait forever
            raise
        finally:
            self._pumping = False
            if limiter is not None:
                limiter.kick()  # anything still waiting goes by itself

    async def _fetch(self, batch: dict[bytes, list[asyncio.Future[bytes | None]]]) -> None:
        keys = list(batch)  # pseudonyms
        values: list[bytes | None]
        try:
            self.reads += bool(keys)  # a round trip of limiter takes alone is not a read
            started = time.monotonic()
            # Measured on this machine (redis-py 8.1 + hiredis, local Redis 7.0), per batch:
            # 10 keys MGET 160 us vs pipeline of GETs 340 us; 100 keys 270 us vs 1580 us.
            # A hand-packed MGET (cache/bulk.py) cuts the CPU of one from ~145 us to ~21 us.
            values = await self._mget(keys)
        except REDIS_ERRORS as exc:
            self._redis_failed(exc)
            values = [None] * len(keys)  # read as misses; the breaker is now open, so no fill follows
        except BaseException:
            _cancel(batch)  # cancelled (shutdown): nobody may wait forever
            raise
        else:
            if self.on_read is not None and keys:
                self.on_read(time.monotonic() - started)
            if not self.redis_up:
                self.redis_up = True
                log.warning("Redis answering again; status reads use it")
        for key, value in zip(keys, values, strict=True):
            for future in batch[key]:
                if not future.done():
                    future.set_result(value)

    async def _mget(self, keys: list[bytes]) -> list[bytes | None]:
        """An HGET per subject and one MGET of their tombstones (and one of their format 2 keys during
        an upgrade), with the rate-limit takes of the same turn written ahead of them in one buffer.

        A cluster cannot MGET keys of different slots: there each subject's HGET and tombstone GET (and
        format 2 GET) go as single-key commands, grouped with the takes by node, one buffer per node and
        the nodes at once (cache/cluster.py). A bucket and its tombstones share a hash tag, so a
        subject's two commands go to one node."""
        claim = self._limiter.claim() if self._limiter is not None else None
        taken = claim.count if claim is not None else 0
        slots = [self._slot(k) for k in keys]
        try:
            if isinstance(self._redis, RedisCluster):
                commands: list[Command] = list(claim.commands) if claim is not None else []
                for key, where in zip(keys, slots, strict=True):
                    commands.append((where.bucket, pack_hget(where.bucket, where.field)))
                    commands.append((where.tombstone, pack_get(where.tombstone)))
                    if self._legacy:
                        legacy_key = legacy_status_key(key)
                        commands.append((legacy_key, pack_get(legacy_key)))
                replies = await cluster_round_trip(self._redis, commands, self._read_timeout)
            else:
                parts = [pack_hget(s.bucket, s.field) for s in slots]
                if keys:
                    parts.append(pack_mget([s.tombstone for s in slots]))
                    if self._legacy:
                        parts.append(pack_mget([legacy_status_key(k) for k in keys]))
                payload = b"".join(parts)
                if claim is not None:
                    payload = claim.payload + payload
                replies = await round_trip(self._redis, payload, taken + len(parts), self._read_timeout)
        except BaseException as exc:
            if claim is not None:
                claim.fail(exc)
            raise
        if claim is not None:
            claim.resolve(replies[:taken])
        if not keys:
            return []
        # A refused command comes back as an exception object.
        mine = replies[taken:]
        for reply in mine:
            if isinstance(reply, Exception):
                raise ResponseError(str(reply))
        n = len(keys)
        if isinstance(self._redis, RedisCluster):
            step = 3 if self._legacy else 2
            return [
                _pick(mine[i], mine[i + 1], mine[i + 2] if self._legacy else None) for i in range(0, len(mine), step)
            ]
        tombstones = cast("list[bytes | None]", mine[n])
        legacy = cast("list[bytes | None]", mine[n + 1]) if self._legacy else [None] * n
        return [_pick(mine[i], tombstones[i], legacy[i]) for i in range(n)]

    # -- single-flight loads ----------------------------------------------------------------------

    async def _load(self, pseudonym: bytes) -> StatusEntry | None:
        flight = self._flights.get(pseudonym)
        if flight is None:
            flight = asyncio.get_running_loop().create_future()
            self._flights[pseudonym] = flight
            self._spawn(self._load_and_fill(pseudonym, flight))
        # shield: one waiter giving up must not cancel the load the others are waiting for.
        return await asyncio.shield(flight)

    async def _load_and_fill(self, pseudonym: bytes, flight: asyncio.Future[StatusEntry | None]) -> None:
        try:
            self.loads += 1
            try:
                entry = await self._loader(pseudonym)
            except asyncio.CancelledError:
                flight.cancel()
                raise
            except Exception as exc:
                flight.set_exception(exc)
                return
            flight.set_result(entry)
            # The flight stays registered until the fill is done, so callers arriving meanwhile join
            # the finished future instead of missing in Redis and loading again.
            if self._breaker.closed:
                await self._fill(pseudonym, entry)
        finally:
            if self._flights.get(pseudonym) is flight:
                del self._flights[pseudonym]

    async def _fill(self, pseudonym: bytes, entry: StatusEntry | None) -> None:
        try:
            if entry is None:
                await self._writer.put_tombstone(pseudonym, self._negative_ttl_ms)
            else:
                # Guarded: a status published while this load ran (newer version) is not replaced.
                await self._writer.put(pseudonym, entry)
        except REDIS_ERRORS as exc:
            self._redis_failed(exc)
        except ValueError:
            # The loader gave an entry the format cannot carry; the caller has its answer, only
            # caching is lost. Logged, not raised: this runs after the answer was delivered.
            log.exception("status entry could not be packed; not cached")

    # -- helpers ----------------------------------------------------------------------------------

    def _redis_failed(self, exc: BaseException) -> None:
        self.redis_errors += 1
        if self.redis_up:
            # Once per outage: the breaker retries every few seconds, and each retry failing is no news.
            self.redis_up = False
            log.warning("Redis failed, answering from Postgres until it is back: %s", exc.__class__.__name__)
        self._breaker.trip()

    def _spawn(self, coro: Coroutine[None, None, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def count_cached(redis: Redis | RedisCluster) -> int:
    """How many status entries Redis holds (fields of the buckets): for tools and benchmarks, not the
    hot path (it scans every key, on every primary of a cluster)."""
    total = 0
    async for key in redis.scan_iter(match=BUCKET_PATTERN, count=10_000, _type="hash"):
        total += await redis.hlen(key)
    return total


def _pick(field: bytes | None, tombstone: bytes | None, legacy: bytes | None) -> bytes | None:
    """What a look-up found: the entry (the newer of the bucket's and format 2's key's), else the
    tombstone, else nothing."""
    if legacy is not None and legacy != TOMBSTONE:
        if field is None:
            return legacy
        try:
            a, b = unpack(field), unpack(legacy)
        except EntryFormatError:
            return field
        return legacy if (b.version, b.computed_at) > (a.version, a.computed_at) else field
    if field is not None:
        return field
    return TOMBSTONE if tombstone is not None or legacy == TOMBSTONE else None


def _cancel(batch: dict[bytes, list[asyncio.Future[bytes | None]]]) -> None:
    for futures in batch.values():
        for future in futures:
            future.cancel()
