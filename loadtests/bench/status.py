"""POST /v1/status on a Redis hit against a bare aiohttp JSON handler, on the same pinned core.

Both servers run on one core (the first the process may use), one process each, uvloop, access log
off. wrk drives them from another core with one thread and CONNECTIONS connections, rotating through
IDENTITIES demo people: a warm-up of each (which also fills Redis for any entry that was missing), then
ROUNDS rounds of a measured run of bare and of status back to back. Reported figures are medians over
the rounds; the ratio is the median of the rounds' ratios, so load that drifts between rounds (other
work on the machine) cancels out. Every status answer must be 200 and every entry a Redis hit.
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

from loadtests.bench import BenchError
from loadtests.bench.data import BenchData, cached_count, healthcode_command, prepare
from loadtests.bench.servers import Server, free_port, pinned_server
from loadtests.bench.wrk import WrkResult, run_wrk, wrk_path

CONNECTIONS: Final = 64
WARMUP_SECONDS: Final = 3.0
ROUNDS: Final = 3
TARGET_RATIO: Final = 0.40
TARGET_P99_MS: Final = 10.0
NAMES: Final = ("bare", "status")


def cores() -> tuple[int | None, int | None]:
    """(server core, wrk core); unpinned when the process may use fewer than two cores."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        print("fewer than two cores: servers and wrk are not pinned", file=sys.stderr)
        return None, None
    return cores[0], cores[1]


@dataclass(frozen=True, slots=True)
class Measured:
    wrk: WrkResult
    # The server's own CPU time per answer: less skewed than req/s by other work on the same core.
    cpu_us_per_request: float

    def as_dict(self) -> dict[str, Any]:
        return {**self.wrk.as_dict(), "cpu_us_per_request": round(self.cpu_us_per_request, 1)}


class Driver:
    def __init__(self, data: BenchData, wrk_core: int | None) -> None:
        self.data = data
        self.wrk_core = wrk_core

    def drive(self, name: str, server: Server, seconds: float) -> Measured:
        cpu_before = server.cpu_seconds()
        result = run_wrk(
            f"{server.base_url}/v1/status",
            self.data.bodies,
            self.data.bearer,
            seconds=seconds,
            connections=CONNECTIONS,
            cpu=self.wrk_core,
        )
        cpu = server.cpu_seconds() - cpu_before
        if result.not_ok or result.socket_errors:
            raise BenchError(
                f"{name}: {result.not_ok} answers were not 200 and {result.socket_errors} socket errors "
                f"in {result.requests} requests (see the server logs in the output folder)"
            )
        return Measured(result, cpu * 1e6 / result.requests)


def _line(name: str, result: Measured) -> str:
    return (
        f"{name}: {result.wrk.rate:,.0f} req/s p99 {result.wrk.p99_us / 1000:.2f} ms "
        f"({result.cpu_us_per_request:.0f} us CPU per request)"
    )


def _median(rounds: list[Measured]) -> dict[str, float]:
    return {
        "requests_per_second": round(statistics.median(r.wrk.rate for r in rounds), 1),
        "p99_ms": round(statistics.median(r.wrk.p99_us for r in rounds) / 1000, 3),
        "cpu_us_per_request": round(statistics.median(r.cpu_us_per_request for r in rounds), 1),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    wrk_path()  # fail before loading anything when wrk is missing
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    server_core, wrk_core = cores()
    data = prepare()
    driver = Driver(data, wrk_core)
    bare_port, status_port = free_port(), free_port()
    commands = {
        "bare": [sys.executable, "-m", "loadtests.bench.bare", "--port", str(bare_port)],
        "status": healthcode_command("serve", "--port", str(status_port)),
    }
    rounds: dict[str, list[Measured]] = {name: [] for name in NAMES}
    with contextlib.ExitStack() as stack:
        servers = {
            name: stack.enter_context(
                pinned_server(
                    commands[name],
                    port=port,
                    cpu=server_core,
                    log=out / f"{name}-server.log",
                    env=data.env if name == "status" else None,
                )
            )
            for name, port in zip(NAMES, (bare_port, status_port), strict=True)
        }
        for name in NAMES:
            print(f"{name}: warm-up {WARMUP_SECONDS:g} s", file=sys.stderr)
            driver.drive(name, servers[name], min(WARMUP_SECONDS, args.duration))
        for number in range(1, ROUNDS + 1):
            for name in NAMES:
                rounds[name].append(driver.drive(name, servers[name], args.duration))
                print(f"round {number}/{ROUNDS} {_line(name, rounds[name][-1])}", file=sys.stderr)
        hits = cached_count(data)
    if hits != len(data.status_keys):
        raise BenchError(f"only {hits} of {len(data.status_keys)} status entries are in Redis after the run")

    figures = {name: _median(rounds[name]) for name in NAMES}
    ratio = statistics.median(s.wrk.rate / b.wrk.rate for b, s in zip(rounds["bare"], rounds["status"], strict=True))
    cpu_ratio = figures["bare"]["cpu_us_per_request"] / figures["status"]["cpu_us_per_request"]
    for name in NAMES:
        f = figures[name]
        print(f"{name}: {f['requests_per_second']:,.0f} req/s p99 {f['p99_ms']:.2f} ms", flush=True)
    print(f"status/bare ratio: {ratio:.2f}", flush=True)
    print(f"status/bare ratio by CPU time per request: {cpu_ratio:.2f}", flush=True)
    met = ratio >= TARGET_RATIO and figures["status"]["p99_ms"] < TARGET_P99_MS
    print(f"target: ratio >= {TARGET_RATIO:.2f} with p99 < {TARGET_P99_MS:g} ms: {'met' if met else 'NOT met'}")
    return {
        "connections": CONNECTIONS,
        "identities": len(data.bodies),
        "duration_seconds": args.duration,
        "rounds": ROUNDS,
        "server_cpu": server_core,
        "wrk_cpu": wrk_core,
        **figures,
        "ratio": round(ratio, 4),
        "cpu_ratio": round(cpu_ratio, 4),
        "target_ratio": TARGET_RATIO,
        "target_p99_ms": TARGET_P99_MS,
        "target_met": met,
        "runs": {name: [r.as_dict() for r in rounds[name]] for name in NAMES},
    }
