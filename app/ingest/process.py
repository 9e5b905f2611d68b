"""Processing received batches: merge, recompute the people they touch, refresh the cache.

Steps, each safe to repeat after a crash:

1. ``received`` -> ``loading``: the merge into the record tables runs in one transaction that also
   stores the counts and sets ``merged_at``. A crash before it commits leaves nothing merged.
2. With ``merged_at`` set, the touched subjects (read from staging) are recomputed in chunks and
   written to Postgres and Redis. Recomputing twice gives the same statuses.
3. ``done``: staging rows deleted, in one transaction.

Batches are processed one at a time across every process (a Postgres advisory lock), so two batches
touching one person cannot interleave their recomputes and leave the older status last.
A batch that cannot be merged is marked ``failed`` with nothing applied, and can be sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Final, TypeVar

import asyncpg

from app.ingest.merge import affected_subjects, merge_batch
from app.ingest.store import Conn, mark_failed
from app.rules.areas import RiskAreaIndex
from app.rules.ruleset import RuleSet
from app.statuses.compute import evaluate_fetched, fetch_records, load_risk_areas, store_statuses
from cache.entry import StatusEntry
from cache.status_cache import StatusCache

log = logging.getLogger(__name__)
T = TypeVar("T")

RECOMPUTE_CHUNK: Final = 10_000
# Pools smaller than this keep batch processing to one connection.
_POOL_FOR_WRITER: Final = 4
# Any constant works; it only has to be the same in every process.
_PROCESSING_LOCK: Final = 0x4843_0003


class BatchProcessor:
    """Runs batch processing as tasks of this process; `wait`/`drain` let callers (and tests) join them."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        ruleset: RuleSet,
        cache: StatusCache,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.pool = pool
        self.ruleset = ruleset
        self.cache = cache
        self.clock = clock
        self._lock = asyncio.Lock()
        self._tasks: dict[int, asyncio.Task[None]] = {}

    def submit(self, batch_id: int) -> asyncio.Task[None]:
        task = self._tasks.get(batch_id)
        if task is None or task.done():
            task = asyncio.get_running_loop().create_task(self._run(batch_id), name=f"batch-{batch_id}")
            self._tasks[batch_id] = task
            task.add_done_callback(lambda t: self._forget(batch_id, t))
        return task

    def _forget(self, batch_id: int, task: asyncio.Task[None]) -> None:
        if self._tasks.get(batch_id) is task:
            del self._tasks[batch_id]

    async def wait(self, batch_id: int) -> None:
        task = self._tasks.get(batch_id)
        if task is not None:
            await asyncio.shield(task)

    async def drain(self) -> None:
        while self._tasks:
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def close(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def _run(self, batch_id: int) -> None:
        try:
            await self.process(batch_id)
        except Exception:
            # Logged, not raised: the batch stays where it stopped and recovery picks it up again.
            log.exception("processing batch %d failed; it will be retried", batch_id)

    async def process(self, batch_id: int) -> None:
        async with self._lock, self.pool.acquire() as conn:
            await conn.execute("SELECT pg_advisory_lock($1)", _PROCESSING_LOCK)
            try:
                async with self._writer() as writer:
                    await process_batch(conn, batch_id, self.ruleset, self.cache, int(self.clock()), writer=writer)
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", _PROCESSING_LOCK)

    @contextlib.asynccontextmanager
    async def _writer(self) -> AsyncIterator[Conn | None]:
        """A second connection for storing statuses, if the pool leaves one for requests besides."""
        if self.pool.get_max_size() < _POOL_FOR_WRITER:
            yield None
            return
        async with self.pool.acquire() as writer:
            yield writer

    async def recover(self) -> list[int]:
        """Finish every batch left ``received`` or ``loading`` (by a crash, or by another process)."""
        rows = await self.pool.fetch("SELECT id FROM batches WHERE state IN ('received', 'loading') ORDER BY id")
        ids = [r["id"] for r in rows]
        for batch_id in ids:
            await self.process(batch_id)
        return ids

    async def sweep(self) -> int:
        """Recompute every status whose valid_until has passed; returns how many."""
        async with self._lock, self.pool.acquire() as conn:
            await conn.execute("SELECT pg_advisory_lock($1)", _PROCESSING_LOCK)
            try:
                return await sweep_expired(conn, self.ruleset, self.cache, int(self.clock()))
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", _PROCESSING_LOCK)


async def process_batch(
    conn: Conn, batch_id: int, ruleset: RuleSet, cache: StatusCache, now: int, *, writer: Conn | None = None
) -> None:
    """Take one batch as far as it can go; the caller holds the processing lock.

    ``writer``: a second connection for storing statuses while ``conn`` reads records (see
    `refresh_subjects`).
    """
    batch = await conn.fetchrow("SELECT kind, state, merged_at FROM batches WHERE id = $1", batch_id)
    if batch is None or batch["state"] in ("done", "failed"):
        return
    kind = batch["kind"]
    if batch["merged_at"] is None:
        try:
            async with conn.transaction():
                await conn.execute(
                    """UPDATE batches SET state = 'loading', started_at = coalesce(started_at, clock_timestamp())
                       WHERE id = $1""",
                    batch_id,
                )
                merged = await merge_batch(conn, batch_id, kind)
                await conn.execute(
                    """UPDATE batches SET accepted = $2, rejected = rejected + $3, duplicates = $4,
                           merged_at = clock_timestamp()
                       WHERE id = $1""",
                    batch_id,
                    merged.accepted,
                    merged.rejected,
                    merged.duplicates,
                )
        except asyncpg.PostgresError as exc:
            # The data itself cannot be merged (a constraint the row checks missed): fail it cleanly.
            log.error("batch %d cannot be merged: %s", batch_id, exc)
            await mark_failed(conn, batch_id, f"merge failed: {exc.__class__.__name__}: {exc}")
            return
    subjects = await affected_subjects(conn, batch_id, kind, ruleset.arrival_window)
    areas = await load_risk_areas(conn)
    await refresh_subjects(conn, subjects, ruleset, cache, now, areas, writer=writer)
    async with conn.transaction():
        await conn.execute(f"DELETE FROM staging_{kind} WHERE batch_id = $1", batch_id)
        await conn.execute(
            "UPDATE batches SET state = 'done', subjects = $2, finished_at = clock_timestamp() WHERE id = $1",
            batch_id,
            len(subjects),
        )


async def refresh_subjects(
    conn: Conn,
    subjects: Sequence[bytes],
    ruleset: RuleSet,
    cache: StatusCache,
    now: int,
    areas: RiskAreaIndex | None = None,
    *,
    writer: Conn | None = None,
) -> int:
    """Recompute statuses in chunks, store them, and write them to Redis (in bulk).

    Pipelined: while Python evaluates one chunk, Postgres reads the next chunk's records and stores the
    previous chunk's statuses, and Redis takes the previous chunk's entries. With one connection its
    reads and writes run in turn; given a ``writer`` connection, statuses are stored on it while
    ``conn`` reads, so Postgres works on two cores and neither waits for the other's round trips.
    Every step is awaited before returning; the first failure is raised.
    """
    if areas is None:
        areas = await load_risk_areas(conn)
    # In key order each chunk reads and writes a narrow range of every index's pages, instead of pages
    # all over tables larger than shared_buffers: for 200k of 1M subjects, 7.2 s of Postgres CPU
    # against 9-10.5 s in upload order (no difference while everything fits in shared_buffers).
    ordered = sorted(subjects)
    chunks = [ordered[start : start + RECOMPUTE_CHUNK] for start in range(0, len(ordered), RECOMPUTE_CHUNK)]
    if not chunks:
        return 0
    reads = _InOrder()
    writes = reads if writer is None else _InOrder()
    store_conn = conn if writer is None else writer
    pending: list[asyncio.Future[Any]] = []
    done = 0
    try:
        fetching = reads.run(fetch_records(conn, chunks[0], now))
        for index in range(len(chunks)):
            fetched = await fetching
            if index + 1 < len(chunks):
                fetching = reads.run(fetch_records(conn, chunks[index + 1], now))
            entries: dict[bytes, StatusEntry] = {}
            for start in range(0, len(fetched.subjects), _EVALUATE_SLICE):
                entries.update(evaluate_fetched(fetched, areas, ruleset, now, slice(start, start + _EVALUATE_SLICE)))
                await asyncio.sleep(0)  # lets queued Postgres and Redis work go out meanwhile
            for future in pending:
                if future.done():
                    future.result()  # a failed write stops the refresh now, not at the end
            pending = [f for f in pending if not f.done()]
            stored = writes.run(store_statuses(store_conn, entries, ruleset.version, now))
            pending.append(stored)
            pending.append(asyncio.ensure_future(_publish(stored, entries, cache)))
            done += len(entries)
        await asyncio.gather(*pending)
    finally:
        leftover = [*reads.cancel(), *(writes.cancel() if writes is not reads else []), *pending]
        for future in leftover:
            future.cancel()
        # Collected, so that no failure is left unretrieved (each is raised above, or by gather).
        await asyncio.gather(*leftover, return_exceptions=True)
    return done


# Subjects evaluated, or entries written to Redis, between chances for the event loop to answer
# Postgres: every round trip of a queued query waits for one. 2,000 at a time left Postgres idle for
# a quarter of a recompute (100k subjects 4.9 s); 250 at a time, 3.8 s.
_EVALUATE_SLICE: Final = 250
_PUBLISH_SLICE: Final = 1000


async def _publish(stored: asyncio.Future[None], entries: dict[bytes, StatusEntry], cache: StatusCache) -> None:
    """Refresh Redis once Postgres holds the statuses (it stays the source of truth), a slice at a time."""
    await stored
    items = list(entries.items())
    for start in range(0, len(items), _PUBLISH_SLICE):
        await cache.put_many(dict(items[start : start + _PUBLISH_SLICE]))


class _InOrder:
    """Runs coroutines on one connection one after another, each started as soon as the last ends."""

    def __init__(self) -> None:
        self._last: asyncio.Future[Any] | None = None
        self._all: list[asyncio.Future[Any]] = []

    def run(self, step: Awaitable[T]) -> asyncio.Future[T]:
        previous = self._last

        async def after() -> T:
            if previous is not None:
                await previous  # a failed step fails every later one
            return await step

        task: asyncio.Future[T] = asyncio.ensure_future(after())
        self._last = task
        self._all = [t for t in self._all if not t.done()]
        self._all.append(task)
        return task

    def cancel(self) -> list[asyncio.Future[Any]]:
        """Cancel what has not run yet; returns every step not yet collected."""
        for task in self._all:
            task.cancel()
        return self._all


async def sweep_expired(conn: Conn, ruleset: RuleSet, cache: StatusCache, now: int) -> int:
    """Recompute statuses whose valid_until is at or before ``now``, a chunk at a time."""
    areas = await load_risk_areas(conn)
    total = 0
    while True:
        rows = await conn.fetch(
            "SELECT pseudonym FROM statuses WHERE valid_until <= to_timestamp($1) ORDER BY valid_until LIMIT $2",
            now,
            RECOMPUTE_CHUNK,
        )
        if not rows:
            return total
        count = await refresh_subjects(conn, [bytes(r["pseudonym"]) for r in rows], ruleset, cache, now, areas)
        total += len(rows)
        if count < len(rows):
            # Statuses of people no longer in subjects: drop them, or they would be swept forever.
            await conn.execute(
                """DELETE FROM statuses st WHERE st.pseudonym = ANY($1::bytea[])
                   AND NOT EXISTS (SELECT 1 FROM subjects s WHERE s.pseudonym = st.pseudonym)""",
                [bytes(r["pseudonym"]) for r in rows],
            )
