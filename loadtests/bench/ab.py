"""`python -m loadtests.bench.ab BEFORE AFTER`: the status path of two checkouts, side by side.

Two `healthcode serve` processes, one importing each checkout's code, pinned to the same core and
serving the bench data (loadtests.bench.data), are driven in turn by wrk (POST /v1/status on Redis
hits, 64 connections), alternating which goes first each round. Prints each round and the medians of
the server's CPU time per request, the figure that other load on a shared machine skews least, and the
median of the rounds' paired differences. Admission's delay target is raised for both, so that a busy
machine measures CPU instead of shedding. Used to price a change on the hot path (app/ops/metrics.py).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
from pathlib import Path

from loadtests.bench import BenchError
from loadtests.bench.data import prepare
from loadtests.bench.servers import free_port, pinned_server
from loadtests.bench.status import Driver, Measured, cores


def _command(root: Path, port: int) -> list[str]:
    code = (
        f"import sys; sys.path.insert(0, {str(root)!r}); "
        f"from app.cli import main; sys.exit(main(['serve', '--port', '{port}']))"
    )
    return [sys.executable, "-c", code]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench.ab", description=__doc__)
    parser.add_argument("before", type=Path, help="a checkout (e.g. a git worktree of main)")
    parser.add_argument("after", type=Path, help="another checkout")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per run")
    parser.add_argument("--out", type=Path, default=Path("bench-results/ab"), help="folder for the servers' logs")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    server_core, wrk_core = cores()
    try:
        data = prepare()
    except BenchError as exc:
        print(f"ab: {exc}", file=sys.stderr)
        return 1
    # The two checkouts may know different limit buckets: give both only the status limit, unbounded.
    env = {**data.env, "HEALTHCODE_RATE_LIMITS": "citizen-backend.status=1000000", "HEALTHCODE_QUEUE_TARGET_MS": "5000"}
    driver = Driver(data, wrk_core)
    roots = {"before": args.before.resolve(), "after": args.after.resolve()}
    rounds: dict[str, list[Measured]] = {name: [] for name in roots}
    with contextlib.ExitStack() as stack:
        servers = {}
        for name, root in roots.items():
            port = free_port()
            servers[name] = stack.enter_context(
                pinned_server(_command(root, port), port=port, cpu=server_core, log=args.out / f"{name}.log", env=env)
            )
        for name in roots:
            driver.drive(name, servers[name], min(3.0, args.duration))  # warm-up
        for number in range(args.rounds):
            order = list(roots) if number % 2 == 0 else list(reversed(roots))
            for name in order:
                measured = driver.drive(name, servers[name], args.duration)
                rounds[name].append(measured)
                print(
                    f"round {number + 1} {name}: {measured.wrk.rate:,.0f} req/s, "
                    f"{measured.cpu_us_per_request:.1f} us CPU per request",
                    flush=True,
                )
    for name in roots:
        cpu = [m.cpu_us_per_request for m in rounds[name]]
        print(f"{name}: median {statistics.median(cpu):.1f} us CPU per request over {len(cpu)} rounds")
    paired = [
        a.cpu_us_per_request - b.cpu_us_per_request for b, a in zip(rounds["before"], rounds["after"], strict=True)
    ]
    print(f"after - before: median of paired rounds {statistics.median(paired):+.1f} us CPU per request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
