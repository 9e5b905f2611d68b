"""Races between status writers, forced into their bad interleaving, against the real servers.

Each test holds one writer at a named point of the write path (a `Gate` passed as the publisher's
or the batch processor's pause) while another writer, on another connection or in another process,
runs to completion; then releases it. The final Postgres row and Redis entry must be the newest
computation, and a batch must be merged exactly once. Without the version guards (Postgres upsert,
Redis script) or the batch row lock, each of these tests fails.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from redis.asyncio import Redis

from app.identity import parse_identity, pseudonym
from app.ingest.kinds import KINDS
from app.ingest.process import BatchProcessor, process_batch
from app.ingest.upload import receive_batch
from app.rules.ruleset import load_ruleset
from app.settings import Settings
from app.statuses.loader import StatusLoader
from app.statuses.overrides import override_status
from app.statuses.publish import Pause, StatusPublisher
from app.statuses.sweep import sweep_expired
from app.statuses.warm import warm_cache
from cache.entry import StatusEntry, unpack
from cache.keys import status_field
from cache.status_cache import StatusCache
from cache.status_writer import StatusWriter
from tests.test_ingest_helpers import ago, csv_body, number

pytestmark = pytest.mark.slow

RULESET = load_ruleset()
TESTS = "id_number,sampled_at,result,lab"
PERSON = number(1)


class Gate:
    """A pause that holds the first arrival at `point` until released."""

    def __init__(self, point: str) -> None:
        self.point = point
        self.reached = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, point: str) -> None:
        if point == self.point and not self.reached.is_set():
            self.reached.set()
            await self.release.wait()


@pytest.fixture
async def pool(settings: Settings, db: asyncpg.Connection) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=4)
    try:
        yield pool
    finally:
        await pool.close()


def subject_of(settings: Settings) -> bytes:
    return pseudonym(parse_identity("resident", PERSON), settings.pepper)


def publisher(redis: Redis, pause: Pause | None = None) -> StatusPublisher:
    writer = StatusWriter(redis)
    return StatusPublisher(writer, RULESET) if pause is None else StatusPublisher(writer, RULESET, pause=pause)


async def stage(conn: asyncpg.Connection, settings: Settings, result: str, hours_ago: float) -> int:
    """A test result for PERSON, staged (received) but not yet processed."""

    async def body() -> AsyncIterator[bytes]:
        yield csv_body(TESTS, f"{PERSON},{ago(hours=hours_ago)},{result},lab-1")

    received = await receive_batch(
        conn,
        client_id=1,
        kind=KINDS["test"],
        fmt="csv",
        body=body(),
        key=None,
        pepper=settings.pepper,
        ruleset=RULESET,
        now=datetime.now(UTC),
        max_bytes=1 << 20,
    )
    return received.batch_id


async def load(conn: asyncpg.Connection, settings: Settings, redis: Redis, result: str, hours_ago: float) -> None:
    """A test result for PERSON, processed to the end in this process."""
    batch_id = await stage(conn, settings, result, hours_ago)
    await process_batch(conn, batch_id, publisher(redis), int(datetime.now(UTC).timestamp()))


async def in_postgres(conn: asyncpg.Connection, subject: bytes) -> tuple[str, int]:
    row = await conn.fetchrow("SELECT colour, version FROM statuses WHERE pseudonym = $1", subject)
    assert row is not None
    return row["colour"], row["version"]


async def in_redis(redis: Redis, subject: bytes) -> StatusEntry:
    raw = await redis.hget(*status_field(subject))
    assert isinstance(raw, bytes)
    return unpack(raw)


async def assert_newest_everywhere(conn: asyncpg.Connection, redis: Redis, subject: bytes, colour: str) -> None:
    stored = await in_postgres(conn, subject)
    cached = await in_redis(redis, subject)
    assert stored[0] == colour
    assert (cached.colour, cached.version) == stored


def environment(settings: Settings) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "HEALTHCODE_PEPPER": settings.pepper.hex(),
        "HEALTHCODE_HANDLE_KEY": settings.handle_key.hex(),
        "HEALTHCODE_KEYS_DIR": str(settings.keys_dir),
    }


async def run_python(settings: Settings, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        env=environment(settings),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )


async def finished(process: asyncio.subprocess.Process) -> None:
    output, _ = await process.communicate()
    assert process.returncode == 0, output.decode()


async def test_cache_warm_cannot_put_back_a_status_a_batch_replaced(
    settings: Settings, db: asyncpg.Connection, redis: Redis, pool: asyncpg.Pool
) -> None:
    subject = subject_of(settings)
    await load(db, settings, redis, "negative", hours_ago=2)
    assert (await in_redis(redis, subject)).colour == "green"

    gate = Gate("stored")  # warm has read the green page and is about to write it to Redis
    async with pool.acquire() as warm_conn:
        warming = asyncio.create_task(warm_cache(warm_conn, publisher(redis, gate)))
        await gate.reached.wait()
        await load(db, settings, redis, "positive", hours_ago=1)  # the batch turns the person red
        gate.release.set()
        assert await warming == 0  # Redis already held the newer status

    await assert_newest_everywhere(db, redis, subject, "red")


async def test_two_batches_from_two_processes_leave_the_newest_status(
    settings: Settings, db: asyncpg.Connection, redis: Redis, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    subject = subject_of(settings)
    older = await stage(db, settings, "negative", hours_ago=2)
    newer_file = tmp_path / "positive.csv"
    newer_file.write_bytes(csv_body(TESTS, f"{PERSON},{ago(hours=1)},positive,lab-2"))

    gate = Gate("computed")  # the older batch computed green and has not stored it yet
    processing = asyncio.create_task(BatchProcessor(pool, publisher(redis, gate)).process(older))
    await gate.reached.wait()
    # Another process loads the positive result to the end: merged, recomputed red, published.
    await finished(await run_python(settings, "-m", "app.cli", "load", "--kind", "test", str(newer_file)))
    gate.release.set()
    await processing

    await assert_newest_everywhere(db, redis, subject, "red")
    batches = await db.fetch("SELECT state, accepted, duplicates FROM batches ORDER BY id")
    assert [tuple(b) for b in batches] == [("done", 1, 0), ("done", 1, 0)]


async def test_a_miss_cannot_fill_redis_with_what_a_recompute_replaced(
    settings: Settings, db: asyncpg.Connection, redis: Redis, pool: asyncpg.Pool
) -> None:
    subject = subject_of(settings)
    await load(db, settings, redis, "negative", hours_ago=2)
    await redis.flushdb()  # the next look-up misses

    gate = Gate("loaded")  # the miss read green from Postgres; the fill is next
    writer = StatusWriter(redis)
    loader = StatusLoader(pool, StatusPublisher(writer, RULESET, pause=gate))
    cache = StatusCache(redis, loader.load, writer=writer)
    reading = asyncio.create_task(cache.get(subject))
    await gate.reached.wait()
    await load(db, settings, redis, "positive", hours_ago=1)
    gate.release.set()
    answered = await reading
    await cache.drain()

    assert answered is not None and answered.colour == "green"  # that reader asked first
    await assert_newest_everywhere(db, redis, subject, "red")
    assert writer.refused == 1


async def test_the_sweeper_cannot_undo_an_override(
    settings: Settings, db: asyncpg.Connection, redis: Redis, pool: asyncpg.Pool
) -> None:
    subject = subject_of(settings)
    await load(db, settings, redis, "negative", hours_ago=2)
    # Time passed: the stored status has expired, so the sweeper recomputes it.
    await db.execute("UPDATE statuses SET valid_until = now() - interval '1 second' WHERE pseudonym = $1", subject)

    gate = Gate("computed")  # the sweeper computed green from the records and has not stored it
    now = int(datetime.now(UTC).timestamp())
    async with pool.acquire() as sweep_conn:
        sweeping = asyncio.create_task(sweep_expired(sweep_conn, publisher(redis, gate), now))
        await gate.reached.wait()
        await override_status(
            db,
            subject,
            colour="red",
            reason="confirmed by the district CDC",
            expires_at=datetime.now(UTC) + timedelta(days=1),
            actor="cdc",
            publisher=publisher(redis),
            now=now,
        )
        gate.release.set()
        assert await sweeping == 1

    await assert_newest_everywhere(db, redis, subject, "red")
    assert (await in_redis(redis, subject)).reasons == ("override",)


async def test_a_batch_raced_by_two_processes_is_merged_once(
    settings: Settings, db: asyncpg.Connection, redis: Redis, pool: asyncpg.Pool
) -> None:
    subject = subject_of(settings)
    batch_id = await stage(db, settings, "positive", hours_ago=1)

    gate = Gate("merged")  # this process merged the batch; its transaction has not committed
    async with pool.acquire() as conn:
        now = int(datetime.now(UTC).timestamp())
        loading = asyncio.create_task(process_batch(conn, batch_id, publisher(redis), now, pause=gate))
        await gate.reached.wait()
        recovery = await run_python(settings, "-c", RECOVERY_SCRIPT)
        # The other process has found the batch and waits for this one's lock on it.
        async with asyncio.timeout(30):
            while not await db.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
            ):
                assert recovery.returncode is None, "the recovery process ended before reaching the batch"
        gate.release.set()
        await loading
        await finished(recovery)

    batch = await db.fetchrow(
        "SELECT state, accepted, rejected, duplicates, subjects FROM batches WHERE id = $1", batch_id
    )
    assert batch is not None
    assert tuple(batch) == ("done", 1, 0, 0, 1)
    assert await db.fetchval("SELECT count(*) FROM nucleic_tests") == 1
    await assert_newest_everywhere(db, redis, subject, "red")


# The server's start-up recovery, as a process of its own: every batch left received or loading, finished.
RECOVERY_SCRIPT = """
import asyncio

import asyncpg

from app.ingest.process import BatchProcessor
from app.rules.ruleset import load_ruleset
from app.settings import Settings
from app.statuses.publish import StatusPublisher
from cache.connection import open_redis
from cache.status_writer import StatusWriter


async def main() -> None:
    settings = Settings.from_env()
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=2)
    redis = open_redis(settings.redis_url)
    try:
        processor = BatchProcessor(pool, StatusPublisher(StatusWriter(redis), load_ruleset(settings.ruleset)))
        print("recovered", await processor.recover())
    finally:
        await redis.aclose()
        await pool.close()


asyncio.run(main())
"""
