"""Open-loop load on the status, verify and upload paths, with what each answer was.

Requests start on a fixed schedule whatever the answers (an open loop: a slow server does not slow the
offered load, as with real phones), each with a deadline. Every verify of a valid token is a scan the
service must store; every row of an accepted upload is a row it must keep.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import aiohttp

REQUEST_TIMEOUT = 5.0


@dataclass
class Tally:
    """What the service answered during one scenario."""

    answers: Counter[str] = field(default_factory=Counter)  # "status 200", "verify 503", "upload 202", ...
    unexpected: list[str] = field(default_factory=list)  # 5xx other than a 503 with Retry-After, failures
    admitted_ms: list[float] = field(default_factory=list)  # latency of answers that were not shed
    scans_sent: int = 0
    batches: list[str] = field(default_factory=list)  # batch locations of accepted uploads
    tokens: list[str] = field(default_factory=list)

    def p99_ms(self) -> float:
        if not self.admitted_ms:
            return 0.0
        ordered = sorted(self.admitted_ms)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]

    def count(self, code_prefix: str) -> int:
        return sum(n for answer, n in self.answers.items() if answer.split()[1].startswith(code_prefix))


class Driver:
    """Sends the mix of requests against one base URL with the demo clients' keys."""

    def __init__(self, base_url: str, keys: dict[str, str], numbers: list[str], tag: str, seed: int = 7) -> None:
        self.base_url = base_url
        self.keys = keys
        self.numbers = numbers
        # Scans and rows of this driver are told apart by these, so that one scenario's late writes
        # (a rewrite of kept scans, a retried batch) never count in another's.
        self.checkpoint = f"chaos-{tag}"
        self.lab = f"chaos-{tag}"
        self.random = random.Random(seed)
        self.tally = Tally()
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Driver:
        connector = aiohttp.TCPConnector(limit=0, force_close=False)
        self._session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(REQUEST_TIMEOUT))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "use the driver as `async with`"
        return self._session

    async def run(self, seconds: float, rate: float, *, uploads_per_second: float = 1.0) -> None:
        """Offer `rate` status/verify requests a second for `seconds`, and a small upload now and then."""
        tasks: set[asyncio.Task[None]] = set()
        start = time.monotonic()
        sent = 0
        next_upload = 0.0
        while (elapsed := time.monotonic() - start) < seconds:
            while sent < elapsed * rate:
                sent += 1
                kind = self.verify if self.tally.tokens and self.random.random() < 0.3 else self.status
                _spawn(tasks, kind())
            if uploads_per_second and elapsed >= next_upload:
                next_upload += 1 / uploads_per_second
                _spawn(tasks, self.upload())
            await asyncio.sleep(0.002)  # the schedule's tick
        if tasks:
            await asyncio.wait(tasks)

    async def status(self) -> None:
        number = self.random.choice(self.numbers)
        body = await self._call("status", "/v1/status", self.keys["citizen-backend"], json={"id_number": number})
        token = None if body is None else body.get("token")
        if isinstance(token, str):
            self.tally.tokens.append(token)
            del self.tally.tokens[:-1000]

    async def verify(self, checkpoint: str | None = None) -> None:
        token = self.random.choice(self.tally.tokens)
        body = await self._call(
            "verify",
            "/v1/verify",
            self.keys["scanner"],
            json={"token": token, "checkpoint": checkpoint or self.checkpoint},
        )
        if body is not None and body.get("valid") is True:
            self.tally.scans_sent += 1

    async def upload(self, rows: int = 20) -> None:
        sampled = (datetime.now(UTC) - timedelta(hours=3)).isoformat()
        lines = ["id_number,sampled_at,result,lab"]
        lines += [f"{self.random.choice(self.numbers)},{sampled},negative,{self.lab}" for _ in range(rows)]
        data = ("\n".join(lines) + "\n").encode()
        body = await self._call(
            "upload", "/v1/batches?kind=test", self.keys["agency"], data=data, content_type="text/csv"
        )
        if body is not None and isinstance(body.get("id"), int):
            self.tally.batches.append(f"/v1/batches/{body['id']}")

    async def _call(
        self,
        kind: str,
        path: str,
        key: str,
        *,
        json: object = None,
        data: bytes | None = None,
        content_type: str | None = None,
    ) -> dict[str, object] | None:
        headers = {"Authorization": f"Bearer {key}"}
        if content_type:
            headers["Content-Type"] = content_type
        started = time.monotonic()
        try:
            async with self.session.post(self.base_url + path, json=json, data=data, headers=headers) as r:
                answer = await r.json(content_type=None) if r.content_length != 0 else None
                status, retry_after = r.status, r.headers.get("Retry-After")
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            self.tally.answers[f"{kind} failed"] += 1
            self.tally.unexpected.append(f"{kind}: {exc.__class__.__name__}")
            return None
        self.tally.answers[f"{kind} {status}"] += 1
        shed = status in (429, 503)
        if shed and not retry_after:
            self.tally.unexpected.append(f"{kind}: {status} without Retry-After")
        elif status >= 500 and status != 503:
            self.tally.unexpected.append(f"{kind}: {status}")
        if not shed:
            self.tally.admitted_ms.append((time.monotonic() - started) * 1000)
        return answer if isinstance(answer, dict) and status < 300 else None


def _spawn(tasks: set[asyncio.Task[None]], coro: Coroutine[object, object, None]) -> None:
    task = asyncio.ensure_future(coro)
    tasks.add(task)
    task.add_done_callback(tasks.discard)
