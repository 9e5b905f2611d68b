"""Per-client request limits: token buckets in Redis, taken by an atomic Lua script, shared by every process.

A bucket holds up to `burst` tokens and refills at `per_second`; a request takes one. Takes of one event-
loop turn are coalesced: all requests of one bucket in the turn cost one script call asking for n tokens
(the first `granted` of them pass), and the calls of every bucket go in one write. On the hot path they
ride along with the status cache's read (`claim`, used by StatusCache), so a status or verify look-up
still costs one Redis round trip, limit included.

Fails open: if Redis is down, requests pass (load shedding still protects the service) and Redis is
left alone for `breaker_seconds`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from cache.breaker import Breaker
from cache.bulk import round_trip
from cache.cluster import Command, cluster_round_trip
from cache.connection import REDIS_ERRORS
from cache.keys import rate_limit_key

log = logging.getLogger(__name__)

# KEYS[1] the bucket; ARGV per_ms (tokens a millisecond), burst, now_ms, wanted. Returns {granted,
# retry_ms}: how many of the wanted tokens were taken, and when the next one will be there.
TAKE_SCRIPT: Final = b"""
local per_ms, burst, now, wanted = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local state = redis.call('HMGET', KEYS[1], 't', 'at')
local tokens, at = tonumber(state[1]), tonumber(state[2])
if tokens == nil or at == nil then tokens, at = burst, now end
if now > at then tokens, at = math.min(burst, tokens + (now - at) * per_ms), now end
local granted = math.max(0, math.min(wanted, math.floor(tokens)))
tokens = tokens - granted
redis.call('HSET', KEYS[1], 't', tostring(tokens), 'at', tostring(at))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / per_ms) + 1000)
local retry = 0
if granted < wanted then retry = math.ceil((1 - tokens) / per_ms) end
return {granted, retry}
"""
# Redis names a loaded script by the SHA-1 of its text.
TAKE_SHA: Final = hashlib.sha1(TAKE_SCRIPT).hexdigest().encode()


@dataclass(frozen=True, slots=True)
class Rate:
    """`per_second` tokens a second, up to `burst` at once; Rate(0, 0) refuses everything."""

    per_second: float
    burst: int

    def __post_init__(self) -> None:
        blocked = self.per_second == 0 and self.burst == 0
        if not blocked and (self.per_second <= 0 or self.burst < 1 or not math.isfinite(self.per_second)):
            raise ValueError("a rate needs per_second > 0 and burst >= 1 (or both 0: refuse every request)")

    @property
    def blocked(self) -> bool:
        return self.burst == 0


class Refused(Exception):
    """The bucket was empty: retry after `retry_after` seconds."""

    def __init__(self, client: str, bucket: str, rate: Rate, retry_after: int) -> None:
        super().__init__(f"{bucket} limit of client {client} reached; retry after {retry_after} s")
        self.client = client
        self.bucket = bucket
        self.rate = rate
        self.retry_after = retry_after


_KEY_MEMO_LIMIT: Final = 100_000


class Carrier(Protocol):
    """A round trip that claims waiting takes (StatusCache): `pumping` while it is sending."""

    @property
    def pumping(self) -> bool: ...


# What a take resolves to: None when the request may go on, else the refusal (not raised into the
# future, so a caller that went away leaves no unretrieved exception behind).
Admission = asyncio.Future[Refused | None]


@dataclass(slots=True)
class _Bucket:
    client: str
    name: str
    rate: Rate
    waiters: list[Admission] = field(default_factory=list)


@dataclass(slots=True)
class Claim:
    """Takes packed as Redis commands, for another round trip to carry; hand it every reply it asked for.

    `commands` pairs each with its bucket's key, which routes it on a cluster."""

    commands: list[Command]
    _limiter: RateLimiter
    _buckets: list[_Bucket]

    @property
    def payload(self) -> bytes:
        return b"".join(packed for _, packed in self.commands)

    @property
    def count(self) -> int:
        return len(self.commands)

    def resolve(self, replies: Sequence[Any]) -> None:
        self._limiter._resolve(self._buckets, replies)

    def fail(self, exc: BaseException) -> None:
        self._limiter._fail(self._buckets, exc)


