"""Redis keys of the federation: assertion ids already used (replay), and people whose peers were asked.

A peer request's `jti` is remembered until its assertion expires: SET NX refuses a second use in one
round trip, on every process. A person's peer look-up is remembered for a while (the answer itself is
stored as records): the value says which peers answered, so a status can say so without asking again.
Both keys carry a hash tag, the jti key the caller's issuer and the look-up key the pseudonym, so each
is one slot in a Redis Cluster.
"""

from __future__ import annotations

from redis.asyncio import Redis

from cache.keys import jti_key, peer_lookup_key

__all__ = ["first_use", "peer_lookup_key", "recent_lookup", "remember_lookup"]


async def first_use(redis: Redis, issuer: str, jti: str, ttl_seconds: int) -> bool:
    """True the first time (issuer, jti) is seen within ttl_seconds; False for a replay."""
    return bool(await redis.set(jti_key(issuer, jti), b"1", nx=True, ex=max(ttl_seconds, 1)))


async def recent_lookup(redis: Redis, pseudonym: bytes) -> bytes | None:
    value = await redis.get(peer_lookup_key(pseudonym))
    return value.encode() if isinstance(value, str) else value


async def remember_lookup(redis: Redis, pseudonym: bytes, value: bytes, ttl_seconds: int) -> None:
    await redis.set(peer_lookup_key(pseudonym), value, ex=ttl_seconds)
