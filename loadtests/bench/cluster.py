"""The cache on one Redis server and on a three-primary Redis Cluster, side by side, in one process.

Both are started here from the same binary (app/dev/redis_cluster.py: the machine's redis-server, else
Valkey), with no persistence, and stopped at the end. For each, in rounds that alternate between the
two (so drift on the machine falls on both):

- hot read: `StatusCache.get` of random cached subjects, READERS at once per loop turn (the coalescing a
  busy API process sees: HGETs and one MGET on one server, one buffer per node on the cluster), for the
  measured duration; look-ups a second and this process's CPU time per look-up;
- hot read latency: one look-up at a time, p50 and p99 of the whole `get`;
- bulk refresh: `StatusWriter.put_many` of REFRESH entries (the guarded Lua write), entries a second.

Figures are medians over the rounds. On this machine the cluster's three primaries share its two cores
with the benchmark, so it shows what the client pays for a cluster, not what more hosts would add.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Final

from app.dev.redis_cluster import LocalCluster, server_binary
from app.dev.servers import LOCAL_HOST, free_port, redis_ping, wait_until
from cache.connection import open_redis
from cache.entry import StatusEntry
from cache.status_cache import StatusCache
from cache.status_writer import StatusWriter
from loadtests.bench import BenchError

SUBJECTS: Final = 200_000
REFRESH: Final = 50_000
READERS: Final = 64
LATENCY_SAMPLES: Final = 2_000
ROUNDS: Final = 3
TARGETS: Final = ("single", "cluster")


def _entry(now: int) -> StatusEntry:
    return StatusEntry(
        colour="green",
        reasons=(),
        popup=False,
        vaccine_doses=3,
        vaccine_complete=True,
        last_test_at=now - 7200,
        last_test_result="negative",
        ruleset="cq-2022.03",
        computed_at=now - 60,
        valid_until=now + 86_400,
        version=1,
        id_type="resident",
        masked_name="张*",
        masked_number="5***************1X",
    )


def _subjects(count: int) -> list[bytes]:
    return [hashlib.sha256(b"bench-cluster-%d" % n).digest()[:16] for n in range(count)]


@contextmanager
def _single(folder: Path) -> Iterator[str]:
    port = free_port()
    args = [server_binary(), "--bind", LOCAL_HOST, "--port", str(port), "--save", "", "--appendonly", "no"]
    process = subprocess.Popen(
        [*args, "--dir", str(folder)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_until(lambda: redis_ping(port), 10.0, f"redis on port {port}")
        yield f"redis://{LOCAL_HOST}:{port}/0"
    finally:
        process.terminate()
        process.wait(10)


async def _missing(pseudonym: bytes) -> StatusEntry | None:
    raise BenchError(f"a benchmark subject was not in Redis: {pseudonym.hex()}")


class Target:
    def __init__(self, url: str, subjects: list[bytes]) -> None:
        self.redis = open_redis(url, socket_timeout=10.0, max_connections=16)
        self.writer = StatusWriter(self.redis)
        self.cache = StatusCache(self.redis, _missing, writer=self.writer)
        self.subjects = subjects

    async def fill(self) -> None:
        entry = _entry(int(time.time()))
        for start in range(0, len(self.subjects), REFRESH):
            part = self.subjects[start : start + REFRESH]
            await self.writer.put_many(dict.fromkeys(part, entry))

    async def refresh(self, version: int) -> float:
        """Entries a second of one bulk guarded write of REFRESH entries."""
        entry = replace(_entry(int(time.time())), version=version)
        batch = dict.fromkeys(random.sample(self.subjects, REFRESH), entry)
        started = time.perf_counter()
        stored = await self.writer.put_many(batch)
        seconds = time.perf_counter() - started
        if stored != REFRESH:
            raise BenchError(f"bulk refresh stored {stored} of {REFRESH}")
        return REFRESH / seconds

    async def hot_reads(self, seconds: float) -> tuple[float, float]:
        """(look-ups a second, CPU microseconds of this process per look-up) with READERS per turn."""
        done = 0
        cpu, started = time.process_time(), time.perf_counter()
        deadline = started + seconds
        while time.perf_counter() < deadline:
            picks = random.sample(self.subjects, READERS)
            await asyncio.gather(*(self.cache.get(p) for p in picks))
            done += READERS
        elapsed, cpu_used = time.perf_counter() - started, time.process_time() - cpu
        return done / elapsed, cpu_used / done * 1e6

    async def latency(self) -> tuple[float, float]:
        """(p50, p99) microseconds of one look-up alone."""
        samples: list[float] = []
        for pseudonym in random.sample(self.subjects, LATENCY_SAMPLES):
            started = time.perf_counter()
            await self.cache.get(pseudonym)
            samples.append((time.perf_counter() - started) * 1e6)
        cuts = statistics.quantiles(samples, n=100)
        return cuts[49], cuts[98]

    async def close(self) -> None:
        await self.cache.drain()
        await self.redis.aclose()


async def _measure(urls: dict[str, str], seconds: float) -> dict[str, dict[str, float]]:
    subjects = _subjects(SUBJECTS)
    targets = {name: Target(url, subjects) for name, url in urls.items()}
    rows: dict[str, dict[str, list[float]]] = {name: {} for name in targets}
    try:
        for name, target in targets.items():
            print(f"cluster bench: filling {name} with {SUBJECTS:,} entries", file=sys.stderr, flush=True)
            await target.fill()
        for number in range(1, ROUNDS + 1):
            for name, target in targets.items():
                rate, cpu_us = await target.hot_reads(seconds / ROUNDS)
                p50, p99 = await target.latency()
                refresh = await target.refresh(version=number + 1)
                for key, value in (("reads_per_second", rate), ("cpu_us_per_read", cpu_us), ("p50_us", p50),
                                   ("p99_us", p99), ("refresh_entries_per_second", refresh)):  # fmt: skip
                    rows[name].setdefault(key, []).append(value)
                print(
                    f"round {number}/{ROUNDS} {name}: {rate:,.0f} reads/s, {cpu_us:.1f} us CPU each, "
                    f"alone p50 {p50:.0f} us p99 {p99:.0f} us; refresh {refresh:,.0f} entries/s",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        for target in targets.values():
            await target.close()
    return {name: {key: statistics.median(values) for key, values in row.items()} for name, row in rows.items()}


def run(args: argparse.Namespace) -> dict[str, Any]:
    seconds = float(getattr(args, "duration", 10.0))
    with tempfile.TemporaryDirectory(prefix="healthcode-bench-cluster-") as folder:
        cluster = LocalCluster(Path(folder) / "cluster")
        try:
            cluster_url = cluster.start()
            with _single(Path(folder)) as single_url:
                result = asyncio.run(_measure({"single": single_url, "cluster": cluster_url}, seconds))
        finally:
            cluster.stop()
    single, on_cluster = result["single"], result["cluster"]
    print(f"redis server: {server_binary()}; cluster: 3 primaries, a replica each, on loopback", flush=True)
    for name in TARGETS:
        r = result[name]
        print(
            f"hot read on {name}: {r['reads_per_second']:,.0f} look-ups/s ({READERS} a turn), "
            f"{r['cpu_us_per_read']:.1f} us CPU each; one alone p50 {r['p50_us']:.0f} us, p99 {r['p99_us']:.0f} us",
            flush=True,
        )
    for name in TARGETS:
        print(f"bulk refresh on {name}: {result[name]['refresh_entries_per_second']:,.0f} entries/s", flush=True)
    print(
        f"cluster/single: hot read {on_cluster['reads_per_second'] / single['reads_per_second']:.2f}, "
        f"bulk refresh {on_cluster['refresh_entries_per_second'] / single['refresh_entries_per_second']:.2f}",
        flush=True,
    )
    return {name: {k: round(v, 1) for k, v in result[name].items()} for name in TARGETS}


if __name__ == "__main__":
    run(argparse.Namespace(duration=float(sys.argv[1]) if len(sys.argv) > 1 else 10.0))
