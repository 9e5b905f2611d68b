"""Batch processing at scale and under failure: bounded chunks, paged subjects, bounded attempts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

import asyncpg
import pytest
from redis.asyncio import Redis

from app.ingest import process
from app.ingest.kinds import KINDS
from app.ingest.merge import affected_subjects
from app.ingest.process import _MERGE_LOCK, _WORKER_LOCKS, BatchProcessor
from app.ingest.upload import receive_batch
from app.rules.ruleset import load_ruleset
from app.settings import Settings
from app.statuses.publish import StatusPublisher
from cache.status_writer import StatusWriter
from tests.support import cached_statuses
from tests.test_ingest_helpers import ago, csv_body, number

RULESET = load_ruleset()
TESTS = "id_number,sampled_at,result,lab"
Processor = Callable[..., Awaitable[BatchProcessor]]


async def _one_piece(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def stage(db: asyncpg.Connection, settings: Settings, kind: str, data: bytes) -> int:
    received = await receive_batch(
        db,
        client_id=1,
        kind=KINDS[kind],
        fmt="csv",
        body=_one_piece(data),
        key=None,
        pepper=settings.pepper,
        ruleset=RULESET,
        now=datetime.now(UTC),
        max_bytes=1 << 22,
    )
    return received.batch_id


def results_for(people: range, result: str = "negative") -> bytes:
    return csv_body(TESTS, *(f"{number(i)},{ago(hours=3)},{result},lab-a" for i in people))


@pytest.fixture
async def make_processor(settings: Settings, db: asyncpg.Connection, redis: Redis) -> AsyncIterator[Processor]:
    pools: list[asyncpg.Pool] = []
    clients: list[Redis] = []

    async def make(*, command_timeout: float = 30, redis_url: str | None = None, **kw: int) -> BatchProcessor:
        pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=2, command_timeout=command_timeout)
        pools.append(pool)
        client = redis if redis_url is None else Redis.from_url(redis_url, socket_connect_timeout=1)
        if redis_url is not None:
            clients.append(client)
        return BatchProcessor(pool, StatusPublisher(StatusWriter(client), RULESET), time.time, **kw)

    try:
        yield make
    finally:
        for pool in pools:
            await pool.close()
        for client in clients:
            await client.aclose()


_COUNT_ROWS = """
CREATE TABLE statement_rows (tbl text NOT NULL, rows bigint NOT NULL, at timestamptz DEFAULT clock_timestamp());
CREATE FUNCTION count_statement_rows() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO statement_rows (tbl, rows) SELECT TG_TABLE_NAME, count(*) FROM new_rows;
    RETURN NULL;
