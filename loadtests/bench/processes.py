"""`healthcode serve` with one process against `serve --workers 2`, side by side in one run.

Both servers serve POST /v1/status on a Redis hit (the status benchmark's data and load: wrk, one
thread, CONNECTIONS connections, IDENTITIES rotating people), driven in alternating rounds. The one-process
server and the two processes may run on every core (the kernel places them) and wrk runs on the last
core in both cases, so on a 2-core machine the servers share a core with the load generator and
throughput cannot double. What must not grow is the server's CPU time per
answer (every process of the server counted): a second process shares no lock, pool or Redis
connection with the first, so the work per answer stays the same. Prints

    status 2-process efficiency: X.XX   (CPU per answer with one process / with two; target >= 0.90)

with each configuration's throughput and CPU per answer.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
from pathlib import Path
from typing import Any, Final

from loadtests.bench import BenchError
from loadtests.bench.data import prepare
from loadtests.bench.servers import Server, free_port, pinned_server
from loadtests.bench.status import CONNECTIONS, WARMUP_SECONDS, Measured
from loadtests.bench.wrk import run_wrk, wrk_path

ROUNDS: Final = 3
TARGET: Final = 0.90
NAMES: Final = ("1 process", "2 processes")


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


def _drive(server: Server, bodies: list[bytes], bearer: str, seconds: float, wrk_core: int | None) -> Measured:
    before = tree_cpu_seconds(server.pid)
    result = run_wrk(
        f"{server.base_url}/v1/status", bodies, bearer, seconds=seconds, connections=CONNECTIONS, cpu=wrk_core
    )
    cpu = tree_cpu_seconds(server.pid) - before
    if result.not_ok or result.socket_errors:
        raise BenchError(f"{result.not_ok} answers were not 200 and {result.socket_errors} socket errors")
    return Measured(result, cpu * 1e6 / result.requests)


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
    }
    # Both servers may run on every core (the kernel places their processes), wrk on the last one: the
    # same treatment for both, so other work on a shared machine weighs on both alike.
    placement = {name: ",".join(map(str, cores)) for name in NAMES}
    wrk_core = cores[-1]
    rounds: dict[str, list[Measured]] = {name: [] for name in NAMES}
    with contextlib.ExitStack() as stack:
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
            _drive(servers[name], data.bodies, data.bearer, min(WARMUP_SECONDS, args.duration), wrk_core)
        for number in range(1, ROUNDS + 1):
            for name in NAMES:
                measured = _drive(servers[name], data.bodies, data.bearer, args.duration, wrk_core)
                rounds[name].append(measured)
                print(
                    f"round {number}/{ROUNDS} {name}: {measured.wrk.rate:,.0f} req/s, "
                    f"{measured.cpu_us_per_request:.0f} us CPU per answer",
                    file=sys.stderr,
                )
    figures = {
        name: {
            "requests_per_second": round(statistics.median(r.wrk.rate for r in rounds[name]), 1),
            "cpu_us_per_request": round(statistics.median(r.cpu_us_per_request for r in rounds[name]), 1),
            "p99_ms": round(statistics.median(r.wrk.p99_us for r in rounds[name]) / 1000, 3),
        }
        for name in NAMES
    }
    # Per round, so drift in other load on the machine cancels out; the median of the rounds.
    efficiency = statistics.median(
        one.cpu_us_per_request / two.cpu_us_per_request
        for one, two in zip(rounds[NAMES[0]], rounds[NAMES[1]], strict=True)
    )
    for name in NAMES:
        f = figures[name]
        print(
            f"status, {name}: {f['requests_per_second']:,.0f} req/s, p99 {f['p99_ms']:.2f} ms, "
            f"{f['cpu_us_per_request']:.0f} us server CPU per answer",
            flush=True,
        )
    print(f"status 2-process efficiency: {efficiency:.2f}", flush=True)
    print(f"target: >= {TARGET:.2f}: {'met' if efficiency >= TARGET else 'NOT met'}", flush=True)
    return {
        "connections": CONNECTIONS,
        "rounds": ROUNDS,
        "duration_seconds": args.duration,
        "placement": placement,
        "wrk_cpu": wrk_core,
        **figures,
        "efficiency": round(efficiency, 4),
        "target": TARGET,
        "target_met": efficiency >= TARGET,
        "runs": {name: [r.as_dict() for r in rounds[name]] for name in NAMES},
    }
