"""Scan ids already recorded: an offline scanner re-sends its queue when the network returns, and a
scan whose answer was lost on the way is sent again, so each scan carries an id and is recorded once.

One `SET NX EX` per scan that carries an id; scans without one cost nothing. Ids are per client (one
scanner cannot mark another's ids) and kept `ttl_seconds` (a week: longer than a gate stays offline).
"""

from __future__ import annotations

from typing import Final

from cache.connection import AnyRedis
from cache.keys import scan_id_key

SCAN_ID_TTL_SECONDS: Final = 7 * 24 * 3600


class ScanIds:
    def __init__(self, redis: AnyRedis, ttl_seconds: int = SCAN_ID_TTL_SECONDS) -> None:
        self._redis = redis
        self._ttl = ttl_seconds

    async def first_sight(self, client_id: int, scan_id: str) -> bool:
        """True the first time this client sends this id (within the ttl), False after."""
        return bool(await self._redis.set(scan_id_key(client_id, scan_id), b"1", nx=True, ex=self._ttl))

    async def forget(self, client_id: int, scan_id: str) -> None:
        """Unmark an id whose scan could not be recorded, so the scanner's retry is recorded."""
        await self._redis.delete(scan_id_key(client_id, scan_id))
