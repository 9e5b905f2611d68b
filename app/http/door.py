"""Refusals at the door: under overload a request is answered 503 from the bytes it arrived in, before
aiohttp parses it, builds a request object or starts a handler.

Refused through aiohttp, a request costs about what serving a cache hit costs (parse, request object,
handler task, middleware, response): in an open-loop run at 3x capacity here the refusals took the
whole core and goodput fell to 0-4 %. A refusal here costs a search for the end of the head and one
write of a prepared answer.

Only the simple case is refused here; everything else takes aiohttp's path, where the middleware's
admission control still decides (app/http/middleware.py):

- the connection is idle: its last answer is written and no request is queued or being handled, so the
  refusal cannot overtake an earlier answer;
- the bytes are exactly one HTTP/1.1 request to a route in `DOOR_ROUTES` with its whole body
  (Content-Length), without Connection, Expect or Transfer-Encoding headers: nothing left for the parser;
- admission control says no (`Admission.door_open`): the door is engaged (the queue is overloaded, or
  the door refused within the last interval) and the requests handled, waiting and let in this turn
  fill every slot. While it is not engaged the request is not even looked at.

The connection stays open (keep-alive), as after any other answer.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from email.utils import formatdate
from typing import Any, Final

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from app.http.admission import Admission
from app.http.problems import PROBLEM_CONTENT_TYPE, SHED_RETRY_AFTER, overloaded_body

# Quick routes whose path has no parameters: a refused request's route is its request line's start.
DOOR_ROUTES: Final = frozenset({b"POST /v1/status", b"POST /v1/verify", b"POST /v1/test-code", b"POST /v1/samples"})
# Each route's (method, path), as answers are counted.
_LABELS: Final = {route: (method, path) for route in DOOR_ROUTES for method, _, path in [route.decode().partition(" ")]}
_VERSION: Final = b" HTTP/1.1"
_HEAD_END: Final = b"\r\n\r\n"
# Headers that change how the connection or the body is handled: such requests take aiohttp's path.
_UNSIMPLE: Final = (b"\nconnection:", b"\nexpect:", b"\ntransfer-encoding:", b"\nupgrade:")
_LENGTH: Final = b"\ncontent-length:"


def refusal_answers(date: str) -> tuple[bytes, ...]:
    return tuple(
        b"HTTP/1.1 503 Service Unavailable\r\n"
        + f"Content-Type: {PROBLEM_CONTENT_TYPE}\r\nRetry-After: {seconds}\r\nDate: {date}\r\n".encode()
        + f"Content-Length: {len(body := overloaded_body(seconds))}\r\n\r\n".encode()
        + body
        for seconds in SHED_RETRY_AFTER
    )


def _simple_head(head: bytes) -> tuple[bytes, int] | None:
    """(route, body length) when `head` (up to the blank line) is a simple request to a door route."""
    line_end = head.find(b"\r\n", 0, 64)
    if line_end < 0 or not head.endswith(_VERSION, 0, line_end):
        return None
    route = head[: line_end - len(_VERSION)]
    if route not in DOOR_ROUTES:
        return None
    fields = head[line_end:].lower()
    if any(name in fields for name in _UNSIMPLE):
        return None
    start = fields.find(_LENGTH)
    if start < 0:
        return None
    stop = fields.find(b"\r", start)
    value = fields[start + len(_LENGTH) : stop if stop >= 0 else len(fields)].strip()
    return (route, int(value)) if value.isdigit() else None


# Heads seen lately and what they are. One client's requests repeat their head byte for byte (only the
# body differs), so a refusal mostly costs a dictionary look-up instead of reading the head: 2.4 us of
# the ~13 us a refusal cost here (wrk, one core). Bounded: emptied when full, so unique heads only cost
# the reading they would have cost anyway.
_HEADS_KEPT: Final = 1024
_heads: dict[bytes, tuple[bytes, int] | None] = {}


def simple_route(data: bytes) -> bytes | None:
    """`b"POST /v1/status"` when `data` is exactly one simple request to a door route, else None."""
    end = data.find(_HEAD_END)
    if end < 0:
        return None  # the head continues in a later segment
    head = data[:end]
    try:
        verdict = _heads[head]
    except KeyError:
        verdict = _simple_head(head)
        if len(_heads) >= _HEADS_KEPT:
            _heads.clear()
        _heads[head] = verdict
    if verdict is None or end + len(_HEAD_END) + verdict[1] != len(data):
        return None  # not the door's, a body still to come, or a second request behind this one
    return verdict[0]


class Door:
    """The door's decision and its prepared answers (their Date header is renewed once a second)."""

    def __init__(self, admission: Admission, count: Callable[[str, str, int], None]) -> None:
        self.admission = admission
        self._count = count  # counted by (method, route, status), like every other answer
        self._second = 0
        self._answers = refusal_answers(formatdate(usegmt=True))

    def refusal(self, route: bytes) -> bytes | None:
        """The answer to a simple request to `route` if the door refuses it, else None."""
        if self.admission.door_open():
            return None
        second = int(time.time())
        if second != self._second:
            self._second = second
            self._answers = refusal_answers(formatdate(second, usegmt=True))
        self.admission.shed += 1
        self.admission.shed_at_door += 1
        self._count(*_LABELS[route], 503)
        return random.choice(self._answers)


