"""Batch ingestion end to end against a raw COPY of the same rows.

Writes ROWS synthetic `test` rows (one per person, all valid) to a CSV file, then in the same run:

- raw: asyncpg `copy_records_to_table` of the same rows, already pseudonymised and typed, into
  `nucleic_tests` (the table they end up in), timed alone;
- end to end: the `healthcode load` pipeline on the file: parse, validate, pseudonymise, COPY into
  staging, merge into `nucleic_tests` (creating the subjects), recompute every touched status and
  refresh it in Redis.

Prints `ingest/copy ratio: 0.NN` (end-to-end rows/s over raw COPY rows/s) and the recompute rate
(recompute plus cache refresh, subjects/s). Uses its own database `healthcode_bench_ingest` and Redis
db 15 (no test run uses it), so nothing else is touched. HEALTHCODE_BENCH_INGEST_ROWS changes ROWS (default 1,000,000).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import asyncpg

from app.db import connection
from app.identity import Identity, pseudonym, resident_check_char
from app.ingest.kinds import KINDS
from app.ingest.load import file_chunks, paused_gc
from app.ingest.process import process_batch
from app.ingest.upload import receive_batch
from app.rules.ruleset import RuleSet, load_ruleset
from app.statuses.publish import StatusPublisher
from app.stores import open_stores
from cache.connection import AnyRedis
from cache.status_cache import count_cached
from cache.status_writer import StatusWriter
from loadtests.bench import BenchError
from loadtests.bench.data import scratch_stores

DATABASE: Final = "healthcode_bench_ingest"
REDIS_DB: Final = 15
DEFAULT_ROWS: Final = 1_000_000
LABS: Final = ("lab-a", "lab-b", "lab-c")


def _numbers(count: int) -> list[str]:
    """Distinct valid resident numbers (Chongqing districts, birth dates from 1950, sequence)."""
    out = []
    base = datetime(1950, 1, 1)
    for i in range(count):
        region = 500101 + (i % 20)
        born = base + timedelta(days=(i // 20) % 20000)
        first17 = f"{region}{born:%Y%m%d}{(i // 400_000) % 1000:03d}"
        out.append(first17 + resident_check_char(first17))
    return out


def _write_csv(path: Path, numbers: list[str], now: datetime) -> list[tuple[str, datetime, str, str, datetime]]:
    rows = []
    with path.open("w") as f:
        f.write("id_number,sampled_at,result,lab,reported_at\n")
        for i, number in enumerate(numbers):
            sampled = now - timedelta(hours=2 + i % 40, seconds=i % 3600)
            reported = sampled + timedelta(hours=1)
            result = "positive" if i % 50 == 0 else "negative"
            lab = LABS[i % 3]
            rows.append((number, sampled, result, lab, reported))
            f.write(f"{number},{sampled.isoformat()},{result},{lab},{reported.isoformat()}\n")
    return rows


async def _end_to_end(
    conn: asyncpg.Connection, url: str, redis: AnyRedis, path: Path, size: int, pepper: bytes, ruleset: RuleSet
) -> tuple[int, float, float]:
    """As `healthcode load` does it (cyclic GC paused, statuses stored on a second connection).

    Returns the batch id, the seconds until the batch was staged and the seconds until it was done.
    """
    with paused_gc():
        started = time.perf_counter()
        batch_id = await upload_tests(conn, path, size, pepper, ruleset)
        staged_seconds = time.perf_counter() - started
        async with connection(url) as writer:
            publisher = StatusPublisher(StatusWriter(redis), ruleset)
            await process_batch(conn, batch_id, publisher, int(time.time()), store_conn=writer)
        return batch_id, staged_seconds, time.perf_counter() - started


async def upload_tests(conn: asyncpg.Connection, path: Path, size: int, pepper: bytes, ruleset: RuleSet) -> int:
    """The CSV of test rows at `path` (`size` bytes) received as an agency's batch; returns its id."""
    received = await receive_batch(
        conn,
        client_id=0,
        kind=KINDS["test"],
        fmt="csv",
        body=file_chunks(path),
        key=None,
        pepper=pepper,
        ruleset=ruleset,
        now=datetime.now(UTC),
        max_bytes=size * 2,
    )
    return received.batch_id


