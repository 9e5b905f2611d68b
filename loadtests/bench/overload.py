"""Three times capacity, offered open loop: the door (app/http/door.py) against refusals through aiohttp.

Two status servers run one after the other on the same pinned core: one as deployed, one with
HEALTHCODE_DOOR=0, where every refusal is parsed and answered by aiohttp and the middleware.
loadtests/overload.py drives each from another core: capacity first (closed loop), then three times
that rate offered open loop, each request timed from when it was due. Reported per server: capacity,
goodput and its share of capacity, admitted p50/p99, shed p99; then the two servers' goodput shares
side by side. The issue's target: at 3x, goodput at least 90 % of capacity and admitted p99 at most 50 ms.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Final

from loadtests.bench import BenchError
from loadtests.bench.data import healthcode_command, prepare
from loadtests.bench.servers import free_port, pinned_server
from loadtests.bench.status import cores

FACTOR: Final = 3.0
WARMUP_SECONDS: Final = 1.0
TARGET_GOODPUT_SHARE: Final = 0.90
TARGET_P99_MS: Final = 50.0
SERVERS: Final = (("door", "1"), ("aiohttp", "0"))  # (name, HEALTHCODE_DOOR)


def _drive(base_url: str, key: str, body: bytes, seconds: float, core: int | None) -> dict[str, Any]:
    command = [
        sys.executable, "-m", "loadtests.overload", "--url", base_url, "--key", key, "--body", body.decode(),
        "--factor", str(FACTOR), "--seconds", str(seconds), "--warmup", str(WARMUP_SECONDS),
    ]  # fmt: skip
    if core is not None and shutil.which("taskset"):
        command = ["taskset", "-c", str(core), *command]
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=120 + 4 * seconds)
    if done.returncode != 0:
        raise BenchError(f"loadtests.overload failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} ms"  # none of that kind of answer (JSON null)


def _line(name: str, result: dict[str, Any]) -> str:
    capacity, loaded = result["capacity"]["goodput_per_s"], result["overload"]
    return (
        f"overload {name}: capacity {capacity:,.0f}/s, offered {result['offered_per_s']:,.0f}/s: "
        f"goodput {loaded['goodput_per_s']:,.0f}/s ({loaded['goodput_per_s'] / capacity:.0%}), "
        f"admitted p50 {loaded['admitted_p50_ms']:.1f} ms p99 {loaded['admitted_p99_ms']:.1f} ms, "
        f"shed p99 {_ms(loaded['shed_p99_ms'])}"
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    server_core, driver_core = cores()
    data = prepare()
    results: dict[str, dict[str, Any]] = {}
    for name, door in SERVERS:
        port = free_port()
        with pinned_server(
            healthcode_command("serve", "--port", str(port)),
            port=port,
            cpu=server_core,
            log=out / f"overload-{name}-server.log",
            env={**data.env, "HEALTHCODE_DOOR": door},
        ) as server:
            results[name] = _drive(server.base_url, data.bearer, data.bodies[0], args.duration, driver_core)
        print(_line(name, results[name]), flush=True)
    shares = {
        name: result["overload"]["goodput_per_s"] / result["capacity"]["goodput_per_s"]
        for name, result in results.items()
    }
    door = results["door"]["overload"]
    met = shares["door"] >= TARGET_GOODPUT_SHARE and door["admitted_p99_ms"] <= TARGET_P99_MS
    print(f"overload goodput share at {FACTOR:g}x: door {shares['door']:.2f}, aiohttp {shares['aiohttp']:.2f}")
    print(
        f"target: goodput >= {TARGET_GOODPUT_SHARE:.0%} of capacity with admitted p99 <= {TARGET_P99_MS:g} ms: "
        f"{'met' if met else 'NOT met'}"
    )
    return {
        "factor": FACTOR,
        "duration_seconds": args.duration,
        "server_cpu": server_core,
        "driver_cpu": driver_core,
        **results,
        "goodput_share": {name: round(share, 3) for name, share in shares.items()},
        "target_met": met,
    }
