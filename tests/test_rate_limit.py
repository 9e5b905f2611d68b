"""Token buckets in Redis (cache.rate_limit), against a real Redis (db 14) and a cluster, on injected clocks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from cache.connection import open_redis
from cache.keys import rate_limit_key
from cache.rate_limit import Rate, RateLimiter, Refused
from cache.status_cache import StatusCache
from tests.redis_targets import Counting, counting_client
from tests.test_cache import DEAD_REDIS_URL, Loader, make_entry, pseudonym
from tests.test_cache_stream import FakeClock

NOW = 1_700_000_000.0
TWO_A_SECOND = Rate(2, 3)


@pytest.fixture
async def redis(cache_redis_url: str) -> AsyncIterator[Counting]:
    """One server or the cluster: each test taking it runs on both."""
    client = counting_client(cache_redis_url)
    await client.flushdb()
    client.reset_counts()
    yield client
    await client.flushdb()
    await client.aclose()


async def verdicts(limiter: RateLimiter, n: int, client: str = "7", rate: Rate = TWO_A_SECOND) -> list[int | None]:
    """Retry-After of each of `n` takes issued in one loop turn, None for those admitted."""
    answers = await asyncio.gather(*(limiter.admit(client, "status", rate) for _ in range(n)))
    return [None if a is None else a.retry_after for a in answers]


async def test_a_bucket_allows_its_burst_then_refills_at_its_rate(redis: Counting) -> None:
    clock = FakeClock(NOW)
    limiter = RateLimiter(redis, clock=clock)

    assert await verdicts(limiter, 5) == [None, None, None, 1, 1]  # burst 3, refused until a token is back
    clock.now += 0.5  # 2 a second: one token back
    assert await verdicts(limiter, 2) == [None, 1]
    clock.now += 10  # refills to the burst, not beyond
    assert await verdicts(limiter, 4) == [None, None, None, 1]
    assert (limiter.allowed, limiter.denied) == (7, 4)


async def test_one_turn_of_takes_is_one_round_trip(redis: Counting) -> None:
    limiter = RateLimiter(redis, clock=FakeClock(NOW))
    assert await verdicts(limiter, 50) == [None] * 3 + [1] * 47
    assert limiter.round_trips == 1
    assert redis.commands == []  # hand-packed, not through redis-py's command path


async def test_clients_and_buckets_are_counted_apart(redis: Counting) -> None:
    limiter = RateLimiter(redis, clock=FakeClock(NOW))
    assert await verdicts(limiter, 4, client="7") == [None, None, None, 1]
    assert await verdicts(limiter, 1, client="8") == [None]
    assert await limiter.admit("7", "verify", Rate(2, 3)) is None


async def test_a_bucket_is_shared_by_processes(redis: Counting, cache_redis_url: str) -> None:
    clock = FakeClock(NOW)
    other_redis = open_redis(cache_redis_url)
    try:
        here, there = RateLimiter(redis, clock=clock), RateLimiter(other_redis, clock=clock)
        assert await verdicts(here, 2) == [None, None]
        assert await verdicts(there, 2) == [None, 1]
    finally:
        await other_redis.aclose()


async def test_a_refusal_says_when_the_next_token_comes(redis: Counting) -> None:
    clock = FakeClock(NOW)
    limiter = RateLimiter(redis, clock=clock)
    slow = Rate(0.1, 1)  # one token every 10 s
    assert await limiter.admit("7", "uploads", slow) is None
    clock.now += 2.5
    refused = await limiter.admit("7", "uploads", slow)
    assert isinstance(refused, Refused)
    assert (refused.bucket, refused.retry_after) == ("uploads", 8)  # 7.5 s, rounded up


async def test_a_bucket_is_forgotten_once_full_again(redis: Counting) -> None:
    limiter = RateLimiter(redis, clock=FakeClock(NOW))
    before = int(time.time() * 1000)
    await limiter.admit("7", "status", Rate(100, 200))
    after = int(time.time() * 1000)
    # The key's expiry as a moment (not the time left, which shrinks while a busy machine runs the test):
    # one token to refill at 100 a second, plus a second, from when the server ran the script.
    expires_at = await redis.pexpiretime(rate_limit_key("7", "status"))
    assert before + 1010 <= expires_at <= after + 1010


async def test_a_blocked_client_is_refused_without_redis(redis: Counting) -> None:
    limiter = RateLimiter(redis, clock=FakeClock(NOW))
    refused = await limiter.admit("7", "status", Rate(0, 0))
    assert isinstance(refused, Refused)
    assert limiter.round_trips == 0


async def test_scripts_flushed_by_redis_are_sent_again(redis: Counting) -> None:
    limiter = RateLimiter(redis, clock=FakeClock(NOW))
    assert await verdicts(limiter, 1) == [None]  # EVAL, then EVALSHA
    assert await verdicts(limiter, 1) == [None]
    await redis.script_flush()  # as after a restart without persistence
    assert await verdicts(limiter, 2) == [None, 1]
    assert limiter.failed_open == 0


async def test_redis_down_fails_open_and_is_left_alone_for_a_while() -> None:
    dead = open_redis(DEAD_REDIS_URL, client_class=Redis)
    monotonic = FakeClock(0.0)
    limiter = RateLimiter(dead, breaker_seconds=5.0, monotonic=monotonic)
    try:
        assert await verdicts(limiter, 3) == [None] * 3
        assert limiter.redis_available is False
        assert await verdicts(limiter, 1) == [None]
        assert (limiter.failed_open, limiter.round_trips) == (4, 1)  # the second turn did not try Redis
        monotonic.now += 5
        assert await verdicts(limiter, 1) == [None]
        assert limiter.round_trips == 2
    finally:
        await dead.aclose()


def test_names_that_would_break_the_hash_tag_are_refused() -> None:
    with pytest.raises(ValueError, match="reserved"):
        rate_limit_key("evil}client", "status")
    with pytest.raises(ValueError, match="reserved"):
        rate_limit_key("7", "")


# -- riding along with the status read ----------------------------------------------------------


async def look_up(cache: StatusCache, limiter: RateLimiter, subject: bytes, rate: Rate) -> object:
    """As a handler does it: the take, then at once the read, in one step of one task."""
    return await cache.get(subject, admission=limiter.take("7", "status", rate))


async def test_a_take_rides_along_with_the_status_read(redis: Counting) -> None:
    entry = make_entry()
    limiter = RateLimiter(redis, clock=FakeClock(NOW))
    cache = StatusCache(redis, Loader({pseudonym(1): entry}), limiter=limiter)
    assert await cache.get(pseudonym(1)) == entry  # a miss: loaded and filled
    await cache.drain()
    reads = cache.reads

    got = await asyncio.gather(*(look_up(cache, limiter, pseudonym(1), Rate(2, 3)) for _ in range(3)))

    assert got == [entry] * 3
    assert (cache.reads - reads, limiter.round_trips) == (1, 0)  # one round trip for reads and limits


async def test_a_refused_look_up_reads_nothing_more_and_loads_nothing(redis: Counting) -> None:
    loader = Loader({pseudonym(2): make_entry()})
    limiter = RateLimiter(redis, clock=FakeClock(NOW))
    cache = StatusCache(redis, loader, limiter=limiter)

    results = await asyncio.gather(
        *(look_up(cache, limiter, pseudonym(2), Rate(1, 1)) for _ in range(3)), return_exceptions=True
    )

    assert [type(r).__name__ for r in results] == ["StatusEntry", "Refused", "Refused"]
    assert len(loader.calls) == 1  # the refused ones did not wait on, or start, a load
    assert limiter.round_trips == 0