async def _run(rows_count: int) -> dict[str, Any]:
    url, redis_url = await scratch_stores(DATABASE, REDIS_DB)
    pepper = secrets.token_bytes(32)
    now = datetime.now(UTC)
    ruleset = load_ruleset()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tests.csv"
        print(f"ingest: writing {rows_count:,} test rows…", file=sys.stderr, flush=True)
        rows = _write_csv(path, _numbers(rows_count), now)
        size = path.stat().st_size
        records = [
            (pseudonym(Identity("resident", n), pepper), sampled, result, lab, reported, 0)
            for n, sampled, result, lab, reported in rows
        ]
        del rows
        async with open_stores(url, redis_url) as (conn, redis):
            try:
                await redis.flushdb(asynchronous=True)  # a million keys take longer than the socket timeout
                # Raw COPY: typed, pseudonymised rows straight into the record table.
                with paused_gc():  # as for the end-to-end run
                    started = time.perf_counter()
                    await conn.copy_records_to_table(
                        "nucleic_tests",
                        records=records,
                        columns=("pseudonym", "sampled_at", "result", "lab", "reported_at", "batch_id"),
                    )
                    copy_seconds = time.perf_counter() - started
                del records
                await conn.execute("TRUNCATE nucleic_tests")
                await conn.execute("VACUUM ANALYZE nucleic_tests")
                print(f"ingest: raw COPY {rows_count / copy_seconds:,.0f} rows/s", file=sys.stderr, flush=True)

                batch_id, staged_seconds, total_seconds = await _end_to_end(
                    conn, url, redis, path, size, pepper, ruleset
                )
                batch = await conn.fetchrow(
                    """SELECT state, rows_read, accepted, rejected, subjects,
                              extract(epoch FROM merged_at - started_at) AS merge_s,
                              extract(epoch FROM finished_at - merged_at) AS recompute_s
                       FROM batches WHERE id = $1""",
                    batch_id,
                )
                cached = await count_cached(redis)
            finally:
                await redis.flushdb(asynchronous=True)  # a million keys take longer than the socket timeout
    assert batch is not None
    if (batch["state"], batch["accepted"], batch["rejected"]) != ("done", rows_count, 0):
        raise BenchError(f"the load did not store every row: {dict(batch)}")
    if cached != rows_count:
        # Reported, not fatal: another process sharing the Redis server may have flushed this db.
        print(f"ingest: warning: {cached:,} of {rows_count:,} entries found in Redis db {REDIS_DB}", file=sys.stderr)
    recompute_seconds = float(batch["recompute_s"])
    result = {
        "rows": rows_count,
        "raw_copy_rows_per_second": round(rows_count / copy_seconds),
        "ingest_rows_per_second": round(rows_count / total_seconds),
        "ingest_copy_ratio": round(copy_seconds / total_seconds, 3),
        "stage_seconds": round(staged_seconds, 2),
        "merge_seconds": round(float(batch["merge_s"]), 2),
        "recompute_seconds": round(recompute_seconds, 2),
        "recompute_subjects_per_second": round(batch["subjects"] / recompute_seconds),
        "total_seconds": round(total_seconds, 2),
        "cache_entries": cached,
    }
    _report(result)
    return result


def _report(result: dict[str, Any]) -> None:
    print(
        f"ingest: {result['rows']:,} test rows end to end in {result['total_seconds']:.1f} s "
        f"(stage {result['stage_seconds']:.1f} s, merge {result['merge_seconds']} s, "
        f"recompute+cache {result['recompute_seconds']:.1f} s)"
    )
    raw, end_to_end = result["raw_copy_rows_per_second"], result["ingest_rows_per_second"]
    print(f"ingest: raw COPY {raw:,} rows/s, end to end {end_to_end:,} rows/s")
    print(f"ingest/copy ratio: {result['ingest_copy_ratio']:.2f}")
    print(f"recompute + cache refresh: {result['recompute_subjects_per_second']:,} subjects/s")


def run(args: argparse.Namespace) -> dict[str, Any]:
    rows = int(os.environ.get("HEALTHCODE_BENCH_INGEST_ROWS", DEFAULT_ROWS))
    return asyncio.run(_run(rows))


if __name__ == "__main__":
    run(argparse.Namespace())
