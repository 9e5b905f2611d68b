"""Processing received batches: merge, recompute the people they touch, refresh the cache.

Steps, each safe to repeat after a crash:

1. ``received`` -> ``loading``: the merge into the record tables runs in one transaction that also
   stores the counts, bumps the revision of every subject it touches and sets ``merged_at``. The
   batch row is locked first and ``merged_at`` checked under the lock, so two processes that pick up
   one batch (a command-line load and a server's recovery) merge it once. A crash before the commit
   leaves nothing merged. Inside the transaction the merge runs a range of staged rows per
   statement (app.ingest.merge), so no statement timeout grows with the batch.
2. With ``merged_at`` set, the touched subjects (read from staging a page at a time) are recomputed
   and published through the status write path, a part (a range of pseudonyms, written by the merge) at
   a time; several processes share a batch's parts (app.ingest.parts). Recomputing twice gives the
   same statuses.
3. ``done``, once every part is: staging rows deleted (by ranges), in one transaction.

Batches may be processed by many processes at once: merges take one transaction-level advisory lock
(so they cannot deadlock on the subjects they bump), and the write path's version guard keeps the
newest status whichever recompute finishes last. A batch that cannot be merged is marked ``failed``
with nothing applied, and can be sent again. Any other failure (a timeout, Redis, a bug) is an
attempt, counted on the batch: the last allowed attempt that fails marks it ``failed`` with its error,
so no batch is retried forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Final

import asyncpg

from app.db import UNAVAILABLE_ERRORS, Conn
from app.ingest.corrections import RECORD_TABLES
from app.ingest.merge import MERGE_CHUNK, SUBJECT_PAGE, affected_subjects, merge_batch
from app.ingest.parts import PART_ROWS, recompute_parts, write_parts
from app.ingest.store import delete_staging, mark_failed
from app.statuses.compute import load_risk_areas
from app.statuses.publish import Pause, StatusPublisher
from app.statuses.sweep import sweep_expired

log = logging.getLogger(__name__)

# Pools smaller than this keep batch processing to one connection.
_POOL_FOR_WRITER: Final = 4
# Any constant works; it only has to be the same in every process.
_MERGE_LOCK: Final = 0x4843_0003
# Staged rows from which a merge analyses its staging table first, and records it must add or change
# before the tables it grew are analysed (`_analyze`).
ANALYZE_FROM: Final = 50_000
# Attempts at a batch before it is marked failed: enough to ride out a restart or a short outage.
MAX_ATTEMPTS: Final = 5
# A batch whose processing failed is tried again after these pauses (doubling), not only at recovery.
RETRY_FIRST_SECONDS: Final = 1.0
RETRY_MAX_SECONDS: Final = 30.0
# Advisory lock namespace (with a batch id) held by the process whose attempts a batch counts.
_WORKER_LOCKS: Final = 0x4843_0005


async def _no_pause(point: str) -> None:
    return None


class BatchProcessor:
    """Runs batch processing as tasks of this process; `wait`/`drain` let callers (and tests) join them."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        publisher: StatusPublisher,
        clock: Callable[[], float] = time.time,
        *,
        max_attempts: int = MAX_ATTEMPTS,
        chunk_rows: int = MERGE_CHUNK,
        page_rows: int = SUBJECT_PAGE,
        part_rows: int = PART_ROWS,
    ) -> None:
        self.pool = pool
        self.publisher = publisher
        self.clock = clock
        self.max_attempts = max_attempts
        self.chunk_rows = chunk_rows
        self.page_rows = page_rows
        self.part_rows = part_rows
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
        """Process the batch; while it is unfinished after a failure, try again after a pause that grows.

        A failure noted on the batch counts as an attempt, and the last allowed one marks it failed, so
        this ends; a failure that cannot be noted (Postgres down) is tried again, never in a tight loop.
        """
        pause = RETRY_FIRST_SECONDS
        while True:
            try:
                await self.process(batch_id)
            except UNAVAILABLE_ERRORS as exc:
                log.warning("processing batch %d: Postgres unavailable (%s); trying again", batch_id, exc)
            except Exception:
                log.exception("processing batch %d failed; trying again in %.0f s", batch_id, pause)
            if not await self._unfinished(batch_id):
                return
            await asyncio.sleep(pause)
            pause = min(pause * 2, RETRY_MAX_SECONDS)

    async def _unfinished(self, batch_id: int) -> bool:
        try:
            state = await self.pool.fetchval("SELECT state FROM batches WHERE id = $1", batch_id)
        except UNAVAILABLE_ERRORS:
            return True  # cannot tell: Postgres is down, so the batch cannot have moved on
        return state in ("received", "loading")

    async def process(self, batch_id: int, *, pause: Pause = _no_pause) -> None:
        # One batch at a time in this process, so batch work leaves the pool's other connections to
        # requests; other processes may work on other batches (or this one) meanwhile.
        async with self._lock, self.pool.acquire() as conn, self._store_conn() as store_conn:
            await process_batch(
                conn,
                batch_id,
                self.publisher,
                int(self.clock()),
                store_conn=store_conn,
                pause=pause,
                max_attempts=self.max_attempts,
                chunk_rows=self.chunk_rows,
                page_rows=self.page_rows,
                part_rows=self.part_rows,
            )

    @contextlib.asynccontextmanager
    async def _store_conn(self) -> AsyncIterator[Conn | None]:
        """A second connection for storing statuses, if the pool leaves one for requests besides."""
        if self.pool.get_max_size() < _POOL_FOR_WRITER:
            yield None
            return
        async with self.pool.acquire() as writer:
            yield writer

    async def recover(self) -> list[int]:
        """Try every batch left ``received`` or ``loading`` (by a crash, or by another process) once more.

        One batch failing does not hold up the others; each failure counts as an attempt at that batch.
        """
        rows = await self.pool.fetch("SELECT id FROM batches WHERE state IN ('received', 'loading') ORDER BY id")
        ids = [r["id"] for r in rows]
        for batch_id in ids:
            try:
                await self.process(batch_id)
            except Exception:
                log.exception("recovering batch %d failed", batch_id)
        return ids

    async def sweep(self) -> int:
        """Recompute every status whose valid_until has passed; returns how many."""
        async with self._lock, self.pool.acquire() as conn:
            return await sweep_expired(conn, self.publisher, int(self.clock()))


