"""`make bench`: throughput benchmarks, run by `python -m loadtests.bench`.

Each benchmark is a module of this package with `run(args: argparse.Namespace) -> dict[str, Any]`.
`run` prints its result lines to stdout as it goes (progress and diagnostics to stderr), returns its
figures as a JSON-able dict, and raises `BenchError` with a message a newcomer can act on when it
cannot run. `__main__` runs every module present and writes all figures to `OUT/bench.json`.
"""

from __future__ import annotations


class BenchError(RuntimeError):
    """The benchmark could not run or its answers were wrong; the message says what to do."""
