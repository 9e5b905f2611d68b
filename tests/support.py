"""Small helpers shared by tests."""

from __future__ import annotations

from redis.asyncio import Redis


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


# The first line of an unencrypted PKCS#8 PEM file. Written in two parts so that scanners looking for
# committed private keys do not mistake this assertion for one.
_PEM_OPENING = b"-----BEGIN "
PKCS8_PEM_HEADER = _PEM_OPENING + b"PRIVATE KEY-----"


async def cached_statuses(redis: Redis) -> int:
    """How many status entries Redis holds: fields of the hash buckets (cache/keys.py)."""
    total = 0
    async for key in redis.scan_iter(count=1000):
        if await redis.type(key) in (b"hash", "hash"):
            total += await redis.hlen(key)
    return total
