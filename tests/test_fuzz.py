"""Property-based fuzzing of every route in /openapi.json with Schemathesis, against a real server process.

Each operation is called with generated requests, with the key of the client kind it serves and with
the keys of the other kinds: no answer may be a 5xx, and every answer must match the document (status
code, content type, body schema, headers), and schema-invalid requests must be refused. Bounded: a few
dozen examples per operation.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import Case
from schemathesis.checks import negative_data_rejection, positive_data_acceptance

from app.db import drop_database, recreate_database
from app.dev.servers import free_port, wait_until
from tests.conftest import _with_path

pytestmark = pytest.mark.slow

DOCUMENT = Path(__file__).resolve().parent.parent / "app" / "http" / "openapi.json"


@schemathesis.serializer("application/x-ndjson")
def _ndjson(ctx: object, value: object) -> bytes:
    """An NDJSON upload: a list of objects is one per line; anything else is one line."""
    rows = value if isinstance(value, list) else [value]
    return b"".join(json.dumps(row).encode() + b"\n" for row in rows)


schema = schemathesis.openapi.from_path(str(DOCUMENT))
DATABASE = f"healthcode_fuzz_{os.getpid()}"

# The client kind each route serves; the others are tried too, and must be refused cleanly.
KIND_OF = {
    "/v1/status": "citizen-backend",
    "/v1/qr.png": "citizen-backend",
    "/v1/qr.svg": "citizen-backend",
    "/v1/test-code": "citizen-backend",
    "/v1/declarations": "citizen-backend",
    "/v1/verify": "scanner",
    "/v1/batches": "agency",
    "/v1/batches/{batch_id}": "agency",
    "/v1/batches/{batch_id}/rejections": "agency",
    "/v1/samples": "agency",
    "/v1/appeals/{appeal_id}": "operator",  # and the citizen backend that filed it
    "/v1/appeals/{appeal_id}/decisions": "operator",
    "/v1/status/alert": "citizen-backend",
    "/v1/operator/batches": "operator",
    "/v1/operator/keys": "operator",
    "/v1/relations": "citizen-backend",
    "/v1/relations/query": "citizen-backend",
    "/v1/relations/{relation_id}/end": "citizen-backend",
    "/v1/lookups/query": "citizen-backend",
    "/v1/venues": "operator",  # or an agency with the venue scope
    "/v1/venues/{venue_id}": "operator",
    "/v1/venues/{venue_id}/reissue": "operator",
    "/v1/venues/{venue_id}/poster.svg": "operator",
    "/v1/checkins": "citizen-backend",
    "/v1/exposures": "agency",
}
# Where one path serves a kind per method (citizens file appeals, operators list them).
KIND_OF_METHOD = {("POST", "/v1/appeals"): "citizen-backend", ("GET", "/v1/appeals"): "operator"}


class Server:
    def __init__(self, base_url: str, keys: dict[str, str]) -> None:
        self.base_url = base_url
        self.keys = keys


@pytest.fixture(scope="module")
def server(server_urls: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A demo deployment (keys, clients, people) served by a process of its own."""
    database_url = _with_path(server_urls[0], f"/{DATABASE}")
    asyncio.run(recreate_database(database_url))
    home = tmp_path_factory.mktemp("fuzz")
    (home / "pepper").write_bytes(os.urandom(32))
    (home / "handle-key").write_bytes(os.urandom(32))
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": server_urls[1],
        "HEALTHCODE_PEPPER_FILE": str(home / "pepper"),
        "HEALTHCODE_HANDLE_KEY_FILE": str(home / "handle-key"),
        "HEALTHCODE_KEYS_DIR": str(home / "keys"),
    }
    cli = [sys.executable, "-m", "app.cli"]
    subprocess.run([*cli, "demo", "--people", "50"], env=env, check=True, capture_output=True, timeout=120)
    keys = json.loads((home / "keys" / "demo-clients.json").read_text())
    port = free_port()
    with open(home / "api.log", "wb") as log:
        process = subprocess.Popen([*cli, "serve", "--port", str(port)], env=env, stdout=log, stderr=log)
    base_url = f"http://127.0.0.1:{port}"
    try:
        _until_ready(base_url, process)
        yield Server(base_url, keys)
    finally:
        process.terminate()
        process.wait(timeout=15)
        asyncio.run(drop_database(database_url))


def _until_ready(base_url: str, process: subprocess.Popen[bytes]) -> None:
    def ready() -> bool:
        assert process.poll() is None, "the server exited during start-up"
        try:
            return requests.get(f"{base_url}/readyz", timeout=1).status_code == 200
        except requests.ConnectionError:
            return False

    wait_until(ready, 60, "the fuzzed server to be ready")


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_5xx_and_every_answer_matches_the_document(case: Case[Any], server: Server) -> None:
    own = KIND_OF_METHOD.get((case.operation.method.upper(), case.operation.path), KIND_OF.get(case.operation.path))
    for kind in dict.fromkeys([own, *server.keys]) if own else [None]:
        headers = {"Authorization": f"Bearer {server.keys[kind]}"} if kind else {}
        response = case.call(base_url=server.base_url, headers=headers, timeout=10)
        assert response.status_code < 500, f"{kind}: {response.status_code} {response.text[:500]}"
        # Schema-valid is not always valid: an identity number's checksum, a date in the future or an
        # unknown sample are refused by rules no JSON Schema states, with a documented 4xx.
        excluded = [positive_data_acceptance]
        if case.operation.path == "/v1/batches":
            # A CSV body is any text: a "wrong type" body generated for it is still text, read as CSV.
            excluded.append(negative_data_rejection)
        case.validate_response(response, excluded_checks=excluded)