class RateLimiter:
    def __init__(
        self,
        redis: Redis | RedisCluster,
        *,
        breaker_seconds: float = 5.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        timeout_seconds: float = 0.5,
    ) -> None:
        self._redis = redis
        self._clock = clock
        self._breaker = Breaker(breaker_seconds, clock=monotonic)
        self._timeout = timeout_seconds
        self._pending: dict[tuple[str, str], _Bucket] = {}
        self._keys: dict[tuple[str, str], bytes] = {}  # checked and encoded once per bucket
        self._start_due = False  # a call_soon(_start) is queued
        self._pumping = False
        # A status cache whose reads carry these takes: while its pump runs, it sends them.
        self.carrier: Carrier | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # EVAL (which also loads the script) until Redis is known to hold it; EVALSHA after that.
        self._script_loaded = False
        self.allowed = 0
        self.denied = 0
        self.failed_open = 0
        self.round_trips = 0  # round trips of its own (takes that rode along with a status read excluded)

    @property
    def redis_available(self) -> bool:
        return self._breaker.closed

    def take(self, client: str, bucket: str, rate: Rate) -> Admission:
        """Take one token from `client`'s `bucket`; the future says whether the request may go on."""
        admission: Admission = asyncio.get_running_loop().create_future()
        if rate.blocked:
            self.denied += 1
            admission.set_result(Refused(client, bucket, rate, retry_after=60))
            return admission
        if not self._breaker.closed:
            self.failed_open += 1
            admission.set_result(None)
            return admission
        name = (client, bucket)
        entry = self._pending.get(name)
        if entry is None:
            if name not in self._keys:
                if len(self._keys) > _KEY_MEMO_LIMIT:
                    self._keys.clear()
                # Refuses, here and now, a name that would break the key's hash tag.
                self._keys[name] = rate_limit_key(client, bucket).encode()
            entry = self._pending[name] = _Bucket(client, bucket, rate)
        entry.waiters.append(admission)
        self.kick()
        return admission

    @property
    def pending(self) -> bool:
        return bool(self._pending)

    def kick(self) -> None:
        """Make sure waiting takes are sent: by a carrier's round trip, or else by one of our own."""
        if self._pending and not self._start_due:
            # Deferred by one loop turn: a status read issued in this turn claims these takes first and
            # carries them in its own round trip (call_soon callbacks and task steps run in FIFO order).
            self._start_due = True
            asyncio.get_running_loop().call_soon(self._start)

    async def admit(self, client: str, bucket: str, rate: Rate) -> Refused | None:
        return await self.take(client, bucket, rate)

    def claim(self) -> Claim | None:
        """The takes waiting to be sent, for the caller's round trip to carry."""
        if not self._pending:
            return None
        buckets, self._pending = list(self._pending.values()), {}
        now_ms = round(self._clock() * 1000)
        return Claim([self._pack(b, now_ms) for b in buckets], self, buckets)

    async def drain(self) -> None:
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- sending ------------------------------------------------------------------------------------

    def _start(self) -> None:
        self._start_due = False
        if self.carrier is not None and self.carrier.pumping:
            return  # its next round trip claims them; it kicks again when it stops
        if self._pending and not self._pumping:
            self._pumping = True
            task = asyncio.get_running_loop().create_task(self._pump())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(self) -> None:
        try:
            while self._pending:
                claim = self.claim()
                assert claim is not None
                self.round_trips += 1
                try:
                    if isinstance(self._redis, RedisCluster):  # one round trip per node holding a bucket
                        replies = await cluster_round_trip(self._redis, claim.commands, self._timeout)
                    else:
                        replies = await round_trip(self._redis, claim.payload, claim.count, self._timeout)
                except BaseException as exc:
                    claim.fail(exc)
                    if not isinstance(exc, REDIS_ERRORS):
                        raise
                else:
                    claim.resolve(replies)
        finally:
            self._pumping = False

    def _pack(self, bucket: _Bucket, now_ms: int) -> Command:
        key = self._keys.get((bucket.client, bucket.name)) or rate_limit_key(bucket.client, bucket.name).encode()
        # On a cluster a node that never ran the script (a new primary) answers NOSCRIPT: sent again as EVAL.
        head = (b"EVALSHA", TAKE_SHA) if self._script_loaded else (b"EVAL", TAKE_SCRIPT)
        return key, _command(*head, b"1", key, *(str(a).encode() for a in _args(bucket, now_ms)))

    # -- answers ------------------------------------------------------------------------------------

    def _resolve(self, buckets: list[_Bucket], replies: Sequence[Any]) -> None:
        for bucket, reply in zip(buckets, replies, strict=True):
            if isinstance(reply, Exception):
                if str(reply).startswith("NOSCRIPT"):  # Redis restarted or flushed its scripts: send again
                    self._script_loaded = False
                    self._requeue(bucket)
                else:
                    self._fail([bucket], reply)
                continue
            self._script_loaded = True
            granted, retry_ms = int(reply[0]), int(reply[1])
            live = [w for w in bucket.waiters if not w.done()]
            refusal = None
            if granted < len(live):
                refusal = Refused(bucket.client, bucket.name, bucket.rate, max(1, math.ceil(retry_ms / 1000)))
            for index, waiter in enumerate(live):
                waiter.set_result(None if index < granted else refusal)
            self.allowed += min(granted, len(live))
            self.denied += max(0, len(live) - granted)

    def _fail(self, buckets: list[_Bucket], exc: BaseException) -> None:
        if not isinstance(exc, asyncio.CancelledError):
            if self._breaker.closed:
                log.warning("Redis failed, rate limits not enforced for a while: %s", exc.__class__.__name__)
            self._breaker.trip()
        for bucket in buckets:
            for waiter in bucket.waiters:
                if not waiter.done():
                    self.failed_open += 1
                    waiter.set_result(None)

    def _requeue(self, bucket: _Bucket) -> None:
        entry = self._pending.setdefault((bucket.client, bucket.name), _Bucket(bucket.client, bucket.name, bucket.rate))
        entry.waiters.extend(bucket.waiters)
        if self.carrier is None or not self.carrier.pumping:
            self.kick()


def _args(bucket: _Bucket, now_ms: int) -> tuple[str, int, int, int]:
    return (repr(bucket.rate.per_second / 1000), bucket.rate.burst, now_ms, len(bucket.waiters))


def _command(*parts: bytes) -> bytes:
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%b\r\n" % (len(p), p) for p in parts)
