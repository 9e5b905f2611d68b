"""`make scale PEOPLE=N`: a synthetic province loaded end to end, then what it costs and how fast it answers.

On a database of its own (`healthcode_scale`, dropped at the end unless --keep-db) and a Redis server of
its own (the machine's redis-server on a free port, started and stopped here; or --redis-url, which
must name an empty database), in one run:

1. the schema, a signing key and the demo clients (`healthcode demo --people 0`);
2. N people of the synthetic population (loadtests/population.py) exported as one CSV per record kind
   and loaded with `healthcode load`, the ingestion path of an agency's batch (parse, validate,
   pseudonymise, stage, merge, recompute every touched status and publish it to Postgres and Redis):
   population, vaccinations, tests, travel, designations, risk areas; time and rows/s per kind;
3. Redis bytes per subject (INFO used_memory over the cached entries) and Postgres bytes per subject
   (tables and indexes, every partition counted, per table);
4. `healthcode serve` on a free loopback port, and POST /v1/status for random people of the whole
   population: p50/p99 of Redis hits, then, after Redis is flushed, of misses (each a different person);
5. a short Locust run of the three user kinds over the whole population and its capacity line.

Everything lands in OUT (default scale-results/<N>): scale.json, the Locust report, the server's log.

    python -m loadtests.bench.scale --people 250000 [--out DIR] [--duration 20s] [--queries 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
from redis.asyncio import Redis

from app.db import drop_database, recreate_database
from app.dev.scratch_redis import scratch_redis
from cache.connection import open_redis
from cache.status_cache import count_cached
from loadtests import capacity
from loadtests import run as load_run
from loadtests.bench.memory import advised_bits
from loadtests.load import export
from loadtests.population import Population, anchor

DATABASE: Final = "healthcode_scale"
CONCURRENCY: Final = 16

# Sizes of every table with its partitions, heap (with TOAST) apart from indexes.
_SIZES = """
WITH RECURSIVE tree AS (
    SELECT c.oid AS top, c.oid FROM pg_class c
    WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p') AND NOT c.relispartition
    UNION ALL
    SELECT tree.top, i.inhrelid FROM tree JOIN pg_inherits i ON i.inhparent = tree.oid
)
SELECT top::regclass::text AS name, sum(pg_table_size(oid))::bigint AS table_bytes,
       sum(pg_indexes_size(oid))::bigint AS index_bytes
FROM tree GROUP BY top ORDER BY 2 + 3 DESC
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loadtests.bench.scale", description=__doc__.split("\n\n")[0])
    p.add_argument("--people", type=int, default=100_000, help="population size (default 100000)")
    p.add_argument("--seed", type=int, default=2022)
    p.add_argument("--out", type=Path, help="result folder (default scale-results/<people>)")
    p.add_argument("--redis-url", help="an empty Redis database to use instead of starting a server")
    p.add_argument("--redis", choices=("redis", "valkey"), default="redis", help="server to start (redis)")
    p.add_argument("--queries", type=int, default=20_000, help="status queries per phase (hits, misses)")
    p.add_argument("--duration", type=load_run._seconds, default=20, help="Locust run length (20s)")
    p.add_argument("--database", default=DATABASE, help=f"database to create, use and drop ({DATABASE})")
    p.add_argument("--keep-db", action="store_true", help="keep the database afterwards")
    return p


def _database_url(name: str) -> str:
    server = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    parts = urlsplit(server)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


def _say(text: str) -> None:
    print(f"scale: {text}", flush=True)


@contextmanager
def _redis_server(args: argparse.Namespace) -> Iterator[str]:
    if args.redis_url is None:
        with scratch_redis(args.redis) as url:
            yield url
        return
    yield args.redis_url


async def _redis_used(url: str) -> int:
    redis: Redis = open_redis(url, socket_timeout=60, client_class=Redis)
    try:
        return int((await redis.info("memory"))["used_memory"])
    finally:
        await redis.aclose()


