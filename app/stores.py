"""Both stores for work outside the server (commands, benchmarks): a Postgres connection and a Redis client.

The server has pools of its own (app.http.app); a command opens one of each and closes both at the end.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from app.db import connection
from app.settings import Settings
from cache.connection import AnyRedis, open_redis
from cache.keys import BucketLayout
from cache.status_writer import StatusWriter


@asynccontextmanager
async def open_stores(database_url: str, redis_url: str) -> AsyncIterator[tuple[asyncpg.Connection, AnyRedis]]:
    """One Postgres connection (set up like the pool's) and a Redis client; both closed when the block ends.

    `async with open_stores(settings.database_url, settings.redis_url) as (conn, redis): ...`
    """
    async with connection(database_url) as conn:
        redis = open_redis(redis_url)
        try:
            yield conn, redis
        finally:
            await redis.aclose()


def status_writer(redis: AnyRedis, settings: Settings) -> StatusWriter:
    """The status writer with this deployment's key layout; every process must build it the same way."""
    return StatusWriter(redis, layout=BucketLayout(settings.cache_bucket_bits), legacy_keys=settings.cache_legacy_keys)
