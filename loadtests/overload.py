"""Capacity, then open-loop overload: what a server admits, how fast, and how it refuses the rest.

Closed-loop tools (wrk, Locust) slow down with the server, so they never offer more than it can take;
this driver sends at a fixed rate whatever the answers, the way a crowd of phones does. It first
measures capacity (2xx answers per second with CONNECTIONS requests always outstanding), then offers
FACTOR times that rate for a few seconds, timing each request from the moment it was due (not from
when a free connection let it go), so queueing in the client counts against the server too.

    python -m loadtests.overload --url http://127.0.0.1:8080 --key hc_… --body '{"id_number": "…"}'

prints one JSON object: capacity, goodput (2xx per second) under overload, admitted p50/p99, shed
answers by status with their Retry-After values. A raw asyncio protocol, not aiohttp's client: at
10,000+ requests a second the client must cost far less than the server it drives.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson
import uvloop

CAPACITY_CONNECTIONS = 64
OVERLOAD_CONNECTIONS = 1000


def build_request(host: str, port: int, key: str, path: str, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


@dataclass(slots=True)
class Answer:
    due: float
    status: int
    latency: float  # seconds from when the request was due to when its answer was complete
    retry_after: str | None


@dataclass
class Tally:
    answers: list[Answer] = field(default_factory=list)
    errors: int = 0  # requests never answered (not sent in time, or their connection failed)
    counted_from: float = 0.0  # answers to requests due earlier are left out of the summary


_LENGTH = b"\r\nContent-Length:"
_RETRY_AFTER = b"\r\nRetry-After:"


def _header(buffer: bytearray, name: bytes, end: int) -> bytes | None:
    """The value of header `name` (with its colon) in the head ending at `end`, or None."""
    at = buffer.find(name, 0, end)
    if at < 0:
        at = buffer.lower().find(name.lower(), 0, end)  # a server that spells it otherwise than aiohttp does
        if at < 0:
            return None
    stop = buffer.find(b"\r\n", at + len(name), end + 2)
    return bytes(buffer[at + len(name) : stop]).strip()


class Connection(asyncio.Protocol):
    """One keep-alive connection, one request at a time; answers parsed just enough to time them."""

    def __init__(self, request: bytes, tally: Tally, idle: collections.deque[Connection]) -> None:
        self.request = request
        self.tally = tally
        self.idle = idle
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.due = 0.0
        self.busy = False
        self.closed = asyncio.get_running_loop().create_future()
        # When set, called as an answer completes: the due time of the next request to send at once.
        self.follow_up: Callable[[], float | None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not its subclasses
        self.idle.append(self)

    def send(self, due: float) -> None:
        assert self.transport is not None
        self.due, self.busy = due, True
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        # Looked up, not parsed: at three times capacity this driver shares its core with Redis and
        # Postgres, and every microsecond it spends on an answer is one they wait.
        buffer = self.buffer
        buffer += data
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            length = _header(buffer, _LENGTH, end)
            if len(buffer) < end + 4 + int(length or b"0"):
                return
            status = int(buffer[9:12])  # "HTTP/1.1 503 ..."
            retry = _header(buffer, _RETRY_AFTER, end)
            del buffer[: end + 4 + int(length or b"0")]
            now = time.perf_counter()
            self.tally.answers.append(
                Answer(self.due, status, now - self.due, None if retry is None else retry.decode())
            )
            self.busy = False
            if self.follow_up is not None and (due := self.follow_up()) is not None:
                self.send(due)  # straight on: a polling pause here would idle the server
            else:
                self.idle.append(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.busy:
            self.tally.errors += 1
        with contextlib.suppress(ValueError):
            self.idle.remove(self)
        if not self.closed.done():
            self.closed.set_result(None)


async def _open(
    host: str, port: int, request: bytes, tally: Tally, count: int
) -> tuple[list[Connection], collections.deque[Connection]]:
    loop = asyncio.get_running_loop()
    idle: collections.deque[Connection] = collections.deque()
    made = []
    for start in range(0, count, 100):  # in groups, so the server's accept backlog is not overrun
        results = await asyncio.gather(
            *(
                loop.create_connection(lambda: Connection(request, tally, idle), host, port)
                for _ in range(min(100, count - start))
            )
        )
        made += [protocol for _, protocol in results]
    return made, idle


async def _close(connections: list[Connection]) -> None:
    for connection in connections:
        if connection.transport is not None:
            connection.transport.close()
    await asyncio.gather(*(c.closed for c in connections))


async def closed_loop(host: str, port: int, request: bytes, *, connections: int, seconds: float) -> Tally:
    """Every connection sends its next request as soon as the last is answered."""
    tally = Tally()
    made, idle = await _open(host, port, request, tally, connections)
    end = time.perf_counter() + seconds

    def follow_up() -> float | None:
        now = time.perf_counter()
        return now if now < end else None

    try:
        for connection in made:
            connection.follow_up = follow_up
        while idle:
            idle.popleft().send(time.perf_counter())
        await _settle(made, end + 5.0)
    finally:
        await _close(made)
    return tally


async def _settle(made: list[Connection], deadline: float) -> None:
    """Wait (bounded) until no request is outstanding."""
    while any(c.busy for c in made) or time.perf_counter() < deadline - 5.0:
        if time.perf_counter() > deadline:
            return
        await asyncio.sleep(0.005)


async def open_loop(
    host: str, port: int, request: bytes, *, rate: float, connections: int, seconds: float, settle: float
) -> Tally:
    """Requests are due at `rate` a second whatever the answers; one that finds no free connection
    waits for one, and that wait counts in its latency. Only requests due after the first `settle`
    seconds are counted: the steady state under overload, not the server's first reaction to it."""
    tally = Tally()
    made, idle = await _open(host, port, request, tally, connections)
    start = time.perf_counter()
    tally.counted_from = start + settle
    seconds += settle
    sent = 0
    backlog: collections.deque[float] = collections.deque()

    def follow_up() -> float | None:
        return backlog.popleft() if backlog else None

    try:
        for connection in made:
            connection.follow_up = follow_up
        while (now := time.perf_counter()) < start + seconds:
            due_count = int((now - start) * rate)
            backlog.extend(start + i / rate for i in range(sent, due_count))
            sent = due_count
            while backlog and idle:
                idle.popleft().send(backlog.popleft())
            await asyncio.sleep(0.0005)
        tally.errors += len(backlog)  # due within the window but never sent
        backlog.clear()
        await _settle(made, time.perf_counter() + 5.0)
    finally:
        await _close(made)
    return tally


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def summarise(tally: Tally, seconds: float) -> dict[str, Any]:
    answers = [a for a in tally.answers if a.due >= tally.counted_from]
    admitted = [a.latency for a in answers if 200 <= a.status < 300]
    refused = [a for a in answers if a.status == 503]
    return {
        "answers": len(answers),
        "errors": tally.errors,
        "by_status": {str(k): v for k, v in sorted(collections.Counter(a.status for a in answers).items())},
        "goodput_per_s": round(len(admitted) / seconds, 1),
        "admitted_p50_ms": round(percentile(admitted, 0.50) * 1000, 2),
        "admitted_p99_ms": round(percentile(admitted, 0.99) * 1000, 2),
        "shed_p99_ms": round(percentile([a.latency for a in refused], 0.99) * 1000, 2),
        "shed_without_retry_after": sum(1 for a in refused if a.retry_after is None),
        "retry_after_values": sorted({a.retry_after for a in refused if a.retry_after is not None}),
    }


