"""Postgres down, for real: a server of this test's own is stopped (immediate) under the app and started
again. Hits keep answering from Redis, misses get a 503 with Retry-After within the miss budget, the
log gets one line when Postgres goes and one when it is back, and /readyz and /metrics say which."""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from app.db import recreate_database
from app.dev import servers as devservers
from app.settings import Settings
from tests.conftest import AppFactory
from tests.support import bearer
from tests.test_api_status import insert_status

Api = TestClient[web.Request, web.Application]
PROBLEM = "application/problem+json"
CACHED = "500103199003071239"  # in Postgres and, after one look-up, in Redis
STORED = "11010519491231002X"  # in Postgres only: a miss
MISS_BOUND_SECONDS = 1.5  # the miss budget below (1.0 s) plus scheduling slack

pytestmark = pytest.mark.slow


class OwnPostgres:
    """A Postgres this test starts, stops and restarts on one port; nobody else's server is touched."""

    def __init__(self) -> None:
        # Not pytest's tmp_path: its parent is mode 0700, and as root the Postgres user must pass through.
        self.root = Path(tempfile.mkdtemp(prefix="healthcode-pgdown-"))
        self.state = devservers.StateDir(self.root / ".healthcode")
        self.port = devservers.free_port()

    def start(self) -> None:
        self.state.ensure()
        # start_postgres reuses a recorded port when it is free: the app's DSN must stay valid.
        self.state.write_servers({"postgres": {"kind": "embedded", "port": self.port}})
        assert devservers.start_postgres(self.state) == self.port

    def stop_immediate(self) -> None:
        pg_ctl = str(devservers.pg_bin("pg_ctl"))
        devservers.run_pg([pg_ctl, "-D", str(self.state.pg_data), "-m", "immediate", "-w", "stop"], self.state)
        devservers.wait_until(lambda: not devservers.port_open(self.port), 15, "postgres to close its port")

    def remove(self) -> None:
        devservers.stop_postgres(self.state)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[OwnPostgres]:
    server = OwnPostgres()
    try:
        server.start()
        yield server
    finally:
        server.remove()


@pytest.fixture(scope="module")
def database_url(own_postgres: OwnPostgres) -> str:
    """Overrides the session's database: every fixture of this module uses the test's own server."""
    url = f"postgresql://postgres@127.0.0.1:{own_postgres.port}/healthcode_down"
    asyncio.run(recreate_database(url))
    return url


async def post_status(api: Api, key: str, number: str) -> tuple[Any, float]:
    started = time.monotonic()
    r = await api.post(
        "/v1/status",
        data=orjson.dumps({"id_number": number}),
        headers={**bearer(key), "Content-Type": "application/json"},
    )
    return r, time.monotonic() - started


def lines(caplog: pytest.LogCaptureFixture, pattern: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if re.search(pattern, r.getMessage())]


async def assert_uploads_unavailable(api: Api, key: str) -> None:
    """Uploads and batch reads answer 503 naming Postgres, not 500."""
    agency = {**bearer(key), "Content-Type": "text/csv"}
    uploads = [
        await api.post("/v1/batches?kind=test", data=b"id_number,sampled_at,result,lab\n", headers=agency)
        for _ in range(3)  # the first may find an idle pooled connection, later ones must make a new one
    ]
    for r in [*uploads, await api.get("/v1/batches/1", headers=agency)]:
        assert r.status == 503, await r.text()
        assert (await r.json(content_type=PROBLEM))["dependency"] == "postgres"


async def test_postgres_stopped_hits_answer_misses_503_and_it_recovers(
    own_postgres: OwnPostgres,
    make_client: AppFactory,
    db: asyncpg.Connection,
    settings: Settings,
    client_keys: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    await insert_status(db, settings.pepper, CACHED, colour="red", reasons=("confirmed",))
    await insert_status(db, settings.pepper, STORED, colour="yellow", reasons=("secondary_contact",))
    await db.close()
    api = await make_client(pg_acquire_timeout_seconds=0.5, pg_miss_timeout_seconds=1.0, pg_retry_pause_seconds=0.2)
    key = client_keys["citizen-backend"]
    r, _ = await post_status(api, key, CACHED)
    assert r.status == 200, await r.text()
    token = (await r.json())["token"]

    caplog.set_level(logging.INFO)
    await asyncio.to_thread(own_postgres.stop_immediate)

    for _ in range(20):
        r, _ = await post_status(api, key, CACHED)
        assert r.status == 200, await r.text()
        assert (await r.json())["colour"] == "red"
    verify = await api.post(
        "/v1/verify", json={"token": token, "checkpoint": "gate-1"}, headers=bearer(client_keys["scanner"])
    )
    assert verify.status == 200, await verify.text()
    assert (await verify.json())["current_colour"] == "red"

    answers = await asyncio.gather(*(post_status(api, key, STORED) for _ in range(20)))
    for r, seconds in answers:
        assert r.status == 503, await r.text()
        assert seconds < MISS_BOUND_SECONDS
        assert 2 <= int(r.headers["Retry-After"]) <= 4
        body = await r.json(content_type=PROBLEM)
        assert (body["type"], body["dependency"]) == ("/problems/dependency-unavailable", "postgres")
    for _ in range(5):  # later misses, after the pause, still 503 and still quick
        r, seconds = await post_status(api, key, STORED)
        assert (r.status, seconds < MISS_BOUND_SECONDS) == (503, True), await r.text()

    await assert_uploads_unavailable(api, client_keys["agency"])

    ready = await api.get("/readyz")
    assert ready.status == 503, await ready.text()
    assert (await ready.json(content_type=PROBLEM))["unreachable"] == ["postgres"]
    metrics = await (await api.get("/metrics")).text()
    assert 'healthcode_dependency_up{dependency="postgres"} 0' in metrics
    assert 'healthcode_dependency_up{dependency="redis"} 1' in metrics

    # One line for the outage, however many requests it failed; no traceback at all.
    assert len(lines(caplog, r"^postgres unavailable")) == 1
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info] == []

    await asyncio.to_thread(own_postgres.start)
    deadline = time.monotonic() + 20
    while True:
        r, _ = await post_status(api, key, STORED)
        if r.status == 200:
            break
        assert r.status == 503 and time.monotonic() < deadline, await r.text()
        await asyncio.sleep(0.05)  # polling a server coming back: nothing to wait on instead
    assert (await r.json())["colour"] == "yellow"
    assert (await api.get("/readyz")).status == 200
    metrics = await (await api.get("/metrics")).text()
    assert 'healthcode_dependency_up{dependency="postgres"} 1' in metrics
    assert 'healthcode_dependency_down_total{dependency="postgres"} 1' in metrics
    assert len(lines(caplog, r"^postgres available again")) == 1
    assert len(lines(caplog, r"^postgres unavailable")) == 1