class DoorRequestHandler(RequestHandler):
    """aiohttp's connection protocol, with the door in front of its parser.

    It reads aiohttp's private `_messages` and keep-alive fields and wraps `_handle_request` (aiohttp
    3.x); tests/test_door.py exercises each on the aiohttp installed."""

    def __init__(self, manager: web.Server, *, door: Door, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._door = door
        # A request let through is counted as arriving until the middleware takes it (`arrived`), so
        # that many let through in one turn of the event loop count against the door at once.
        self.arriving = False
        # Requests parsed and requests answered on this connection: equal when every answer is written.
        self._parsed = 0
        self._answered = 0

    def data_received(self, data: bytes) -> None:
        # Idle: every request parsed so far has its answer written, so a refusal cannot overtake one.
        # (Not "the serving task waits for the next request": it is still tidying up after writing an
        # answer when a quick client's next request arrives, which was most requests under overload.)
        idle = self._parsed == self._answered and self.transport is not None
        route = simple_route(data) if idle and self._door.admission.door_engaged() else None
        if route is not None:
            answer = self._door.refusal(route)
            if answer is not None:
                assert self.transport is not None
                self.transport.write(answer)
                if self._keepalive_timeout:
                    self._next_keepalive_close_time = self._loop.time() + self._keepalive_timeout
                return
            self.arriving = True
            self._door.admission.arriving += 1
        queued = len(self._messages)
        super().data_received(data)
        self._parsed += len(self._messages) - queued  # nothing takes messages off during the call

    async def _handle_request(self, *args: Any, **kwargs: Any) -> tuple[web.StreamResponse, bool]:
        """aiohttp's, counting answers: it returns once the answer is written (or failed)."""
        try:
            return await super()._handle_request(*args, **kwargs)
        finally:
            self._answered += 1

    def arrived(self) -> None:
        if self.arriving:
            self.arriving = False
            self._door.admission.arriving -= 1

    def connection_lost(self, exc: BaseException | None) -> None:
        self.arrived()  # a request that never reached the middleware no longer counts
        super().connection_lost(exc)


def arrived(request: web.BaseRequest) -> None:
    """Called by the middleware as a request enters it: it no longer counts as arriving."""
    protocol = request.protocol
    if isinstance(protocol, DoorRequestHandler):
        protocol.arrived()


class _DoorServer(web.Server):
    """aiohttp's connection factory, making `DoorRequestHandler`s (the door rides in its kwargs)."""

    def __call__(self) -> RequestHandler:
        return DoorRequestHandler(self, loop=self._loop, **self._kwargs)


class DoorRunner(web.AppRunner):
    """An AppRunner whose connections have the door: `DoorRunner(app, door=Door(...), ...)`."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # The Application builds its Server itself (with the kwargs that carry the door); only which
        # protocol class that server makes differs, so its class is narrowed rather than rebuilt.
        server.__class__ = _DoorServer
        return server