async def _redis_figures(url: str, baseline: int, people: int) -> dict[str, Any]:
    redis: Redis = open_redis(url, socket_timeout=60, client_class=Redis)
    try:
        used = int((await redis.info("memory"))["used_memory"]) - baseline
        cached = await count_cached(redis)
        return {
            "used_memory_bytes": used,
            "cached_entries": cached,
            "keys": await redis.dbsize(),
            "bytes_per_subject": round(used / max(cached, 1), 1),
            "cached_share": round(cached / people, 4),
        }
    finally:
        await redis.aclose()


async def _flush(url: str) -> None:
    redis: Redis = open_redis(url, socket_timeout=60, client_class=Redis)
    try:
        await redis.flushdb()
    finally:
        await redis.aclose()


async def _postgres_figures(url: str) -> dict[str, Any]:
    conn = await asyncpg.connect(url)
    try:
        subjects = int(await conn.fetchval("SELECT count(*) FROM subjects"))
        rows = await conn.fetch(_SIZES)
        database = int(await conn.fetchval("SELECT pg_database_size(current_database())"))
    finally:
        await conn.close()
    tables = {r["name"]: {"table_bytes": r["table_bytes"], "index_bytes": r["index_bytes"]} for r in rows}
    table_bytes = sum(t["table_bytes"] for t in tables.values())
    index_bytes = sum(t["index_bytes"] for t in tables.values())
    return {
        "subjects": subjects,
        "database_bytes": database,
        "table_bytes": table_bytes,
        "index_bytes": index_bytes,
        "bytes_per_subject": round((table_bytes + index_bytes) / max(subjects, 1), 1),
        "table_bytes_per_subject": round(table_bytes / max(subjects, 1), 1),
        "index_bytes_per_subject": round(index_bytes / max(subjects, 1), 1),
        "tables": {
            name: {**sizes, "bytes_per_subject": round((sizes["table_bytes"] + sizes["index_bytes"]) / subjects, 1)}
            for name, sizes in tables.items()
            if sizes["table_bytes"] + sizes["index_bytes"] >= 1 << 20
        },
    }


def _load(files: list[tuple[str, Path]], env: dict[str, str]) -> dict[str, Any]:
    """`healthcode load` per kind, timed: what an operator's load of agency files costs."""
    healthcode = load_run._healthcode()
    kinds: dict[str, Any] = {}
    for kind, path in files:
        with path.open("rb") as f:
            rows = sum(1 for _ in f) - 1
        _say(f"loading {rows:,} {kind} rows")
        started = time.perf_counter()
        done = subprocess.run([healthcode, "load", "--kind", kind, str(path)], env=env, check=False)
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"healthcode load --kind {kind} exited with {done.returncode}")
        kinds[kind] = {"rows": rows, "seconds": round(seconds, 1), "rows_per_second": round(rows / seconds)}
    return kinds


async def _queries(base: str, key: str, population: Population, indexes: list[int]) -> dict[str, Any]:
    """POST /v1/status for each person, CONCURRENCY at a time; latencies as the client sees them."""
    latencies: list[float] = []
    codes: Counter[int] = Counter()
    wrong = 0
    queue = iter(indexes)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal wrong
        for index in queue:
            person = population.person(index)
            body = json.dumps({"id_type": "resident", "id_number": person.number})
            started = time.perf_counter()
            async with session.post("/v1/status", data=body) as answer:
                payload = await answer.read()
            latencies.append(time.perf_counter() - started)
            codes[answer.status] += 1
            if answer.status == 200 and json.loads(payload)["colour"] != person.colour:
                wrong += 1

    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    started = time.perf_counter()
    async with aiohttp.ClientSession(base, headers=headers, connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(CONCURRENCY)))
    seconds = time.perf_counter() - started
    latencies.sort()
    return {
        "queries": len(latencies),
        "failures": len(latencies) - codes[200],
        "answers": {str(code): n for code, n in sorted(codes.items())},
        "wrong_colour": wrong,
        "per_second": round(len(latencies) / seconds),
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 2),
        "p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000, 2),
    }


