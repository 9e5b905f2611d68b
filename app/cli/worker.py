"""`healthcode worker`: batch processing in a process of its own (any number of them, on any host)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from typing import Any, Final

from app.settings import Settings

# After SIGTERM the batch at hand gets this long to finish; then it is cancelled, and another worker
# takes over the part it held (nothing is merged twice).
STOP_GRACE_SECONDS: Final = 10.0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 < value <= 60:
        raise argparse.ArgumentTypeError(f"must be more than 0 and at most 60, not {value:g}")
    return value


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "worker",
        help="process uploaded batches (merge, recompute in parts, refresh Redis) and sweep expired statuses",
        description="Runs until SIGTERM or SIGINT. Start as many as you like, on any host: they share "
        "batches and the parts of a large batch's recompute through Postgres. Set "
        "HEALTHCODE_EMBEDDED_WORKER=0 on the API processes to leave all batch work to workers.",
    )
    parser.add_argument("--poll-seconds", type=_seconds, default=0.5, help="how often to look for new work (0.5)")
    parser.add_argument(
        "--part-rows",
        type=_positive,
        default=None,
        help="rows of a batch per recompute part, for batches this worker merges (default 100,000)",
    )
    parser.set_defaults(run=worker)


async def worker(args: argparse.Namespace, settings: Settings) -> int:
    from app.ingest.parts import PART_ROWS
    from app.ingest.worker import open_worker

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with open_worker(settings, part_rows=args.part_rows or PART_ROWS) as work:
        work.poll_seconds = args.poll_seconds
        print("healthcode worker: looking for batches", flush=True)
        running = asyncio.create_task(work.run(stop))
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if running.done():
            running.result()  # a failure it could not handle ends the process with its traceback
        try:
            await asyncio.wait_for(asyncio.shield(running), STOP_GRACE_SECONDS)
        except TimeoutError:
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
    print(f"healthcode worker: stopped after {work.batches} batches", flush=True)
    return 0
