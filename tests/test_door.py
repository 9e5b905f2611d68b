"""The door: under overload a simple request is refused from its bytes, before aiohttp parses it; the
connection stays usable, and everything that is not simple takes aiohttp's path."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import asyncpg
import orjson
import pytest
from aiohttp import web

from app.dev.servers import free_port
from app.http import door
from app.http.app import create_app
from app.http.appkeys import FRONT_DOOR
from app.http.door import Door, DoorRunner, simple_route
from app.http.middleware import FrontDoor
from app.limits import unbounded
from app.settings import Settings
from tests.test_api_status import insert_status

NUMBER = "500103199003071239"
BODY = b'{"id_number": "500103199003071239"}'


def request(path: bytes = b"/v1/status", *, body: bytes = BODY, extra: bytes = b"", method: bytes = b"POST") -> bytes:
    head = method + b" " + path + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\n" + extra
    return head + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body


@pytest.mark.parametrize(
    ("data", "route"),
    [
        (request(), b"POST /v1/status"),
        (request(b"/v1/verify"), b"POST /v1/verify"),
        (request(extra=b"content-type: application/json\r\n"), b"POST /v1/status"),
        (request(b"/v1/batches"), None),  # uploads are the middleware's
        (request(b"/v1/status?x=1"), None),
        (request(b"/healthz", body=b"", method=b"GET"), None),
        (request().replace(b"HTTP/1.1", b"HTTP/1.0"), None),
        (request()[:-5], None),  # the body is still arriving
        (request()[:30], None),  # so is the head
        (request() + request(), None),  # a second request behind the first
        (request(extra=b"Connection: close\r\n"), None),
        (request(extra=b"Expect: 100-continue\r\n"), None),
        (request(extra=b"Transfer-Encoding: chunked\r\n"), None),
        (request().replace(b"Content-Length: 35", b"Content-Length: +35"), None),
        (request().replace(b"Content-Length: 35\r\n", b""), None),
    ],
)
def test_only_exactly_one_simple_request_to_a_quick_route_is_the_doors(data: bytes, route: bytes | None) -> None:
    assert simple_route(data) == route


def test_a_remembered_head_is_still_checked_against_the_bytes_that_follow_it() -> None:
    whole = request()
    assert simple_route(whole) == b"POST /v1/status"  # the head is remembered now
    assert simple_route(whole[:-1]) is None  # the same head, the body not all here yet
    assert simple_route(whole + b"x") is None  # the same head, more than its body behind it
    assert simple_route(whole) == b"POST /v1/status"


def test_heads_remembered_are_bounded() -> None:
    for number in range(3 * door._HEADS_KEPT):
        assert simple_route(request(extra=f"X-Request-ID: {number}\r\n".encode())) == b"POST /v1/status"
        assert len(door._heads) <= door._HEADS_KEPT


@pytest.fixture
async def served(
    settings: Settings, signing_key: str, client_keys: dict[str, str]
) -> AsyncIterator[tuple[str, int, FrontDoor]]:
    # Clients and keys are read at start-up: they exist first.
    app = create_app(replace(settings, rate_limits=unbounded()), background=False)
    front = app[FRONT_DOOR]
    runner = DoorRunner(app, door=Door(front.admission, front.count))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield "127.0.0.1", port, front
    finally:
        await runner.cleanup()


async def exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes
) -> tuple[int, dict[str, str], bytes]:
    writer.write(data)
    head = (await reader.readuntil(b"\r\n\r\n")).decode()
    lines = head.split("\r\n")
    headers = {name.lower(): value for name, value in (line.split(": ", 1) for line in lines[1:] if line)}
    body = await reader.readexactly(int(headers["content-length"]))
    return int(lines[0].split(" ")[1]), headers, body


async def test_a_closed_door_answers_503_keeps_the_connection_and_counts_the_refusal(
    served: tuple[str, int, FrontDoor], db: asyncpg.Connection, settings: Settings, client_keys: dict[str, str]
) -> None:
    host, port, front = served
    await insert_status(db, settings.pepper, NUMBER)
    gate = front.admission
    key = client_keys["citizen-backend"].encode()
    authorised = b"Authorization: Bearer " + key + b"\r\nContent-Type: application/json\r\n"
    status_request = request(extra=authorised).replace(b"Authorization: Bearer k\r\n", b"")
    reader, writer = await asyncio.open_connection(host, port)
    try:
        # Overloaded, every slot taken by requests the test pretends are being handled.
        gate.overloaded, gate.active = True, 2 * gate.concurrency
        status, headers, body = await exchange(reader, writer, status_request)
        assert status == 503
        assert headers["content-type"] == "application/problem+json"
        assert headers["retry-after"] in {"1", "2", "3"}
        assert "date" in headers
        problem = orjson.loads(body)
        assert (problem["status"], problem["type"]) == (503, "/problems/overloaded")
        assert (gate.shed, gate.shed_at_door, front.counts) == (1, 1, {("POST", "/v1/status", 503): 1})

        # Probes are never the door's, even while it refuses.
        status, _, _ = await exchange(reader, writer, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 200

        # The same connection, after the refusal: served, and no longer counted as arriving.
        gate.overloaded, gate.active = False, 0
        status, _, body = await exchange(reader, writer, status_request)
        assert status == 200, body
        assert orjson.loads(body)["colour"] in {"green", "yellow", "red"}
        assert gate.arriving == 0
    finally:
        writer.close()
        await writer.wait_closed()
