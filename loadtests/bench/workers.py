"""Recompute throughput of `healthcode worker` processes: one worker, then two, on one batch's parts.

Each round starts N worker processes (idle, polling), stages a batch of ROWS `test` rows (one per
person, new records each round) as an upload would, and lets the workers do the rest: one of them
merges it, then all of them take its PARTS parts. The recompute is timed from the batch's merged_at to
its finished_at (the batch's own clock), and the CPU time used meanwhile is read from /proc for every
worker process, their Postgres backends and the Redis server (when they run on this host), so the
figure that sizes a fleet, subjects per second per core of all three, does not depend on how many
cores this machine has. After a warm-up round (which creates the subjects and their statuses), rounds
alternate 1, 2, 1, 2 workers, each on a fresh set of records; figures are medians.

Prints, for example:

    workers: 1 worker 30,000 subjects/s; 2 workers 41,000 subjects/s (20,500 per worker)
    recompute per core: 14,000 subjects/s per core (workers 45 %, postgres 50 %, redis 5 %)
    100,000 subjects/s needs 7.1 cores: ...

Uses its own database `healthcode_bench_workers` and Redis db 15 (flushed). HEALTHCODE_BENCH_WORKER_ROWS
changes ROWS (default 200,000).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import asyncpg
from redis.asyncio import Redis

from app.db import connection
from app.rules.ruleset import load_ruleset
from loadtests.bench import BenchError
from loadtests.bench.data import scratch_stores
from loadtests.bench.ingest import _numbers, _write_csv, upload_tests
from loadtests.bench.processes import tree_cpu_seconds

DATABASE: Final = "healthcode_bench_workers"
REDIS_DB: Final = 15
DEFAULT_ROWS: Final = 200_000
PARTS: Final = 16
ROUNDS: Final = (1, 2, 1, 2)
TARGET: Final = 100_000  # subjects/s for the whole pipeline, with enough workers


def _cpu(pids: list[int]) -> float:
    return sum(tree_cpu_seconds(pid) for pid in pids)


class Workers:
    """`count` worker processes, started and waited for until each is looking for batches."""

    def __init__(self, count: int, env: dict[str, str], part_rows: int) -> None:
        self.count, self.env, self.part_rows = count, env, part_rows
        self.processes: list[asyncio.subprocess.Process] = []

    async def __aenter__(self) -> list[int]:
        for _ in range(self.count):
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "app.cli",
                "worker",
                "--poll-seconds",
                "0.02",
                "--part-rows",
                str(self.part_rows),
                env=self.env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
            )
            self.processes.append(process)
        for process in self.processes:
            assert process.stdout is not None
            async with asyncio.timeout(30):
                line = await process.stdout.readline()
            if b"looking for batches" not in line:
                raise BenchError(f"a worker did not start: {line!r}")
        return [p.pid for p in self.processes]

    async def __aexit__(self, *exc: object) -> None:
        for process in self.processes:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            await process.wait()


def _local(pids: list[int]) -> list[int]:
    """The pids that are processes of this host (a server elsewhere has its CPU counted nowhere)."""
    return [pid for pid in pids if pid and Path(f"/proc/{pid}").exists()]


async def _redis_pid(redis: Redis) -> list[int]:
    info = await redis.info("server")
    return _local([int(info.get("process_id", 0))])


async def _backends(conn: asyncpg.Connection) -> list[int]:
    rows = await conn.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    return _local([r["pid"] for r in rows])


async def _until(conn: asyncpg.Connection, query: str, batch_id: int) -> None:
    """Polls the batch (another process moves it on; there is nothing to wait on but Postgres)."""
    while True:
        if await conn.fetchval(query, batch_id):
            return
        await asyncio.sleep(0.005)


async def _round(
    conn: asyncpg.Connection, redis: Redis, env: dict[str, str], csv: Path, rows: int, workers: int, pepper: bytes
) -> dict[str, Any]:
    size = csv.stat().st_size  # noqa: ASYNC240 (one stat)
    async with Workers(workers, env, max(1, rows // PARTS)) as worker_pids:
        batch_id = await upload_tests(conn, csv, size, pepper, load_ruleset())
        # The window opens when the merge has committed: the CPU of the recompute alone is counted.
        await _until(conn, "SELECT merged_at IS NOT NULL FROM batches WHERE id = $1", batch_id)
        pg_pids, redis_pids = await _backends(conn), await _redis_pid(redis)
        before = (_cpu(worker_pids), _cpu(pg_pids), _cpu(redis_pids))
        await _until(conn, "SELECT state = 'done' FROM batches WHERE id = $1", batch_id)
        after = (_cpu(worker_pids), _cpu(pg_pids), _cpu(redis_pids))
        batch = await conn.fetchrow(
            """SELECT subjects, extract(epoch FROM finished_at - merged_at)::float8 AS seconds
               FROM batches WHERE id = $1""",
            batch_id,
        )
        by_worker = await conn.fetch(
            "SELECT done_by, sum(subjects)::int AS subjects FROM batch_parts WHERE batch_id = $1 GROUP BY done_by",
            batch_id,
        )
    assert batch is not None
    seconds, subjects = float(batch["seconds"]), int(batch["subjects"])
    cpu = [a - b for a, b in zip(after, before, strict=True)]
    result = {
        "workers": workers,
        "subjects": subjects,
        "seconds": round(seconds, 3),
        "subjects_per_second": round(subjects / seconds),
        "per_worker_subjects_per_second": sorted(round(r["subjects"] / seconds) for r in by_worker),
        "cpu_seconds": {"workers": round(cpu[0], 2), "postgres": round(cpu[1], 2), "redis": round(cpu[2], 2)},
        "subjects_per_cpu_second": round(subjects / sum(cpu)) if sum(cpu) else None,
    }
    print(
        f"workers: {workers} worker(s): {result['subjects_per_second']:,} subjects/s in {seconds:.1f} s, "
        f"by worker {result['per_worker_subjects_per_second']}, CPU s {result['cpu_seconds']}",
        file=sys.stderr,
        flush=True,
    )
    return result


async def _run(rows: int) -> dict[str, Any]:
    url, redis_url = await scratch_stores(DATABASE, REDIS_DB)
    pepper = secrets.token_bytes(32)
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "REDIS_URL": redis_url,
        "HEALTHCODE_PEPPER": pepper.hex(),
        "HEALTHCODE_HANDLE_KEY": secrets.token_bytes(32).hex(),
        "HEALTHCODE_KEYS_DIR": tempfile.gettempdir(),
    }
    env.pop("HEALTHCODE_PEPPER_FILE", None)
    env.pop("HEALTHCODE_HANDLE_KEY_FILE", None)
    numbers = _numbers(rows)
    results: list[dict[str, Any]] = []
    redis = Redis.from_url(redis_url, socket_timeout=60)
    try:
        await redis.flushdb()
        async with connection(url) as conn:
            with tempfile.TemporaryDirectory() as tmp:
                for number, workers in enumerate((1, *ROUNDS)):
                    csv = Path(tmp) / f"tests-{number}.csv"
                    # New records each round (another sampling time), so every round merges and recomputes,
                    # and the last round's removed, so every round's subjects hold one test as in the first.
                    await conn.execute("TRUNCATE nucleic_tests")
                    _write_csv(csv, numbers, datetime.now(UTC) - timedelta(minutes=number))
                    result = await _round(conn, redis, env, csv, rows, workers, pepper)
                    if number:  # the first creates the subjects and statuses: a warm-up, not counted
                        results.append(result)
    finally:
        await redis.flushdb()
        await redis.aclose()
    return _report(rows, results)


def _report(rows: int, results: list[dict[str, Any]]) -> dict[str, Any]:
    def median(workers: int, key: str) -> float:
        return float(statistics.median(r[key] for r in results if r["workers"] == workers and r[key] is not None))

    one, two = median(1, "subjects_per_second"), median(2, "subjects_per_second")
    per_core = statistics.median(r["subjects_per_cpu_second"] for r in results if r["subjects_per_cpu_second"])
    cpu = {k: sum(r["cpu_seconds"][k] for r in results) for k in ("workers", "postgres", "redis")}
    total_cpu = sum(cpu.values()) or 1.0
    share = {k: v / total_cpu for k, v in cpu.items()}
    cores = TARGET / per_core
    print(f"workers: 1 worker {one:,.0f} subjects/s; 2 workers {two:,.0f} subjects/s ({two / 2:,.0f} per worker)")
    print(
        f"recompute per core: {per_core:,.0f} subjects/s per core of CPU (workers {share['workers']:.0%}, "
        f"postgres {share['postgres']:.0%}, redis {share['redis']:.0%})"
    )
    print(
        f"{TARGET:,} subjects/s needs {cores:.1f} cores: {cores * share['workers']:.1f} for workers, "
        f"{cores * share['postgres']:.1f} for Postgres, {cores * share['redis']:.1f} for Redis "
        f"(this machine has {os.cpu_count()})"
    )
    return {
        "rows": rows,
        "parts": PARTS,
        "one_worker_subjects_per_second": round(one),
        "two_workers_subjects_per_second": round(two),
        "subjects_per_core_second": round(per_core),
        "cpu_share": {k: round(v, 3) for k, v in share.items()},
        "cores_for_target": round(cores, 1),
        "target_subjects_per_second": TARGET,
        "rounds": results,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    rows = int(os.environ.get("HEALTHCODE_BENCH_WORKER_ROWS", DEFAULT_ROWS))
    started = time.monotonic()
    result = asyncio.run(_run(rows))
    result["bench_seconds"] = round(time.monotonic() - started, 1)
    return result


if __name__ == "__main__":
    run(argparse.Namespace())
