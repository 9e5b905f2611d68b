"""POST /v1/status on a Redis hit against a bare aiohttp JSON handler, on the same pinned core.

Both servers run in turn on one core (the first the process may use), one process each, uvloop, access
log off; wrk drives them from another core with one thread and CONNECTIONS connections, rotating
through IDENTITIES demo people, first a warm-up (which also fills Redis for any entry that was
missing), then a measured run. Every status answer must be 200 and every entry a Redis hit.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Final

from loadtests.bench import BenchError
from loadtests.bench.data import BenchData, cached_count, healthcode_command, prepare
from loadtests.bench.servers import free_port, pinned_server
from loadtests.bench.wrk import WrkResult, run_wrk, wrk_path

CONNECTIONS: Final = 64
WARMUP_SECONDS: Final = 3.0
TARGET_RATIO: Final = 0.40
TARGET_P99_MS: Final = 10.0


def _cores() -> tuple[int | None, int | None]:
    """(server core, wrk core); unpinned when the process may use fewer than two cores."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        print("fewer than two cores: servers and wrk are not pinned", file=sys.stderr)
        return None, None
    return cores[0], cores[1]


def _drive(name: str, url: str, data: BenchData, seconds: float, wrk_core: int | None) -> WrkResult:
    print(f"{name}: warm-up {WARMUP_SECONDS:g} s, then {seconds:g} s measured", file=sys.stderr)
    runs = [
        run_wrk(url, data.bodies, data.bearer, seconds=s, connections=CONNECTIONS, cpu=wrk_core)
        for s in (min(WARMUP_SECONDS, seconds), seconds)
    ]
    for run in runs:
        if run.not_ok or run.socket_errors:
            raise BenchError(
                f"{name}: {run.not_ok} answers were not 200 and {run.socket_errors} socket errors "
                f"in {run.requests} requests (see the server log under the output folder)"
            )
    return runs[-1]


def _line(name: str, result: WrkResult) -> str:
    return f"{name}: {result.rate:,.0f} req/s p99 {result.p99_us / 1000:.2f} ms"


def run(args: argparse.Namespace) -> dict[str, Any]:
    wrk_path()  # fail before loading anything when wrk is missing
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    server_core, wrk_core = _cores()
    data = prepare()

    port = free_port()
    bare_command = [sys.executable, "-m", "loadtests.bench.bare", "--port", str(port)]
    with pinned_server(bare_command, port=port, cpu=server_core, log=out / "bare-server.log") as base:
        bare = _drive("bare", f"{base}/v1/status", data, args.duration, wrk_core)
    print(_line("bare", bare), flush=True)

    port = free_port()
    status_command = healthcode_command("serve", "--port", str(port))
    log = out / "status-server.log"
    with pinned_server(status_command, port=port, cpu=server_core, log=log, env=data.env) as base:
        status = _drive("status", f"{base}/v1/status", data, args.duration, wrk_core)
        hits = cached_count(data)
    if hits != len(data.status_keys):
        raise BenchError(f"only {hits} of {len(data.status_keys)} status entries are in Redis after the run")
    print(_line("status", status), flush=True)

    ratio = status.rate / bare.rate
    print(f"status/bare ratio: {ratio:.2f}", flush=True)
    met = ratio >= TARGET_RATIO and status.p99_us / 1000 < TARGET_P99_MS
    print(f"target: ratio >= {TARGET_RATIO:.2f} with p99 < {TARGET_P99_MS:g} ms: {'met' if met else 'NOT met'}")
    return {
        "connections": CONNECTIONS,
        "identities": len(data.bodies),
        "duration_seconds": args.duration,
        "server_cpu": server_core,
        "wrk_cpu": wrk_core,
        "bare": bare.as_dict(),
        "status": status.as_dict(),
        "ratio": round(ratio, 4),
        "target_ratio": TARGET_RATIO,
        "target_p99_ms": TARGET_P99_MS,
        "target_met": met,
    }
