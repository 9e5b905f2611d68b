"""`healthcode worker` processes: they share a large batch's recompute, and one killed mid-batch is
taken over by another without merging twice.

Each worker is a process this test starts. Status writes are held up by a table lock the test takes,
so a worker is caught in the middle of a part (holding its claim) at a moment the test chooses.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest
from redis.asyncio import Redis

from app.cli import main
from app.ingest.parts import _PART_LOCKS, MAX_PARTS, split
from app.ingest.worker import open_worker
from app.settings import Settings
from cache.keys import status_field
from tests.conftest import AppFactory
from tests.support import bearer
from tests.test_ingest_helpers import number, upload
from tests.test_ingest_process import results_for, stage
from tests.test_status_races import environment

PEOPLE = 400
PART_ROWS = 100  # four parts


async def until(check: Callable[[], Awaitable[bool]], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


@pytest.fixture
async def workers(settings: Settings) -> AsyncIterator[Callable[[], Awaitable[asyncio.subprocess.Process]]]:
    started: list[asyncio.subprocess.Process] = []

    async def start() -> asyncio.subprocess.Process:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "app.cli",
            "worker",
            "--poll-seconds",
            "0.05",
            "--part-rows",
            str(PART_ROWS),
            env=environment(settings),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        started.append(process)
        return process

    try:
        yield start
    finally:
        for process in started:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        for process in started:
            async with asyncio.timeout(20):
                await process.wait()


async def part_claims(db: asyncpg.Connection) -> int:
    return int(
        await db.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = $1 AND objsubid = 2 AND granted",
            _PART_LOCKS,
        )
    )


async def batch_state(db: asyncpg.Connection, batch_id: int) -> str:
    return str(await db.fetchval("SELECT state FROM batches WHERE id = $1", batch_id))


async def all_in_redis(redis: Redis, settings: Settings) -> None:
    from app.identity import Identity, pseudonym

    where = [status_field(pseudonym(Identity("resident", number(i)), settings.pepper)) for i in range(PEOPLE)]
    async with redis.pipeline(transaction=False) as pipe:
        for bucket, field in where:
            pipe.hget(bucket, field)
        assert all(v is not None for v in await pipe.execute())


def test_parts_cover_every_pseudonym_once() -> None:
    parts = split(4)
    assert [(p.lo, p.hi) for p in parts] == [
        (b"", b"\x40\x00"),
        (b"\x40\x00", b"\x80\x00"),
        (b"\x80\x00", b"\xc0\x00"),
        (b"\xc0\x00", None),
    ]
    assert len(split(1000)) == MAX_PARTS and split(0) == split(1)


@pytest.mark.slow
async def test_two_workers_share_the_parts_of_one_batch(
    settings: Settings,
    db: asyncpg.Connection,
    redis: Redis,
    workers: Callable[[], Awaitable[asyncio.subprocess.Process]],
) -> None:
    batch_id = await stage(db, settings, "test", results_for(range(PEOPLE)))
    async with db.transaction():
        await db.execute("LOCK TABLE statuses IN EXCLUSIVE MODE")  # status writes wait
        await workers()
        await workers()
        await until(lambda: _equals(part_claims(db), 2))  # each worker holds a part of its own

    await until(lambda: _equals(batch_state(db, batch_id), "done"))
    parts = await db.fetch("SELECT done_by, subjects FROM batch_parts WHERE batch_id = $1", batch_id)
    assert len(parts) == 4
    assert len({p["done_by"] for p in parts}) == 2
    batch = await db.fetchrow("SELECT accepted, subjects FROM batches WHERE id = $1", batch_id)
    assert batch is not None and tuple(batch) == (PEOPLE, PEOPLE)
    assert await db.fetchval("SELECT count(*) FROM statuses") == PEOPLE
    await all_in_redis(redis, settings)


@pytest.mark.slow
async def test_a_worker_killed_mid_batch_is_taken_over_without_merging_twice(
    settings: Settings,
    db: asyncpg.Connection,
    redis: Redis,
    workers: Callable[[], Awaitable[asyncio.subprocess.Process]],
) -> None:
    batch_id = await stage(db, settings, "test", results_for(range(PEOPLE)))
    async with db.transaction():
        await db.execute("LOCK TABLE statuses IN EXCLUSIVE MODE")
        first = await workers()
        # Merged, and caught writing the statuses of its first part.
        await until(lambda: _equals(part_claims(db), 1))
        merged_at = await db.fetchval("SELECT merged_at FROM batches WHERE id = $1", batch_id)
        assert merged_at is not None
        first.kill()
        await first.wait()
        await workers()
    await until(lambda: _equals(batch_state(db, batch_id), "done"))

    batch = await db.fetchrow(
        "SELECT accepted, duplicates, subjects, merged_at, error FROM batches WHERE id = $1", batch_id
    )
    assert batch is not None
    assert (batch["accepted"], batch["duplicates"], batch["subjects"]) == (PEOPLE, 0, PEOPLE)
    assert batch["merged_at"] == merged_at  # merged once, by the killed worker
    assert await db.fetchval("SELECT count(*) FROM nucleic_tests") == PEOPLE
    done_by = await db.fetch("SELECT DISTINCT done_by FROM batch_parts WHERE batch_id = $1", batch_id)
    assert [r["done_by"] for r in done_by] != [] and all(str(first.pid) not in r["done_by"] for r in done_by)
    assert await db.fetchval("SELECT count(*) FROM statuses") == PEOPLE
    await all_in_redis(redis, settings)


async def _equals(value: Awaitable[object], expected: object) -> bool:
    return await value == expected


async def test_an_api_without_its_embedded_worker_leaves_batches_to_workers(
    make_client: AppFactory, client_keys: dict[str, str], settings: Settings, redis: Redis
) -> None:
    api = await make_client(embedded_worker=False)
    status, batch = await upload(api, client_keys["agency"], "test", results_for(range(3)))
    assert (status, batch["state"]) == (202, "received")

    async with open_worker(settings) as worker:
        assert await worker.step() is True
        assert await worker.step() is False  # nothing left to start
    got = await api.get(f"/v1/batches/{batch['id']}", headers=bearer(client_keys["agency"]))
    done = await got.json()
    assert (done["state"], done["subjects_recomputed"]) == ("done", 3)


def test_process_and_part_counts_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, message in (
        (["serve", "--workers", "0"], "argument --workers: must be at least 1, not 0"),
        (["worker", "--part-rows", "-3"], "argument --part-rows: must be at least 1, not -3"),
        (["worker", "--poll-seconds", "0"], "argument --poll-seconds: must be more than 0 and at most 60, not 0"),
    ):
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 2
        assert message in capsys.readouterr().err
