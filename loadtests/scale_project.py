"""How `make scale`'s figures grow with the population, and what a larger one would need.

    python -m loadtests.scale_project SMALL/scale.json LARGE/scale.json [--people 32000000]

For each figure of two runs at N1 < N2 people: the growth exponent k = log(f2 / f1) / log(N2 / N1)
(1 is linear; above 1, each person costs more as the province grows; below 1, a fixed cost is still a
large share) and two projections to the target size N: the power law f2 * (N / N2) ** k, and the
straight line through both points, a + b * N (a fixed cost plus a cost per person: for totals, the
usual model, given for totals only). Per-subject figures and latencies get the power law alone (k near
0: constant); a straight line through two noisy latencies means nothing. A projection from
two points is a trend, not a measurement: it says where to look, and a run at the target size says
what is true.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

CHONGQING = 32_000_000

# (label, unit, how to read it from a scale.json)
Figure = tuple[str, str, Callable[[dict[str, Any]], float]]


def _load(kind: str) -> Callable[[dict[str, Any]], float]:
    return lambda r: float(r["load"][kind]["seconds"])


FIGURES: tuple[Figure, ...] = (
    ("export CSV", "s", lambda r: float(r["export_seconds"])),
    *((f"load {kind}", "s", _load(kind)) for kind in ("population", "vaccination", "test", "travel", "designation")),
    ("load, all kinds", "s", lambda r: float(r["load_seconds"])),
    ("Redis used_memory", "GiB", lambda r: r["redis"]["used_memory_bytes"] / 2**30),
    ("Redis bytes/subject", "B", lambda r: float(r["redis"]["bytes_per_subject"])),
    (
        "Postgres tables + indexes",
        "GiB",
        lambda r: (r["postgres"]["table_bytes"] + r["postgres"]["index_bytes"]) / 2**30,
    ),
    ("Postgres bytes/subject", "B", lambda r: float(r["postgres"]["bytes_per_subject"])),
    ("Postgres database on disk", "GiB", lambda r: r["postgres"]["database_bytes"] / 2**30),
    ("status hit p50", "ms", lambda r: float(r["hits"]["p50_ms"])),
    ("status hit p99", "ms", lambda r: float(r["hits"]["p99_ms"])),
    ("status miss p50", "ms", lambda r: float(r["misses"]["p50_ms"])),
    ("status miss p99", "ms", lambda r: float(r["misses"]["p99_ms"])),
)


def project(small: dict[str, Any], large: dict[str, Any], people: int) -> list[dict[str, Any]]:
    n1, n2 = small["people"], large["people"]
    if not 0 < n1 < n2:
        raise ValueError(f"give the smaller run first and two sizes that differ ({n1:,} and {n2:,})")
    rows = []
    for label, unit, read in FIGURES:
        f1, f2 = read(small), read(large)
        k = math.log(f2 / f1) / math.log(n2 / n1) if f1 > 0 and f2 > 0 else 1.0
        slope = (f2 - f1) / (n2 - n1)
        rows.append({"figure": label, "unit": unit, "small": f1, "large": f2, "exponent": k,
                     "projected": f2 * (people / n2) ** k,
                     "linear": f2 + slope * (people - n2) if unit in ("s", "GiB") else None})  # fmt: skip
    return rows


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.2f}"


def render(rows: list[dict[str, Any]], n1: int, n2: int, people: int) -> str:
    head = f"| figure | {n1:,} people | {n2:,} people | growth exponent | {people:,}: power law | {people:,}: line |"
    lines = [head, "|---|---|---|---|---|---|"]
    for r in rows:
        unit = r["unit"]
        lines.append(
            f"| {r['figure']} ({unit}) | {_fmt(r['small'])} | {_fmt(r['large'])} | {r['exponent']:.2f} "
            f"| {_fmt(r['projected'])} | {'' if r['linear'] is None else _fmt(r['linear'])} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.scale_project", description=__doc__.split("\n\n")[0])
    parser.add_argument("small", type=Path, help="scale.json of the smaller run")
    parser.add_argument("large", type=Path, help="scale.json of the larger run")
    parser.add_argument("--people", type=int, default=CHONGQING, help="target size (32000000, Chongqing)")
    args = parser.parse_args(argv)
    small, large = (json.loads(p.read_text()) for p in (args.small, args.large))
    try:
        rows = project(small, large, args.people)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    print(render(rows, small["people"], large["people"], args.people))
    return 0


if __name__ == "__main__":
    sys.exit(main())
