"""The read-through cache's loader: a status from Postgres, the source of truth, on a cache miss."""

from __future__ import annotations

import time
from collections.abc import Callable

import asyncpg

from app.statuses.publish import StatusPublisher
from app.statuses.stored import STATUS_QUERY, entry_from_row, is_fresh
from cache.entry import StatusEntry


class StatusLoader:
    """The stored status, recomputed (and published) first when missing or past its valid_until.

    The cache fills Redis with what this returns through the version-guarded writer, so a fill that
    races a recompute can never put the older status back.
    """

    def __init__(self, pool: asyncpg.Pool, publisher: StatusPublisher, clock: Callable[[], float] = time.time) -> None:
        self.pool = pool
        self.publisher = publisher
        self.clock = clock
        self.reads = 0  # Postgres reads, for tests and metrics

    async def load(self, subject: bytes) -> StatusEntry | None:
        now = int(self.clock())
        self.reads += 1
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(STATUS_QUERY, subject)
            if row is None:
                return None
            if is_fresh(row, now):
                await self.publisher.pause("loaded")
                return entry_from_row(row)
            recomputed = await self.publisher.recompute(conn, [subject], now)
            return recomputed.get(subject)
