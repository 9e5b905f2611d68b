"""`python -m app.dev.chaos.flood URL KEY NUMBERS_FILE SECONDS CONNECTIONS`: status requests, closed loop.

Run in a process of its own so that its busy event loop does not slow the latency probe of the
process that judges the service; prints one JSON object of answers by status code (and shed answers
without Retry-After) on its last line.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from collections import Counter
from pathlib import Path

import aiohttp


async def flood(url: str, key: str, numbers: list[str], seconds: float, connections: int) -> dict[str, object]:
    answers: Counter[str] = Counter()
    bare_sheds = 0
    deadline = time.monotonic() + seconds
    headers = {"Authorization": f"Bearer {key}"}
    rng = random.Random(11)

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal bare_sheds
        while time.monotonic() < deadline:
            try:
                async with session.post(url, json={"id_number": rng.choice(numbers)}, headers=headers) as r:
                    await r.read()
                    answers[str(r.status)] += 1
                    if r.status in (429, 503) and "Retry-After" not in r.headers:
                        bare_sheds += 1
            except (aiohttp.ClientError, TimeoutError) as exc:
                answers[exc.__class__.__name__] += 1

    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(10)) as session:
        started = time.monotonic()
        await asyncio.gather(*(worker(session) for _ in range(connections)))
        elapsed = time.monotonic() - started
    return {"answers": dict(answers), "bare_sheds": bare_sheds, "seconds": elapsed}


def main() -> None:
    url, key, numbers_file, seconds, connections = sys.argv[1:6]
    numbers = Path(numbers_file).read_text().split()
    result = asyncio.run(flood(url, key, numbers, float(seconds), int(connections)))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
