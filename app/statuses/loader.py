"""The read-through cache's loader: a status from Postgres, the source of truth, on a cache miss."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import asyncpg

from app.db import UNAVAILABLE_ERRORS, DatabaseUnavailable, unavailable_reason
from app.health import DependencyState
from app.statuses.publish import StatusPublisher
from app.statuses.stored import STATUS_QUERY, entry_from_row, is_fresh
from cache.entry import StatusEntry


class StatusLoader:
    """The stored status, recomputed (and published) first when missing or past its valid_until.

    The cache fills Redis with what this returns through the version-guarded writer, so a fill that
    races a recompute can never put the older status back.

    A miss gets a budget, not an open-ended wait: `acquire_timeout` for a pool connection and
    `miss_timeout` in all. Postgres down, refusing, or slower than that raises DatabaseUnavailable
    (a 503 at the edge) and is reported to `postgres`, which then keeps misses off Postgres for a
    short pause instead of every request trying a dead server.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        publisher: StatusPublisher,
        *,
        postgres: DependencyState | None = None,
        acquire_timeout: float = 0.5,
        miss_timeout: float = 1.5,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.pool = pool
        self.publisher = publisher
        self.postgres = postgres or DependencyState("postgres", pause_seconds=1.0)
        self.acquire_timeout = acquire_timeout
        self.miss_timeout = miss_timeout
        self.clock = clock
        self.reads = 0  # Postgres reads, for tests and metrics

    async def load(self, subject: bytes) -> StatusEntry | None:
        if not self.postgres.should_try:
            raise DatabaseUnavailable("postgres failed moments ago; not retried yet")
        try:
            async with asyncio.timeout(self.miss_timeout):
                entry = await self._load(subject)
        except UNAVAILABLE_ERRORS as exc:
            self.postgres.failed(unavailable_reason(exc))
            raise DatabaseUnavailable(f"postgres: {unavailable_reason(exc)}") from exc
        self.postgres.succeeded()
        return entry

    async def _load(self, subject: bytes) -> StatusEntry | None:
        now = int(self.clock())
        self.reads += 1
        async with self.pool.acquire(timeout=self.acquire_timeout) as conn:
            row = await conn.fetchrow(STATUS_QUERY, subject)
            if row is None:
                return None
            if is_fresh(row, now):
                await self.publisher.pause("loaded")
                return entry_from_row(row)
            recomputed = await self.publisher.recompute(conn, [subject], now)
            return recomputed.get(subject)
