"""A miss has a budget: a Postgres that is up but cannot answer in time (a statement stuck behind a lock,
a pool with no free connection) gets the caller a 503 with Retry-After, not a request that hangs."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import orjson

from app.http.appkeys import PG
from app.settings import Settings
from tests.conftest import AppFactory
from tests.support import bearer
from tests.test_api_status import insert_status

PROBLEM = "application/problem+json"
NUMBER = "500103199003071239"


async def test_a_miss_stuck_behind_a_lock_answers_503_within_its_budget(
    make_client: AppFactory, db: asyncpg.Connection, settings: Settings, client_keys: dict[str, str]
) -> None:
    await insert_status(db, settings.pepper, NUMBER)
    api = await make_client(pg_miss_timeout_seconds=0.3, pg_retry_pause_seconds=0.0)
    body = orjson.dumps({"id_number": NUMBER})
    headers = {**bearer(client_keys["citizen-backend"]), "Content-Type": "application/json"}
    async with db.transaction():
        await db.execute("LOCK TABLE statuses IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        async with asyncio.timeout(5):  # without a budget the miss waits for the lock as long as it is held
            r = await api.post("/v1/status", data=body, headers=headers)
        assert r.status == 503, await r.text()
        assert time.monotonic() - started < 1.0
        assert int(r.headers["Retry-After"]) >= 1
        assert (await r.json(content_type=PROBLEM))["type"] == "/problems/dependency-unavailable"
    # The lock gone, the same miss is answered.
    r = await api.post("/v1/status", data=body, headers=headers)
    assert r.status == 200, await r.text()


async def test_a_miss_with_no_free_pool_connection_answers_503_and_readyz_does_not_hang(
    make_client: AppFactory, db: asyncpg.Connection, settings: Settings, client_keys: dict[str, str]
) -> None:
    await insert_status(db, settings.pepper, NUMBER)
    api = await make_client(pg_pool_min=1, pg_pool_max=1, pg_acquire_timeout_seconds=0.2, pg_retry_pause_seconds=0.0)
    headers = {**bearer(client_keys["citizen-backend"]), "Content-Type": "application/json"}
    async with api.app[PG].acquire():  # held by slow work elsewhere
        started = time.monotonic()
        async with asyncio.timeout(5):
            r = await api.post("/v1/status", data=orjson.dumps({"id_number": NUMBER}), headers=headers)
            ready = await api.get("/readyz")
        assert r.status == 503, await r.text()
        assert ready.status == 503, await ready.text()
        assert (await ready.json(content_type=PROBLEM))["unreachable"] == ["postgres"]
        assert time.monotonic() - started < 1.5
    r = await api.post("/v1/status", data=orjson.dumps({"id_number": NUMBER}), headers=headers)
    assert r.status == 200, await r.text()