async def measure(
    url: str, key: str, path: str, body: bytes, *, factor: float, seconds: float, warmup: float
) -> dict[str, Any]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = build_request(host, port, key, path, body)
    await closed_loop(host, port, request, connections=CAPACITY_CONNECTIONS, seconds=warmup)
    capacity_tally = await closed_loop(host, port, request, connections=CAPACITY_CONNECTIONS, seconds=seconds)
    capacity = summarise(capacity_tally, seconds)
    rate = capacity["goodput_per_s"] * factor
    overloaded = await open_loop(
        host, port, request, rate=rate, connections=OVERLOAD_CONNECTIONS, seconds=seconds, settle=warmup
    )
    overload = summarise(overloaded, seconds)
    return {"capacity": capacity, "offered_per_s": round(rate, 1), "factor": factor, "overload": overload}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.overload", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="base URL of the server, e.g. http://127.0.0.1:8080")
    parser.add_argument("--key", required=True, help="a client key of the kind the route wants")
    parser.add_argument("--path", default="/v1/status", help="the POST route to drive")
    parser.add_argument(
        "--body", required=True, help='its JSON body, e.g. {"id_number": "…"} of a person whose status is cached'
    )
    parser.add_argument("--factor", type=float, default=3.0, help="offered load as a multiple of capacity")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each measured phase")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of load not counted before each phase")
    args = parser.parse_args(argv)
    body = args.body.encode()
    work = measure(args.url, args.key, args.path, body, factor=args.factor, seconds=args.seconds, warmup=args.warmup)
    result = uvloop.run(work)
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
