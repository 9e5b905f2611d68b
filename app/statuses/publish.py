"""The one status-write path: computed statuses stored in Postgres, then published to Redis.

Every writer of statuses goes through `StatusPublisher`: batch processing, `healthcode load`, the
sweeper, overrides, `cache warm`, the demo, and the miss path (which recomputes a status that has
expired). Nothing else writes the `statuses` table (a test greps for it), and nothing else in app/
writes a status key in Redis (only `cache.status_writer.StatusWriter` does, for this module and for
the read-through cache's fills).

Statuses only move forward. Each carries a version (sql/004_status_versions.sql); the Postgres upsert
keeps a stored row whose (version, computed_at) is newer, and the Redis write is guarded the same way
(cache/status_writer.py). A status Postgres refused is not published to Redis: Redis must never hold
an older status than Postgres.

Redis failing does not fail a write: what Postgres stored but Redis did not take is recorded as owed
(status_refresh_owed, sql/009) and `repay` publishes it, newest first from Postgres, once Redis answers.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any, Final, TypeVar

from app.db import Conn
from app.rules.ruleset import RuleSet
from app.statuses.compute import Areas, Fetched, evaluate_fetched, fetch_records, load_risk_areas
from app.statuses.stored import STATUSES_QUERY, entry_from_row
from cache.connection import REDIS_ERRORS
from cache.entry import StatusEntry
from cache.status_writer import StatusWriter

log = logging.getLogger(__name__)

T = TypeVar("T")

# Called at named points of a write ("computed": evaluated, not yet stored; "stored": in Postgres, not
# yet in Redis; "loaded": a miss read Postgres, the fill is next), so that tests can force the
# interleavings that a version guard has to survive. Production passes none.
Pause = Callable[[str], Awaitable[None]]

_GUARD = "WHERE (statuses.version, statuses.computed_at) <= (excluded.version, excluded.computed_at)"
_ON_CONFLICT = f"""ON CONFLICT (pseudonym) DO UPDATE SET
    colour = excluded.colour, reasons = excluded.reasons, popup = excluded.popup,
    vaccine_doses = excluded.vaccine_doses, vaccine_complete = excluded.vaccine_complete,
    last_test_at = excluded.last_test_at, last_test_result = excluded.last_test_result,
    ruleset = excluded.ruleset, computed_at = excluded.computed_at, valid_until = excluded.valid_until,
    version = excluded.version
{_GUARD}
RETURNING pseudonym"""
_INSERT = """INSERT INTO statuses (pseudonym, colour, reasons, popup, vaccine_doses, vaccine_complete, last_test_at,
                      last_test_result, ruleset, computed_at, valid_until, version)"""
_UPSERT = f"""{_INSERT}
SELECT p, c, string_to_array(r, ','), pop, d, vc, to_timestamp(lt), ltr, $9, to_timestamp($10), to_timestamp(vu), v
FROM unnest($1::bytea[], $2::text[], $3::text[], $4::bool[], $5::int[], $6::bool[], $7::bigint[], $8::text[],
            $11::bigint[], $12::bigint[]) AS t(p, c, r, pop, d, vc, lt, ltr, vu, v)
{_ON_CONFLICT}"""
# Many statuses go by COPY into a temporary table and one upsert from it: asyncpg encodes a record per
# row far cheaper than eleven arrays (an isinstance check through abc per element: 15% of a
# recompute's Python time), and Postgres reads it faster than unnest. Measured per 20,000 statuses:
# 0.31-0.47 s through arrays, 0.25-0.3 s staged.
# JIT compiling costs ~15 ms a query here, more than the upsert of a chunk takes.
_STAGE = """SET LOCAL jit = off;
CREATE TEMPORARY TABLE IF NOT EXISTS status_stage (
    p bytea, c text, r text, pop boolean, d integer, vc boolean, lt bigint, ltr text, vu bigint, v bigint
) ON COMMIT DELETE ROWS;
DELETE FROM status_stage"""
_STAGE_COLUMNS = ("p", "c", "r", "pop", "d", "vc", "lt", "ltr", "vu", "v")
_UPSERT_STAGED = f"""{_INSERT}
SELECT p, c, string_to_array(r, ','), pop, d, vc, to_timestamp(lt), ltr, $1, to_timestamp($2), to_timestamp(vu), v
FROM status_stage
{_ON_CONFLICT}"""
# Statuses of people no longer in subjects (the sweeper finds them): dropped, or swept forever.
_DROP_ORPHANS = """DELETE FROM statuses st WHERE st.pseudonym = ANY($1::bytea[])
    AND NOT EXISTS (SELECT 1 FROM subjects s WHERE s.pseudonym = st.pseudonym)"""
_OWE = """INSERT INTO status_refresh_owed (pseudonym) SELECT unnest($1::bytea[])
    ON CONFLICT (pseudonym) DO NOTHING"""
# Taken a page at a time, locked so two processes repaying do not publish the same page twice.
_OWED_PAGE = "SELECT pseudonym FROM status_refresh_owed ORDER BY since LIMIT $1 FOR UPDATE SKIP LOCKED"
_PAID = "DELETE FROM status_refresh_owed WHERE pseudonym = ANY($1::bytea[])"
REPAY_PAGE: Final = 5000
# Below this many statuses the arrays' upsert is as fast and needs no temporary table.
_STAGED_FROM: Final = 100

RECOMPUTE_CHUNK: Final = 10_000
# Subjects evaluated, or entries written to Redis, between chances for the event loop to answer
# Postgres: every round trip of a queued query waits for one. 2,000 at a time left Postgres idle for
# a quarter of a recompute (100k subjects 4.9 s); 250 at a time, 3.8 s.
_EVALUATE_SLICE: Final = 250
# Chunks whose statuses may wait for Postgres or Redis at once: however far the stores fall behind,
# what a refresh holds stays bounded.
_IN_FLIGHT: Final = 8
_PUBLISH_SLICE: Final = 1000


async def _no_pause(point: str) -> None:
    return None


class StatusPublisher:
    """Computes statuses from records and publishes them: Postgres first, then Redis, never backwards.

    Counters: `refused_by_postgres` counts statuses not stored because a newer one was; the Redis
    side counts its own (`writer.refused`).
    """

    def __init__(self, writer: StatusWriter, ruleset: RuleSet, *, pause: Pause = _no_pause) -> None:
        self.writer = writer
        self.ruleset = ruleset
        self.pause = pause
        self.refused_by_postgres = 0
        self.owed = 0  # statuses recorded as owed to Redis, for metrics
        self._redis_failing = False

    async def recompute(
        self, conn: Conn, subjects: Sequence[bytes], now: int, areas: Areas | None = None
    ) -> dict[bytes, StatusEntry]:
        """Recompute a few subjects (a miss, an override, a chunk of the demo) and publish them.

        Returns the status now stored for each known subject: the one computed here, or, where
        Postgres held a newer one, that one.
        """
        fetched = await fetch_records(conn, subjects, now, areas)
        if not fetched.subjects:
            return {}
        entries = evaluate_fetched(fetched, self.ruleset, now)
        await self.pause("computed")
        stored = await self._store(conn, entries, now)
        newer = [p for p in entries if p not in stored]
        if newer:
            for row in await conn.fetch(STATUSES_QUERY, newer):
                entries[bytes(row["pseudonym"])] = entry_from_row(row)
        await self.pause("stored")
        await self._owe(conn, await self._publish({p: entries[p] for p in stored}))
        return entries

    async def refresh(
        self,
        conn: Conn,
        subjects: Sequence[bytes] | AsyncIterator[Sequence[bytes]],
        now: int,
        areas: Areas | None = None,
        *,
        store_conn: Conn | None = None,
    ) -> int:
        """Recompute many subjects in chunks and publish them; returns how many were computed.

        `subjects`: a list, or pages of them read on `conn` (a batch's, app.ingest.merge), each page
        read on `conn` in its turn between the chunks' reads.

        Pipelined: while Python evaluates one chunk, Postgres reads the next chunk's records and stores
        the previous chunk's statuses, and Redis takes the previous chunk's entries. With one connection
        its reads and writes run in turn; given a ``store_conn``, statuses are stored on it while
        ``conn`` reads, so Postgres works on two cores and neither waits for the other's round trips.
        Pages go through one pipeline: waiting for a page's last statuses before reading the next page
        took a quarter of a 1M-subject recompute. Every step is awaited before returning; the first
        failure is raised.
        """
        if areas is None:
            areas = await load_risk_areas(conn)
        chunks = _chunks_of(subjects)
        reads = _InOrder()
        writes = reads if store_conn is None else _InOrder()
        writer_conn = conn if store_conn is None else store_conn
        pending: list[asyncio.Future[Any]] = []
        owed: list[bytes] = []
        done = 0
        try:
            fetching = reads.run(_fetch_next(conn, chunks, now, areas))
            while (fetched := await fetching) is not None:
                fetching = reads.run(_fetch_next(conn, chunks, now, fetched.areas))
                entries: dict[bytes, StatusEntry] = {}
                for start in range(0, len(fetched.subjects), _EVALUATE_SLICE):
                    entries.update(evaluate_fetched(fetched, self.ruleset, now, slice(start, start + _EVALUATE_SLICE)))
                    await asyncio.sleep(0)  # lets queued Postgres and Redis work go out meanwhile
                for future in pending:
                    if future.done():
                        future.result()  # a failed write stops the refresh now, not at the end
                pending = [f for f in pending if not f.done()]
                while len(pending) >= 2 * _IN_FLIGHT:  # two futures a chunk: stored, then published
                    await pending[0]
                    pending = [f for f in pending if not f.done()]
                await self.pause("computed")
                stored = writes.run(self._store(writer_conn, entries, now))
                pending.append(stored)
                pending.append(asyncio.ensure_future(self._publish_when_stored(stored, entries, owed)))
                done += len(entries)
            await asyncio.gather(*pending)
        finally:
            leftover = [*reads.cancel(), *(writes.cancel() if writes is not reads else []), *pending]
            for future in leftover:
                future.cancel()
            # Collected, so that no failure is left unretrieved (each is raised above, or by gather).
            await asyncio.gather(*leftover, return_exceptions=True)
            await chunks.aclose()
        # Recorded once the pipeline is idle: its connections are free again.
        await self._owe(writer_conn, owed)
        return done

    async def publish_stored(self, entries: Mapping[bytes, StatusEntry]) -> int:
        """Publish statuses read from Postgres (cache warm); returns how many Redis took. Redis errors are
        raised: a warm that did not happen must not look done."""
        await self.pause("stored")
        return await self.writer.put_many(entries)

    async def repay(self, conn: Conn) -> int:
        """Publish what is owed to Redis, from what Postgres now holds; returns how many were repaid.

        Stops at the first Redis failure, leaving the rest owed (the page in hand stays owed too).
        """
        repaid = 0
        while True:
            async with conn.transaction():
                page = [bytes(r["pseudonym"]) for r in await conn.fetch(_OWED_PAGE, REPAY_PAGE)]
                if not page:
                    return repaid
                rows = await conn.fetch(STATUSES_QUERY, page)
                fresh = {bytes(r["pseudonym"]): entry_from_row(r) for r in rows if r["colour"] is not None}
                await self.writer.put_many(fresh)  # a Redis error rolls the page back: still owed
                await conn.execute(_PAID, page)
            repaid += len(page)
            if self._redis_failing:
                self._redis_failing = False
                log.warning("Redis takes statuses again; repaying what was owed")

    async def drop_orphans(self, conn: Conn, subjects: Sequence[bytes]) -> None:
        """Delete the stored statuses of any of `subjects` that are no longer registered."""
        await conn.execute(_DROP_ORPHANS, list(subjects))

    async def _publish_when_stored(
        self, stored: asyncio.Future[set[bytes]], entries: dict[bytes, StatusEntry], owed: list[bytes]
    ) -> None:
        """Refresh Redis once Postgres holds the statuses (it stays the source of truth), a slice at a time."""
        keep = await stored
        await self.pause("stored")
        items = [(p, e) for p, e in entries.items() if p in keep]
        for start in range(0, len(items), _PUBLISH_SLICE):
            owed += await self._publish(dict(items[start : start + _PUBLISH_SLICE]))

    async def _publish(self, entries: dict[bytes, StatusEntry]) -> list[bytes]:
        """Publish to Redis; returns the subjects Redis did not take because it failed (owed)."""
        try:
            await self.writer.put_many(entries)
        except REDIS_ERRORS as exc:
            if not self._redis_failing:
                self._redis_failing = True
                log.warning("Redis refused statuses (%s); they are owed and published when it is back", exc)
            return list(entries)
        return []

    async def _owe(self, conn: Conn, subjects: list[bytes]) -> None:
        if subjects:
            await conn.execute(_OWE, subjects)
            self.owed += len(subjects)

    async def _store(self, conn: Conn, entries: dict[bytes, StatusEntry], now: int) -> set[bytes]:
        """Upsert the statuses unless a newer one is stored; returns the subjects whose status was stored."""
        if not entries:
            return set()
        if len(entries) >= _STAGED_FROM:
            rows = await self._store_staged(conn, entries, now)
        else:
            values = list(entries.values())
            rows = await conn.fetch(
                _UPSERT,
                list(entries),
                [e.colour for e in values],
                [",".join(e.reasons) for e in values],
                [e.popup for e in values],
                [e.vaccine_doses for e in values],
                [e.vaccine_complete for e in values],
                [e.last_test_at for e in values],
                [e.last_test_result for e in values],
                self.ruleset.version,
                now,
                [e.valid_until for e in values],
                [e.version for e in values],
            )
        stored = {bytes(r[0]) for r in rows}
        self.refused_by_postgres += len(entries) - len(stored)
        return stored

    async def _store_staged(self, conn: Conn, entries: dict[bytes, StatusEntry], now: int) -> list[Any]:
        records = [
            (
                p,
                e.colour,
                ",".join(e.reasons),
                e.popup,
                e.vaccine_doses,
                e.vaccine_complete,
                e.last_test_at,
                e.last_test_result,
                e.valid_until,
                e.version,
            )
            for p, e in entries.items()
        ]
        async with conn.transaction():
            # Emptied first: inside a caller's transaction, ON COMMIT has not emptied it yet.
            await conn.execute(_STAGE)
            await conn.copy_records_to_table("status_stage", records=records, columns=_STAGE_COLUMNS)
            return await conn.fetch(_UPSERT_STAGED, self.ruleset.version, now)


async def _chunks_of(subjects: Sequence[bytes] | AsyncIterator[Sequence[bytes]]) -> AsyncGenerator[list[bytes]]:
    """The subjects a chunk at a time, each page in key order; a page is read when its first chunk is due."""
    if isinstance(subjects, Sequence):
        for chunk in _sorted_chunks(subjects):
            yield chunk
        return
    async for page in subjects:
        for chunk in _sorted_chunks(page):
            yield chunk


def _sorted_chunks(page: Sequence[bytes]) -> list[list[bytes]]:
    """In key order each chunk reads and writes a narrow range of every index's pages, instead of pages
    all over tables larger than shared_buffers: for 200k of 1M subjects, 7.2 s of Postgres CPU against
    9-10.5 s in upload order (no difference while everything fits in shared_buffers)."""
    ordered = sorted(page)
    return [ordered[start : start + RECOMPUTE_CHUNK] for start in range(0, len(ordered), RECOMPUTE_CHUNK)]


async def _fetch_next(conn: Conn, chunks: AsyncGenerator[list[bytes]], now: int, areas: Areas) -> Fetched | None:
    """The next chunk's records, None after the last; reading the next page (on `conn`) when one is due."""
    chunk = await anext(chunks, None)
    return None if chunk is None else await fetch_records(conn, chunk, now, areas)


class _InOrder:
    """Runs coroutines on one connection one after another, each started as soon as the last ends."""

    def __init__(self) -> None:
        self._last: asyncio.Future[Any] | None = None
        self._all: list[tuple[asyncio.Future[Any], Coroutine[Any, Any, Any]]] = []

    def run(self, step: Coroutine[Any, Any, T]) -> asyncio.Future[T]:
        previous = self._last

        async def after() -> T:
            if previous is not None:
                await previous  # a failed step fails every later one
            return await step

        task: asyncio.Future[T] = asyncio.ensure_future(after())
        self._last = task
        self._all = [(t, s) for t, s in self._all if not t.done()]
        self._all.append((task, step))
        return task

    def cancel(self) -> list[asyncio.Future[Any]]:
        """Cancel what has not run yet; returns every step not yet collected."""
        for task, step in self._all:
            task.cancel()
            # A step whose turn never came is closed here: its wrapper stops at the cancelled wait for
            # the step before it, and an unawaited coroutine would be reported at garbage collection.
            if inspect.getcoroutinestate(step) == inspect.CORO_CREATED:
                step.close()
        return [task for task, _ in self._all]
