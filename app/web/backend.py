"""POST /demo/backend/status: the reference mini-program backend behind the demo's code page.

A real mini-program backend knows its logged-in user's identity document and holds a citizen-backend
client key; its page asks it for the code, it calls POST /v1/status server to server and hands the page
the answer plus the QR's modules. The page never sees a client key or an identity number. This route
plays that backend for the demo's synthetic people only: the key and the people are the files
`healthcode demo` writes beside the signing keys (demo-clients.json, demo-people.json), and without
them it answers 404. It calls the service over HTTP on the address the request came in on (never on
the Host header's, which a caller chooses), exactly as a separate backend would.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Final

import aiohttp
import orjson
from aiohttp import web

from app.http.appkeys import SETTINGS
from app.http.handlers.common import json_response, read_json_object, required_string
from app.http.problems import PROBLEM_CONTENT_TYPE, NotFound
from signing.qr import module_matrix

routes = web.RouteTableDef()

CLIENTS_FILE: Final = "demo-clients.json"
PEOPLE_FILE: Final = "demo-people.json"
_UPSTREAM_TIMEOUT: Final = aiohttp.ClientTimeout(total=5)


def write_demo_people(keys_dir: Path, people: dict[str, str]) -> Path:
    """The demo's example person per situation, for this route (owner-only, like the client keys)."""
    path = keys_dir / PEOPLE_FILE
    path.write_text(json.dumps(people, indent=2))
    path.chmod(0o600)
    return path


def _demo_files(keys_dir: Path) -> tuple[str, dict[str, str]]:
    try:
        key = json.loads((keys_dir / CLIENTS_FILE).read_text())["citizen-backend"]
        people = json.loads((keys_dir / PEOPLE_FILE).read_text())
    except (OSError, ValueError, KeyError):
        raise NotFound("the reference backend serves the demo's people only; run `healthcode demo` first") from None
    return str(key), {str(k): str(v) for k, v in people.items()}


def _own_address(request: web.Request) -> str:
    transport = request.transport
    sockname = transport.get_extra_info("sockname") if transport is not None else None
    if not isinstance(sockname, tuple):  # a Unix socket, or a connection already gone
        raise NotFound("the reference backend serves over TCP only")
    host, port = sockname[0], sockname[1]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def qr_rows(token: str) -> list[str]:
    """The QR's modules as rows of 0 and 1 (quiet zone included), for the page to paint in its colour."""
    return ["".join("1" if dark else "0" for dark in row) for row in module_matrix(token)]


@routes.post("/demo/backend/status")
async def demo_status(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    person = required_string(body, "person", max_length=64)
    key, people = _demo_files(request.app[SETTINGS].keys_dir)
    number = people.get(person)
    if number is None:
        raise NotFound(f"no demo person {person!r}; choose one of {', '.join(sorted(people))}")
    service, document = _own_address(request), {"id_type": "resident", "id_number": number}
    headers = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession(timeout=_UPSTREAM_TIMEOUT) as session:
        async with session.post(f"{service}/v1/status", json=document, headers=headers) as upstream:
            raw = await upstream.read()
            if upstream.status != 200:
                return _passed_on(upstream.status, raw, upstream.headers.get("Retry-After"))
        answer = orjson.loads(raw)
        answer["alert"] = None
        if answer["popup"]:  # only then: the alert reads Postgres, the status does not
            async with session.post(f"{service}/v1/status/alert", json=document, headers=headers) as upstream:
                # Without the details the page still shows the pop-up and the clearing rule.
                if upstream.status == 200:
                    answer["alert"] = orjson.loads(await upstream.read())["alert"]
    answer["qr"] = qr_rows(answer["token"])
    # The page schedules its refresh from this clock, not its own, which may be wrong.
    answer["now"] = int(time.time())
    return json_response(answer, headers={"Cache-Control": "no-store"})


def _passed_on(status: int, raw: bytes, retry_after: str | None) -> web.Response:
    """The service's own problem, passed on as it came (a 503 keeps its Retry-After)."""
    return web.Response(
        status=status,
        body=raw,
        content_type=PROBLEM_CONTENT_TYPE,
        headers={"Retry-After": retry_after} if retry_after else None,
    )