async def process_batch(
    conn: Conn,
    batch_id: int,
    publisher: StatusPublisher,
    now: int,
    *,
    store_conn: Conn | None = None,
    pause: Pause = _no_pause,
    max_attempts: int = MAX_ATTEMPTS,
    chunk_rows: int = MERGE_CHUNK,
    page_rows: int = SUBJECT_PAGE,
    part_rows: int = PART_ROWS,
) -> None:
    """Take one batch as far as it can go.

    ``store_conn``: a second connection for storing statuses while ``conn`` reads records (see
    `StatusPublisher.refresh`). ``pause`` is called at "merged" (inside the merge's transaction,
    before its commit), for tests that race two processes on one batch. Each call is an attempt;
    a failure of any kind is noted on the batch and raised, and the attempt ``max_attempts`` that
    fails (or any attempt after it) marks the batch failed with the last error.

    Only the process holding the batch's worker lock counts (and notes) attempts: another process that
    works on the batch meanwhile (a recovery racing a long batch) must not use them up. The lock is
    the session's, so a process that dies lets it go.
    """
    lock = (_WORKER_LOCKS, batch_id % (1 << 31))
    counted = bool(await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", *lock))
    try:
        await _attempt(
            conn, batch_id, publisher, now, store_conn, pause, max_attempts, chunk_rows, page_rows, part_rows, counted
        )
    finally:
        if counted:
            # A pooled connection also drops it when returned (asyncpg resets advisory locks).
            with contextlib.suppress(Exception):
                await conn.execute("SELECT pg_advisory_unlock($1, $2)", *lock)


async def _attempt(
    conn: Conn,
    batch_id: int,
    publisher: StatusPublisher,
    now: int,
    store_conn: Conn | None,
    pause: Pause,
    max_attempts: int,
    chunk_rows: int,
    page_rows: int,
    part_rows: int,
    counted: bool,
) -> None:
    if counted:
        query = """UPDATE batches SET attempts = attempts + 1 WHERE id = $1 AND state IN ('received', 'loading')
                   RETURNING kind, merged_at, attempts, error"""
    else:
        query = """SELECT kind, merged_at, attempts, error FROM batches
                   WHERE id = $1 AND state IN ('received', 'loading')"""
    batch = await conn.fetchrow(query, batch_id)
    if batch is None:
        return  # done, failed, or no such batch
    kind, attempt = batch["kind"], batch["attempts"]
    if counted and attempt > max_attempts:
        # An earlier attempt ended without noting it (the process died, or could not reach Postgres).
        await _give_up(conn, batch_id, max_attempts, batch["merged_at"] is not None, batch["error"])
        return
    merged = batch["merged_at"] is not None
    try:
        if not merged:
            try:
                if not await _merge_once(conn, batch_id, kind, pause, chunk_rows, part_rows):
                    return
            except asyncpg.PostgresError as exc:
                # The data itself cannot be merged (a constraint the row checks missed): fail it cleanly.
                log.error("batch %d cannot be merged: %s", batch_id, exc)
                await mark_failed(conn, batch_id, f"merge failed: {exc.__class__.__name__}: {exc}")
                return
            merged = True
        areas = await load_risk_areas(conn)

        async def recompute(lo: bytes, hi: bytes | None) -> int:
            listed = 0
            window = publisher.ruleset.arrival_window

            async def pages() -> AsyncIterator[list[bytes]]:
                nonlocal listed
                async for page in affected_subjects(conn, batch_id, kind, window, page_rows=page_rows, lo=lo, hi=hi):
                    listed += len(page)
                    yield page

            # One pipeline over every page: the next page is read while the last chunks are stored.
            await publisher.refresh(conn, pages(), now, areas, store_conn=store_conn)
            return listed

        subjects = await recompute_parts(conn, batch_id, recompute)
        async with conn.transaction():
            await delete_staging(conn, batch_id)
            # Only from loading: a process that finished this batch first has counted its subjects.
            await conn.execute(
                """UPDATE batches SET state = 'done', subjects = $2, finished_at = clock_timestamp()
                   WHERE id = $1 AND state = 'loading'""",
                batch_id,
                subjects,
            )
    except Exception as exc:
        if not counted:
            raise
        error = f"{exc.__class__.__name__}: {exc}"
        # Noted on a healthy connection only; if Postgres is what failed, the next attempt counts it.
        with contextlib.suppress(Exception):
            if attempt >= max_attempts:
                await _give_up(conn, batch_id, max_attempts, merged, error)
            else:
                await conn.execute(
                    "UPDATE batches SET error = $2 WHERE id = $1 AND state IN ('received', 'loading')",
                    batch_id,
                    f"attempt {attempt} of {max_attempts} failed: {error}"[:500],
                )
        raise


async def _give_up(conn: Conn, batch_id: int, max_attempts: int, merged: bool, error: str | None) -> None:
    last = error or "no error was recorded"
    if merged:
        # The records are stored; only statuses may lag until they expire or the batch is sent again.
        reason = f"merged, but recomputing statuses failed {max_attempts} times; last: {last}"
    else:
        reason = f"failed {max_attempts} times; nothing of it was merged; last: {last}"
    log.error("batch %d given up: %s", batch_id, reason)
    await mark_failed(conn, batch_id, reason)


async def _merge_once(conn: Conn, batch_id: int, kind: str, pause: Pause, chunk_rows: int, part_rows: int) -> bool:
    """Merge the batch unless another process has; False if it is done or failed meanwhile."""
    async with conn.transaction():
        # Checked again under the row lock: another process may have merged it since the first look.
        locked = await conn.fetchrow("SELECT state, merged_at FROM batches WHERE id = $1 FOR UPDATE", batch_id)
        assert locked is not None  # batches are never deleted
        if locked["state"] in ("done", "failed"):
            return False
        if locked["merged_at"] is not None:
            return True
        # Merges one at a time: each bumps the revisions of its subjects, and two merges bumping
        # overlapping subjects in different orders would deadlock.
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _MERGE_LOCK)
        await conn.execute(
            """UPDATE batches SET state = 'loading', started_at = coalesce(started_at, clock_timestamp())
               WHERE id = $1""",
            batch_id,
        )
        merged = await merge_batch(conn, batch_id, kind, chunk_rows=chunk_rows, analyze_from=ANALYZE_FROM)
        await conn.execute(
            """UPDATE batches SET accepted = $2, rejected = rejected + $3, duplicates = $4, corrected = $5,
                   retracted = $6, merged_at = clock_timestamp()
               WHERE id = $1""",
            batch_id,
            merged.accepted,
            merged.rejected,
            merged.duplicates,
            merged.corrected,
            merged.retracted,
        )
        await write_parts(conn, batch_id, kind, part_rows)
        await pause("merged")
    if merged.accepted + merged.corrected >= ANALYZE_FROM:
        await _analyze(conn, kind)
    return True


async def _analyze(conn: Conn, kind: str) -> None:
    """Fresh statistics for the tables a large merge grew, before its subjects are recomputed.

    Until autovacuum gets to them the planner still sees the tables as they were: after 1M test rows
    it joined a chunk's 10,000 keys by sorting the whole table (139 ms a chunk's read of tests, against
    30 ms once analysed; ANALYZE samples a bounded number of rows, 0.7 s here).
    """
    if kind == "population":
        tables: tuple[str, ...] = ("subjects",)
    elif kind in RECORD_TABLES:
        tables = ("subjects", RECORD_TABLES[kind].table)
    else:
        tables = ()  # risk areas: a table of a few thousand rows
    for table in tables:
        await conn.execute(f"ANALYZE {table}")
