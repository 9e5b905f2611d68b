"""Per-client request limits: a fixed one-second window counted in Redis, shared by every API process."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from cache.breaker import Breaker
from cache.connection import REDIS_ERRORS
from cache.keys import rate_limit_key

log = logging.getLogger(__name__)

# A window's key outlives its second a little, so a slow INCR near the boundary still finds its TTL set.
WINDOW_TTL_SECONDS = 2


class RateLimiter:
    """`allow()` fails open: if Redis is down, requests pass (the cache and load shedding still protect
    the service) and Redis is left alone for `breaker_seconds`."""

    def __init__(
        self,
        redis: Redis | RedisCluster,
        *,
        breaker_seconds: float = 5.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = redis
        self._clock = clock
        self._breaker = Breaker(breaker_seconds, clock=monotonic)
        self.allowed = 0
        self.denied = 0
        self.failed_open = 0

    @property
    def redis_available(self) -> bool:
        return self._breaker.closed

    async def allow(self, client_id: str, limit_per_second: int) -> bool:
        """Count one request of `client_id` in the current second; False once over the limit."""
        if limit_per_second <= 0:
            self.denied += 1
            return False
        key = rate_limit_key(client_id, int(self._clock()))
        if not self._breaker.closed:
            self.failed_open += 1
            return True
        try:
            # Same key in both commands, so this is one round trip on one cluster node.
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.incr(key)
                pipe.expire(key, WINDOW_TTL_SECONDS)
                count, _ = await pipe.execute()
        except REDIS_ERRORS as exc:
            if self._breaker.closed:
                log.warning("Redis failed, rate limits not enforced for a while: %s", exc.__class__.__name__)
            self._breaker.trip()
            self.failed_open += 1
            return True
        if int(count) <= limit_per_second:
            self.allowed += 1
            return True
        self.denied += 1
        return False
