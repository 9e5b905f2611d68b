"""`python -m loadtests.bench [--duration 10] [--out bench-results]`: every benchmark, then OUT/bench.json."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import re
import sys
from pathlib import Path
from typing import Any

from loadtests.bench import BenchError

# In the order they run; a module that is not there is skipped.
MODULES = ("status", "overload", "refusals", "processes", "ingest", "memory", "workers", "peers", "cluster")


def duration(text: str) -> float:
    """Seconds, from `10`, `10s`, `2m` or `1h`."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (try 10, 10s or 2m)")
    seconds = float(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600}[match[2]]
    if seconds <= 0:
        raise argparse.ArgumentTypeError("the duration must be positive")
    return seconds


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench", description=__doc__)
    parser.add_argument("--duration", type=duration, default=10.0, help="measured seconds per run (10)")
    parser.add_argument("--out", default="bench-results", help="folder for bench.json and server logs")
    parser.add_argument("--host", help="accepted for `make`; the benchmarks start their own servers")
    parser.add_argument("--workers", help="accepted for `make`; the benchmarks choose their own processes")
    parser.add_argument("--only", action="append", choices=MODULES, help="run only this benchmark (repeatable)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results: dict[str, Any] = {}
    for name in args.only or MODULES:
        if importlib.util.find_spec(f"loadtests.bench.{name}") is None:
            continue
        module = importlib.import_module(f"loadtests.bench.{name}")
        try:
            results[name] = module.run(args)
        except BenchError as exc:
            print(f"bench {name}: {exc}", file=sys.stderr)
            return 1
    path = Path(args.out) / "bench.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
