"""`python -m app.dev.chaos [--short] [--only NAME ...]`: run the fault suite and print what it saw.

Starts its own Postgres, Valkey and API (app/dev/chaos/stack.py), never the servers a developer or CI
runs, and ends only what it started. Prints a table per scenario, then `chaos: N scenarios, M failed`;
exits 1 if any failed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from app.dev.chaos.scenarios import FULL, SCENARIOS, SHORT, Outcome
from app.dev.chaos.stack import Stack


def table(outcome: Outcome) -> str:
    tally = outcome.tally
    lines = [f"== {outcome.name}: {'passed' if outcome.passed else 'FAILED'}"]
    answers = ", ".join(f"{answer}: {n}" for answer, n in sorted(tally.answers.items()))
    rows = [
        ("answers", answers or "none"),
        ("5xx (unexpected)", str(len([u for u in tally.unexpected if " 5" in u or ": 5" in u]))),
        ("unexpected answers", str(len(tally.unexpected))),
        ("scans sent / stored", f"{tally.scans_sent} / {outcome.scans_stored}"),
        ("rows accepted / stored", f"{outcome.rows_accepted} / {outcome.rows_stored}"),
        ("batches failed", str(outcome.batches_failed)),
        ("admitted p99", f"{tally.p99_ms() if outcome.admitted_p99_ms is None else outcome.admitted_p99_ms:.1f} ms"),
    ]
    rows += [("note", note) for note in outcome.notes]
    rows += [("problem", problem) for problem in outcome.problems]
    lines += [f"  {name:24} {value}" for name, value in rows]
    return "\n".join(lines)


async def run(short: bool, only: list[str]) -> list[Outcome]:
    size = SHORT if short else FULL
    names = only or list(SCENARIOS)
    stack = Stack(people=2000 if short else 10_000)
    outcomes = []
    try:
        started = time.monotonic()
        await stack.start()
        print(f"chaos: own servers and {stack.people:,} people ready in {time.monotonic() - started:.1f} s", flush=True)
        for name in names:
            started = time.monotonic()
            outcome = await SCENARIOS[name](stack, size)
            outcome.notes.append(f"took {time.monotonic() - started:.1f} s with settling")
            print(table(outcome), flush=True)
            outcomes.append(outcome)
    finally:
        await stack.close()
    return outcomes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.dev.chaos", description=__doc__)
    parser.add_argument("--short", action="store_true", help="smaller counts, as the test suite runs it")
    parser.add_argument("--only", action="append", default=[], choices=sorted(SCENARIOS), help="one scenario")
    args = parser.parse_args(argv)
    outcomes = asyncio.run(run(args.short, args.only))
    failed = sum(not o.passed for o in outcomes)
    print(f"chaos: {len(outcomes)} scenarios, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
