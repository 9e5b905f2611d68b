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

# A subject's stored status from a streaming replica, only while the replica replays what it receives
# (not paused, at most $2 bytes of received WAL not yet applied); otherwise no row, and the miss goes to
# the primary. On a server that is not a replica the check passes: it is as current as it gets.
REPLICA_STATUS_QUERY = f"""
SELECT s.* FROM ({STATUS_QUERY}) s
WHERE NOT pg_is_in_recovery()
   OR (NOT pg_is_wal_replay_paused()
       AND pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()) <= $2)
"""
# Whatever a replica raises sends the miss to the primary: down, slow, or refusing (e.g. a replica
# recovery conflict cancelling the query).
_REPLICA_ERRORS: tuple[type[Exception], ...] = (*UNAVAILABLE_ERRORS, asyncpg.PostgresError, asyncpg.InterfaceError)
# Received WAL a replica may hold unapplied and still serve misses: a few busy milliseconds' worth.
MAX_REPLAY_LAG_BYTES = 1 << 20


class StatusLoader:
    """The stored status, recomputed (and published) first when missing or past its valid_until.

    The cache fills Redis with what this returns through the version-guarded writer, so a fill that
    races a recompute can never put the older status back.

    A miss gets a budget, not an open-ended wait: `acquire_timeout` for a pool connection and
    `miss_timeout` in all. Postgres down, refusing, or slower than that raises DatabaseUnavailable
    (a 503 at the edge) and is reported to `postgres`, which then keeps misses off Postgres for a
    short pause instead of every request trying a dead server.

    With a `replica` pool, a miss reads the replica first: a fresh stored status found there is the
    answer; anything else (no subject, no status or one past its valid_until, a replica that lags in
    replay, fails or takes longer than `replica_timeout`) goes to the primary, which alone recomputes.
    A replica that failed is left out for a short pause (`replica_state`). A replica may still be
    behind in what it has received, which no check on it can see: its status then fills Redis through
    the version guard like any other, which refuses it if Redis holds a newer one.
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
        replica: asyncpg.Pool | None = None,
        replica_timeout: float = 0.2,
        replica_state: DependencyState | None = None,
        max_replay_lag_bytes: int | None = MAX_REPLAY_LAG_BYTES,
    ) -> None:
        self.pool = pool
        self.replica = replica
        self.replica_timeout = replica_timeout
        self.replica_state = replica_state or DependencyState("postgres replica", pause_seconds=1.0)
        self.max_replay_lag_bytes = max_replay_lag_bytes
        self.replica_reads = 0  # misses answered by the replica, for tests and metrics
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
        if self.replica is not None and self.replica_state.should_try:
            row = await self._from_replica(self.replica, subject)
            if row is not None and is_fresh(row, now):
                self.replica_reads += 1
                await self.publisher.pause("loaded")
                return entry_from_row(row)
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

    async def _from_replica(self, replica: asyncpg.Pool, subject: bytes) -> asyncpg.Record | None:
        """The replica's row, or None when it has none it may serve or cannot answer in time."""
        try:
            async with asyncio.timeout(self.replica_timeout), replica.acquire() as conn:
                if self.max_replay_lag_bytes is None:  # no replay check: tests of the version guard alone
                    row: asyncpg.Record | None = await conn.fetchrow(STATUS_QUERY, subject)
                else:
                    row = await conn.fetchrow(REPLICA_STATUS_QUERY, subject, self.max_replay_lag_bytes)
        except _REPLICA_ERRORS as exc:
            self.replica_state.failed(unavailable_reason(exc))
            return None
        self.replica_state.succeeded()
        return row