END $$;
CREATE TRIGGER nucleic_tests_statement_rows AFTER INSERT ON nucleic_tests
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION count_statement_rows();
CREATE TRIGGER statuses_statement_rows AFTER INSERT ON statuses
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION count_statement_rows();
"""
_UNCOUNT_ROWS = """
DROP TRIGGER IF EXISTS nucleic_tests_statement_rows ON nucleic_tests;
DROP TRIGGER IF EXISTS statuses_statement_rows ON statuses;
DROP FUNCTION IF EXISTS count_statement_rows();
DROP TABLE IF EXISTS statement_rows;
"""


@pytest.fixture
async def statement_rows(db: asyncpg.Connection) -> AsyncIterator[Callable[[str], Awaitable[list[int]]]]:
    """Rows written by each statement into a table, as Postgres itself counts them (a trigger)."""
    await db.execute(_UNCOUNT_ROWS + _COUNT_ROWS)

    async def rows_of(table: str) -> list[int]:
        return [r["rows"] for r in await db.fetch("SELECT rows FROM statement_rows WHERE tbl = $1 ORDER BY at", table)]

    try:
        yield rows_of
    finally:
        await db.execute(_UNCOUNT_ROWS)


async def test_a_batch_is_merged_and_recomputed_in_bounded_chunks(
    settings: Settings,
    db: asyncpg.Connection,
    redis: Redis,
    make_processor: Processor,
    statement_rows: Callable[[str], Awaitable[list[int]]],
) -> None:
    """No statement grows with the batch: merged 100 staged rows at a time, statuses stored in pages."""
    processor = await make_processor(chunk_rows=100, page_rows=120)
    batch_id = await stage(db, settings, "test", results_for(range(250)))
    await processor.process(batch_id)
    batch = await db.fetchrow("SELECT state, accepted, duplicates, subjects FROM batches WHERE id = $1", batch_id)
    assert batch is not None
    assert tuple(batch) == ("done", 250, 0, 250)
    assert await statement_rows("nucleic_tests") == [100, 100, 50]
    assert max(await statement_rows("statuses")) <= 120
    assert sum(await statement_rows("statuses")) == await db.fetchval("SELECT count(*) FROM statuses") == 250
    assert await cached_statuses(redis) == 250
    # One natural key in two chunks: the first row is kept, the later one counted a duplicate, as one
    # statement over the whole batch would have it.
    at = ago(hours=2)
    first = [f"{number(i)},{at},negative,lab-b" for i in range(1000, 1150)]
    later = [f"{number(i)},{at},positive,lab-b" for i in range(1000, 1050)]
    batch_id = await stage(db, settings, "test", csv_body(TESTS, *first, *later))
    await processor.process(batch_id)
    batch = await db.fetchrow("SELECT accepted, duplicates FROM batches WHERE id = $1", batch_id)
    assert batch is not None and tuple(batch) == (150, 50)
    assert await db.fetchval("SELECT count(*) FROM nucleic_tests WHERE result = 'positive'") == 0


async def test_affected_subjects_come_in_pages(
    settings: Settings, db: asyncpg.Connection, make_processor: Processor
) -> None:
    """The subjects of a batch (and the arrivals from a batch's risk areas) are listed a page at a time."""
    processor = await make_processor()
    travel = csv_body(
        "id_number,area_code,arrived_at,mode", *(f"{number(i)},420102,{ago(hours=5)},rail" for i in range(250))
    )
    travel_id = await stage(db, settings, "travel", travel)
    pages = [page async for page in affected_subjects(db, travel_id, "travel", 86400, page_rows=100)]
    assert [len(p) for p in pages] == [100, 100, 50]
    assert len({p for page in pages for p in page}) == 250
    await processor.process(travel_id)
    areas = await stage(db, settings, "risk_area", csv_body("area_code,level,valid_from", f"420100,high,{ago(days=2)}"))
    window = RULESET.arrival_window
    pages = [page async for page in affected_subjects(db, areas, "risk_area", window, page_rows=100)]
    assert [len(p) for p in pages] == [100, 100, 50]
    flat = [p for page in pages for p in page]
    assert flat == sorted(set(flat))  # in key order, each once
    processor = await make_processor(page_rows=100)
    await processor.process(areas)
    assert await db.fetchval("SELECT subjects FROM batches WHERE id = $1", areas) == 250
    assert await db.fetchval("SELECT count(*) FROM statuses WHERE colour = 'yellow'") == 250


@pytest.mark.slow
async def test_a_batch_that_keeps_timing_out_fails_after_bounded_attempts(
    settings: Settings, db: asyncpg.Connection, make_processor: Processor
) -> None:
    """A statement timeout (TimeoutError, not a Postgres error) is an attempt; the last one fails the
    batch with its reason, and recovery stops picking it up."""
    processor = await make_processor(command_timeout=0.3, max_attempts=2)
    batch_id = await stage(db, settings, "test", results_for(range(5)))
    # Another session holds the merge lock: every merge waits on it past the statement timeout.
    await db.execute("SELECT pg_advisory_lock($1)", _MERGE_LOCK)
    try:
        assert await processor.recover() == [batch_id]
        row = await db.fetchrow("SELECT state, attempts, error FROM batches WHERE id = $1", batch_id)
        assert row is not None
        assert tuple(row) == ("received", 1, "attempt 1 of 2 failed: TimeoutError: ")
        assert await processor.recover() == [batch_id]
    finally:
        await db.execute("SELECT pg_advisory_unlock($1)", _MERGE_LOCK)
    row = await db.fetchrow("SELECT state, attempts, error, merged_at FROM batches WHERE id = $1", batch_id)
    assert row is not None
    assert (row["state"], row["attempts"], row["merged_at"]) == ("failed", 2, None)
    assert row["error"] == "failed 2 times; nothing of it was merged; last: TimeoutError: "
    assert await db.fetchval("SELECT count(*) FROM staging_test") == 0
    assert await processor.recover() == []


async def test_a_batch_whose_statuses_redis_cannot_take_is_done_and_owes_them(
    settings: Settings, db: asyncpg.Connection, make_processor: Processor
) -> None:
    """Redis unreachable while a merged batch is recomputed: Postgres holds the records and the statuses,
    the batch is done at the first attempt, and Redis is owed the statuses (published when it is back)."""
    processor = await make_processor(redis_url="redis://127.0.0.1:1/0", max_attempts=2)
    batch_id = await stage(db, settings, "test", results_for(range(5)))
    assert await processor.recover() == [batch_id]
    row = await db.fetchrow("SELECT state, attempts, error, accepted, subjects FROM batches WHERE id = $1", batch_id)
    assert row is not None
    assert (row["state"], row["attempts"], row["error"], row["accepted"], row["subjects"]) == ("done", 1, None, 5, 5)
    assert await db.fetchval("SELECT count(*) FROM statuses") == 5
    assert await db.fetchval("SELECT count(*) FROM status_refresh_owed") == 5
    assert await processor.recover() == []


async def test_a_process_racing_the_batchs_worker_does_not_use_up_its_attempts(
    settings: Settings, db: asyncpg.Connection, make_processor: Processor
) -> None:
    """While one process works on a batch (it holds the worker lock), another's failing attempts at the
    same batch (a recovery racing a long batch) are not counted: they could fail a batch that is fine."""
    processor = await make_processor(command_timeout=0.3, max_attempts=1)
    batch_id = await stage(db, settings, "test", results_for(range(3)))
    lock = (_WORKER_LOCKS, batch_id)
    # Every attempt fails: another session holds the merge lock past the statement timeout.
    await db.execute("SELECT pg_advisory_lock($1)", _MERGE_LOCK)
    await db.execute("SELECT pg_advisory_lock($1, $2)", *lock)
    try:
        for _ in range(3):
            await processor.recover()
        row = await db.fetchrow("SELECT state, attempts, error FROM batches WHERE id = $1", batch_id)
        assert row is not None and tuple(row) == ("received", 0, None)
    finally:
        await db.execute("SELECT pg_advisory_unlock($1, $2)", *lock)
    try:
        await processor.recover()  # now this process is the worker: its failure counts, and is the last
    finally:
        await db.execute("SELECT pg_advisory_unlock($1)", _MERGE_LOCK)
    row = await db.fetchrow("SELECT state, attempts FROM batches WHERE id = $1", batch_id)
    assert row is not None and tuple(row) == ("failed", 1)


@pytest.mark.slow
async def test_a_failed_batch_is_tried_again_without_waiting_for_recovery(
    settings: Settings, db: asyncpg.Connection, make_processor: Processor
) -> None:
    """After a failed attempt the processor tries the batch again after a short pause (doubling), so a
    brief outage delays a batch by seconds, not until the next recovery round a minute later."""
    processor = await make_processor(command_timeout=0.3, max_attempts=3)
    batch_id = await stage(db, settings, "test", results_for(range(4)))
    await db.execute("SELECT pg_advisory_lock($1)", _MERGE_LOCK)  # the first attempt times out on it
    try:
        processor.submit(batch_id)
        async with asyncio.timeout(10):
            while True:  # until the first attempt has failed and said so on the batch
                if await db.fetchval("SELECT error FROM batches WHERE id = $1", batch_id) is not None:
                    break
                await asyncio.sleep(0.01)  # polling another task's progress in Postgres, bounded
    finally:
        await db.execute("SELECT pg_advisory_unlock($1)", _MERGE_LOCK)
    await processor.wait(batch_id)
    row = await db.fetchrow("SELECT state, attempts, accepted FROM batches WHERE id = $1", batch_id)
    assert row is not None and tuple(row) == ("done", 2, 4)


async def test_a_large_merge_has_its_tables_analysed_before_the_recompute(
    settings: Settings, db: asyncpg.Connection, make_processor: Processor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Statistics from before an upload of many rows make the planner read whole tables for each chunk."""
    monkeypatch.setattr(process, "ANALYZE_FROM", 200)
    processor = await make_processor()
    query = """SELECT relname, analyze_count FROM pg_stat_user_tables
               WHERE relname IN ('subjects', 'nucleic_tests', 'staging_test')"""

    async def analysed() -> dict[str, int]:  # manual ANALYZE only: autovacuum's are counted apart
        return {r["relname"]: r["analyze_count"] for r in await db.fetch(query)}

    before = await analysed()
    await processor.process(await stage(db, settings, "test", results_for(range(150))))
    assert await analysed() == before  # below the threshold: left to autovacuum

    await processor.process(await stage(db, settings, "test", results_for(range(150, 400))))
    after = await analysed()
    assert {table: after[table] - before.get(table, 0) for table in after} == {
        "subjects": 1,
        "nucleic_tests": 1,
        "staging_test": 1,
    }
