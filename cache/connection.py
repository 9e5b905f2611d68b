"""Building a Redis client fit for the hot path."""

from __future__ import annotations

from typing import TypeVar

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

# What "Redis is unavailable" looks like to a caller: redis-py wraps socket errors in its own
# ConnectionError/TimeoutError, but an OSError can still escape from connection set-up.
REDIS_ERRORS: tuple[type[Exception], ...] = (RedisError, OSError)

R = TypeVar("R", bound=Redis)


def open_redis(
    url: str,
    *,
    max_connections: int = 64,
    socket_timeout: float = 0.5,
    connect_timeout: float = 0.5,
    client_class: type[R] = Redis,  # type: ignore[assignment]
) -> R:
    """A client with short timeouts, a bounded pool and no library-level retries.

    redis-py 8 retries a failed command ten times with backoff by default (about 2.4 s against a
    closed port); on the hot path that delay is worse than the miss, and the cache's circuit breaker
    already decides when to try again. The pool blocks (up to `connect_timeout`) rather than failing
    when all connections are busy. Close the client with `await client.aclose()`; that closes the pool.
    """
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=connect_timeout,
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
    )
    client = client_class(connection_pool=pool)
    client.auto_close_connection_pool = True  # what Redis.from_pool does: aclose() closes the pool too
    return client