def _capacity(server: subprocess.Popen[bytes], base: str, people: int, duration: int, out: Path) -> str:
    """The load tests' Locust run (`make load`'s, on this server and the whole population), sampled
    like theirs (the server's, Redis's and Postgres's CPU), and its capacity line."""
    out.mkdir(parents=True, exist_ok=True)
    args = load_run._parser().parse_args(["--people", str(people), "--duration", f"{duration}s", "--out", str(out)])
    keys = load_run._client_keys()
    env = {**os.environ, **{load_run.KEY_ENV[kind]: key for kind, key in keys.items()},
           "HEALTHCODE_LOAD_USERS": str(args.users), "HEALTHCODE_LOAD_SECONDS": str(args.duration)}  # fmt: skip
    sampler = load_run.Sampler(base, server.pid, out / "server_samples.csv")
    sampler.start()
    _say(f"Locust: {args.users} users for {args.duration} s over {people:,} people")
    code = load_run._run_locust(load_run._locust_commands(args, base, out, True), env)
    sampler.stopped.set()
    sampler.join(10)
    (out / "run.json").write_text(json.dumps({
        "host": base, "local_server": True, "duration_seconds": args.duration, "users": args.users,
        "workers": 0, "people": people, "think_time": args.think_time, "agencies": args.agencies,
        "locust_exit_code": code, "sampler_errors": sampler.errors, "cores_on_this_machine": os.cpu_count(),
    }, indent=2))  # fmt: skip
    report = capacity.report(out)  # also writes OUT/capacity.txt
    found = [line for line in report.splitlines() if line.startswith("capacity:")]
    return found[-1] if found else f"capacity: not reported (locust exit code {code})"


def _status_key(keys_dir: Path) -> str:
    return str(json.loads((keys_dir / "demo-clients.json").read_text())["citizen-backend"])


def run(args: argparse.Namespace) -> dict[str, Any]:
    people: int = args.people
    out: Path = args.out or Path("scale-results") / str(people)
    out.mkdir(parents=True, exist_ok=True)
    url = _database_url(args.database)
    result: dict[str, Any] = {"people": people, "seed": args.seed}
    started = time.perf_counter()
    asyncio.run(recreate_database(url))
    try:
        with _redis_server(args) as redis_url, tempfile.TemporaryDirectory(prefix="healthcode-scale-") as tmp:
            if args.redis_url is not None and asyncio.run(_redis_size(redis_url)):
                raise SystemExit(f"{redis_url} is not empty; give an empty database (it is flushed for misses)")
            baseline = asyncio.run(_redis_used(redis_url))
            bits = os.environ.get("HEALTHCODE_CACHE_BUCKET_BITS") or str(advised_bits(people))
            env = {
                **os.environ,
                "DATABASE_URL": url,
                "REDIS_URL": redis_url,
                "HEALTHCODE_KEYS_DIR": str(Path(tmp) / "keys"),
                "HEALTHCODE_CACHE_BUCKET_BITS": bits,
                "HEALTHCODE_RATE_LIMITS": load_run.UNBOUNDED_LIMITS,
            }
            result["cache_bucket_bits"] = int(bits)
            _say(f"{people:,} people; database {args.database}, Redis {redis_url}, {bits} bucket bits")
            _load_province(args, env, Path(tmp), result)
            result["redis"] = asyncio.run(_redis_figures(redis_url, baseline, people))
            result["postgres"] = asyncio.run(_postgres_figures(url))
            _report_storage(result)
            _answer(args, env, out, result)
    finally:
        if not args.keep_db:
            asyncio.run(drop_database(url))
    result["total_seconds"] = round(time.perf_counter() - started, 1)
    (out / "scale.json").write_text(json.dumps(result, indent=2) + "\n")
    _report(result)
    return result


def _load_province(args: argparse.Namespace, env: dict[str, str], tmp: Path, result: dict[str, Any]) -> None:
    """Schema, key and clients, then every record kind through `healthcode load`."""
    demo = subprocess.run(
        [load_run._healthcode(), "demo", "--people", "0"], env=env, stdout=subprocess.DEVNULL, check=False
    )
    if demo.returncode != 0:
        raise SystemExit("healthcode demo --people 0 failed (schema, key, clients)")
    began = time.perf_counter()
    files = export(tmp / "csv", Population(args.seed), args.people, anchor(int(time.time())))
    result["export_seconds"] = round(time.perf_counter() - began, 1)
    result["csv_bytes"] = sum(path.stat().st_size for _, path in files)
    began = time.perf_counter()
    result["load"] = _load(files, env)
    result["load_seconds"] = round(time.perf_counter() - began, 1)
    # The machine may be shared: its load average says how much of it this run had.
    result["load_average_after_load"] = [round(x, 1) for x in os.getloadavg()]
    for _, path in files:
        path.unlink()


