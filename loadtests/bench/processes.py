"""`healthcode serve` with one process against `serve --workers 2`, side by side in one run.

Three servers serve POST /v1/status on a Redis hit (the status benchmark's data and load: wrk, one
thread, CONNECTIONS connections, rotating demo identities), driven in turn, round after round:

- one process on the first core (as the status benchmark runs it);
- two processes on every core, as a deployment runs them (one per core); wrk shares the last core with
  one of them, so on a 2-core machine throughput cannot double;
- two processes on the first core only: the same CPU budget as one, so what differs is only what a
  second process costs per answer (its own pools and Redis connections, half the requests coalesced
  per Redis round trip, the kernel switching between two busy processes on one core).

The server's CPU time per answer (every process of the server counted) is the figure: less skewed by
other work on the machine than req/s. Prints

    status 2-process efficiency: X.XX   (CPU per answer, one process / two on the cores; target >= 0.90)
    status 2-process efficiency on one core: X.XX

with each configuration's throughput and CPU per answer. Each is the median of the rounds' ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from redis import Redis

from loadtests.bench import BenchError
from loadtests.bench.data import prepare
from loadtests.bench.servers import Server, free_port, pinned_server
from loadtests.bench.status import CONNECTIONS, WARMUP_SECONDS, Measured
from loadtests.bench.wrk import run_wrk, wrk_path

ROUNDS: Final = 3
TARGET: Final = 0.90
NAMES: Final = ("1 process", "2 processes", "2 processes on 1 core")


def tree_cpu_seconds(pid: int) -> float:
    """User plus system CPU time of `pid` and every live process below it."""
    total, pending = 0.0, [pid]
    while pending:
        current = pending.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rpartition(")")[2].split()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except FileNotFoundError:
            continue  # ended meanwhile
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        pending.extend(int(c) for c in children)
    return total


@dataclass(frozen=True, slots=True)
class Round:
    measured: Measured
    # Redis calls per answer: reads of one loop turn share one round trip, so a process that gets half
    # the requests coalesces fewer per call; this shows how much of a difference is that.
    redis_calls_per_answer: float

    @property
    def cpu_us_per_request(self) -> float:
        return self.measured.cpu_us_per_request

    def as_dict(self) -> dict[str, Any]:
        return {**self.measured.as_dict(), "redis_calls_per_answer": round(self.redis_calls_per_answer, 4)}


def _redis_calls(redis: Redis) -> int:
    return int(redis.info("stats")["total_commands_processed"])


def _drive(
    server: Server, redis: Redis, bodies: list[bytes], bearer: str, seconds: float, wrk_core: int | None
) -> Round:
    before, calls = tree_cpu_seconds(server.pid), _redis_calls(redis)
    result = run_wrk(
        f"{server.base_url}/v1/status", bodies, bearer, seconds=seconds, connections=CONNECTIONS, cpu=wrk_core
    )
    cpu = tree_cpu_seconds(server.pid) - before
    calls = _redis_calls(redis) - calls - 2  # less this function's own INFO calls
    if result.not_ok or result.socket_errors:
        raise BenchError(f"{result.not_ok} answers were not 200 and {result.socket_errors} socket errors")
    return Round(Measured(result, cpu * 1e6 / result.requests), calls / result.requests)


def run(args: argparse.Namespace) -> dict[str, Any]:
    wrk_path()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        raise BenchError("two cores are needed to compare one server process with two")
    data = prepare()
    # Both servers queue rather than shed: on a machine shared with other work a queue delay past the
    # 5 ms default target would turn answers into 503s, which cost less and would skew CPU per answer.
    env = {**data.env, "HEALTHCODE_QUEUE_TARGET_MS": "1000"}
    ports = {name: free_port() for name in NAMES}
    serve = [sys.executable, "-m", "app.cli", "serve"]
    commands = {
        NAMES[0]: [*serve, "--port", str(ports[NAMES[0]])],
        NAMES[1]: [*serve, "--port", str(ports[NAMES[1]]), "--workers", "2"],
        NAMES[2]: [*serve, "--port", str(ports[NAMES[2]]), "--workers", "2"],
    }
    placement = {NAMES[0]: str(cores[0]), NAMES[1]: ",".join(map(str, cores)), NAMES[2]: str(cores[0])}
    wrk_core = cores[-1]
    rounds: dict[str, list[Round]] = {name: [] for name in NAMES}
    with contextlib.ExitStack() as stack:
        redis = stack.enter_context(Redis.from_url(data.settings.redis_url))
        servers = {
            name: stack.enter_context(
                pinned_server(
                    commands[name],
                    port=ports[name],
                    cpu=placement[name],
                    log=out / f"processes-{name.replace(' ', '-')}.log",
                    env=env,
                )
            )
            for name in NAMES
        }
        for name in NAMES:
            _drive(servers[name], redis, data.bodies, data.bearer, min(WARMUP_SECONDS, args.duration), wrk_core)
        for number in range(1, ROUNDS + 1):
            for name in NAMES:
                measured = _drive(servers[name], redis, data.bodies, data.bearer, args.duration, wrk_core)
                rounds[name].append(measured)
                print(
                    f"round {number}/{ROUNDS} {name}: {measured.measured.wrk.rate:,.0f} req/s, "
                    f"{measured.cpu_us_per_request:.0f} us CPU per answer, "
                    f"{measured.redis_calls_per_answer:.3f} Redis calls per answer",
                    file=sys.stderr,
                )
    figures = {
        name: {
            "requests_per_second": round(statistics.median(r.measured.wrk.rate for r in rounds[name]), 1),
            "cpu_us_per_request": round(statistics.median(r.cpu_us_per_request for r in rounds[name]), 1),
            "p99_ms": round(statistics.median(r.measured.wrk.p99_us for r in rounds[name]) / 1000, 3),
            "redis_calls_per_answer": round(statistics.median(r.redis_calls_per_answer for r in rounds[name]), 4),
        }
        for name in NAMES
    }

    # Per round, so drift in other load on the machine cancels out; the median of the rounds.
    def ratio(other: str) -> float:
        pairs = zip(rounds[NAMES[0]], rounds[other], strict=True)
        return float(statistics.median(one.cpu_us_per_request / two.cpu_us_per_request for one, two in pairs))

    efficiency, one_core = ratio(NAMES[1]), ratio(NAMES[2])
    for name in NAMES:
        f = figures[name]
        print(
            f"status, {name}: {f['requests_per_second']:,.0f} req/s, p99 {f['p99_ms']:.2f} ms, "
            f"{f['cpu_us_per_request']:.0f} us server CPU per answer, "
            f"{f['redis_calls_per_answer']:.3f} Redis calls per answer",
            flush=True,
        )
    print(f"status 2-process efficiency: {efficiency:.2f}", flush=True)
    print(f"status 2-process efficiency on one core: {one_core:.2f}", flush=True)
    print(f"target: >= {TARGET:.2f}: {'met' if efficiency >= TARGET else 'NOT met'}", flush=True)
    return {
        "connections": CONNECTIONS,
        "rounds": ROUNDS,
        "duration_seconds": args.duration,
        "placement": placement,
        "wrk_cpu": wrk_core,
        **figures,
        "efficiency": round(efficiency, 4),
        "efficiency_one_core": round(one_core, 4),
        "target": TARGET,
        "target_met": efficiency >= TARGET,
        "runs": {
            name: [
                {**r.measured.as_dict(), "redis_calls_per_answer": round(r.redis_calls_per_answer, 4)}
                for r in rounds[name]
            ]
            for name in NAMES
        },
    }