def _answer(args: argparse.Namespace, env: dict[str, str], out: Path, result: dict[str, Any]) -> None:
    """Serve, query random people (hits, then misses after a flush), then the Locust run."""
    people: int = args.people
    population = Population(args.seed)
    port = load_run._free_port()
    base = f"http://127.0.0.1:{port}"
    key = _status_key(Path(env["HEALTHCODE_KEYS_DIR"]))
    rng = random.Random(args.seed)
    with _environ(env), load_run._local_service(port) as server:
        load_run._wait_ready(base, server)
        hits = rng.sample(range(people), min(args.queries, people))
        result["hits"] = asyncio.run(_queries(base, key, population, hits))
        asyncio.run(_flush(env["REDIS_URL"]))
        misses = rng.sample(range(people), min(args.queries, people))
        result["misses"] = asyncio.run(_queries(base, key, population, misses))
        _report_queries(result)
        result["capacity"] = _capacity(server, base, people, args.duration, out / "load")


async def _redis_size(url: str) -> int:
    redis: Redis = open_redis(url, client_class=Redis)
    try:
        return int(await redis.dbsize())
    finally:
        await redis.aclose()


@contextmanager
def _environ(env: dict[str, str]) -> Iterator[None]:
    """The scale run's environment for the helpers of loadtests.run, which read os.environ: the server
    they start, the client keys and Locust's processes."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _report_storage(result: dict[str, Any]) -> None:
    r, pg = result["redis"], result["postgres"]
    _say(f"redis: {r['cached_entries']:,} entries in {r['keys']:,} keys, {r['used_memory_bytes'] / 2**20:,.1f} MiB"
         f" = {r['bytes_per_subject']} bytes/subject")  # fmt: skip
    _say(f"postgres: {pg['subjects']:,} subjects, tables {pg['table_bytes'] / 2**20:,.0f} MiB + indexes"
         f" {pg['index_bytes'] / 2**20:,.0f} MiB = {pg['bytes_per_subject']:,} bytes/subject")  # fmt: skip


def _report_queries(result: dict[str, Any]) -> None:
    for phase in ("hits", "misses"):
        q = result[phase]
        _say(f"status {phase}: p50 {q['p50_ms']} ms, p99 {q['p99_ms']} ms, {q['per_second']:,}/s at {CONCURRENCY}"
             f" connections, answers {q['answers']}, {q['wrong_colour']} wrong colour")  # fmt: skip


def _report(result: dict[str, Any]) -> None:
    print(f"\nscale: {result['people']:,} people in {result['total_seconds']:,.0f} s"
          f" (export {result['export_seconds']} s, load {result['load_seconds']} s; load average"
          f" {result['load_average_after_load']} on {os.cpu_count()} cores)")  # fmt: skip
    for kind, k in result["load"].items():
        print(f"  load {kind:<12} {k['rows']:>11,} rows {k['seconds']:>8,.1f} s {k['rows_per_second']:>9,} rows/s")
    r, pg = result["redis"], result["postgres"]
    print(f"  redis bytes/subject: {r['bytes_per_subject']} ({r['cached_entries']:,} entries,"
          f" {result['cache_bucket_bits']} bucket bits)")  # fmt: skip
    print(f"  postgres bytes/subject: {pg['bytes_per_subject']:,} (tables {pg['table_bytes_per_subject']:,},"
          f" indexes {pg['index_bytes_per_subject']:,})")  # fmt: skip
    for name, t in pg["tables"].items():
        print(f"    {name:<24} {t['bytes_per_subject']:>8,} bytes/subject")
    for phase in ("hits", "misses"):
        q = result[phase]
        print(f"  status {phase}: p50 {q['p50_ms']} ms, p99 {q['p99_ms']} ms ({q['queries']:,} random people)")
    print(f"  {result['capacity']}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.people < 1:
        raise SystemExit("--people must be at least 1")
    if shutil.which("redis-server") is None and args.redis == "redis" and args.redis_url is None:
        args.redis = "valkey"
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
