"""/v1/verify's optional scan_id: a scan sent again (an offline scanner's queue re-sent, an answer lost on
the way) is answered again but recorded once."""

from __future__ import annotations

import time
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis

from app.http.appkeys import SCANS
from app.settings import Settings
from cache.keys import scan_id_key
from tests.test_api_verify import CHECKPOINT, Api, drain_scans, insert_person, post_verify, scan_rows, token_for


async def verify(api: Api, key: str, body: dict[str, Any]) -> dict[str, Any]:
    r = await post_verify(api, key, {"checkpoint": CHECKPOINT, **body})
    assert r.status == 200, await r.text()
    answer: dict[str, Any] = await r.json()
    return answer


async def test_a_scan_sent_twice_is_recorded_once(
    api: Api, db: asyncpg.Connection, settings: Settings, client_keys: dict[str, str]
) -> None:
    token = token_for(api, await insert_person(db, settings.pepper))
    key = client_keys["scanner"]
    first = await verify(api, key, {"token": token, "scan_id": "gate3-0001"})
    again = await verify(api, key, {"token": token, "scan_id": "gate3-0001"})
    other = await verify(api, key, {"token": token, "scan_id": "gate3-0002"})
    assert [(a["valid"], a["scan_id"], a["duplicate"]) for a in (first, again, other)] == [
        (True, "gate3-0001", False),
        (True, "gate3-0001", True),
        (True, "gate3-0002", False),
    ]
    assert api.app[SCANS].to_stream == 2
    assert await drain_scans(api, settings) == 2
    assert len(await scan_rows(db)) == 2


async def test_scan_ids_are_per_scanner_and_refused_scans_dedup_too(
    api: Api, db: asyncpg.Connection, settings: Settings, client_keys: dict[str, str], redis: Redis
) -> None:
    key = client_keys["scanner"]
    for _ in range(2):
        answer = await verify(api, key, {"token": "not.a.token", "scan_id": "x"})
    assert (answer["valid"], answer["duplicate"]) == (False, True)
    assert api.app[SCANS].refusals.counted == 1
    scanner = await db.fetchval("SELECT id FROM api_clients WHERE name = 'test-scanner'")
    assert 0 < await redis.ttl(scan_id_key(scanner, "x")) <= 7 * 24 * 3600


@pytest.mark.parametrize("scan_id", ["", "a" * 65, "has space", "a:b", 7, None])
async def test_a_bad_scan_id_is_refused(api: Api, client_keys: dict[str, str], scan_id: object) -> None:
    r = await post_verify(api, client_keys["scanner"], {"token": "t", "checkpoint": CHECKPOINT, "scan_id": scan_id})
    assert r.status == 422, await r.text()
    body = await r.json()
    assert (body["field"], body["code"]) == ("scan_id", "bad_scan_id")


async def test_a_queued_scan_is_checked_and_recorded_as_of_when_it_was_made(
    api: Api, db: asyncpg.Connection, settings: Settings, client_keys: dict[str, str]
) -> None:
    """Made offline at a gate with a then-valid token, sent ten minutes later after it expired."""
    subject = await insert_person(db, settings.pepper)
    now = int(time.time())
    token = token_for(api, subject, now=now - 600)  # valid from now - 600 to now - 300
    key = client_keys["scanner"]
    queued = await verify(api, key, {"token": token, "scan_id": "q-1", "scanned_at": now - 500})
    assert (queued["valid"], queued["reason"], queued["scanned_at"]) == (True, "ok", now - 500)
    late = await verify(api, key, {"token": token, "scan_id": "q-2"})
    assert (late["valid"], late["reason"]) == (False, "expired")
    assert await drain_scans(api, settings) == 1
    [row] = await scan_rows(db)
    assert (row["at"], row["valid"]) == (now - 500, True)


@pytest.mark.parametrize(
    ("extra", "code"),
    [
        ({"scanned_at": 1}, "scan_id_required"),
        ({"scan_id": "q", "scanned_at": "yesterday"}, "wrong_type"),
        ({"scan_id": "q", "scanned_at": 1.5}, "wrong_type"),
        ({"scan_id": "q", "scanned_at": -25 * 3600}, "out_of_range"),
        ({"scan_id": "q", "scanned_at": 3600}, "out_of_range"),
    ],
)
async def test_a_bad_scanned_at_is_refused(
    api: Api, client_keys: dict[str, str], extra: dict[str, Any], code: str
) -> None:
    if type(extra.get("scanned_at")) is int and "scan_id" in extra:
        extra = {**extra, "scanned_at": int(time.time()) + extra["scanned_at"]}
    r = await post_verify(api, client_keys["scanner"], {"token": "t", "checkpoint": CHECKPOINT, **extra})
    assert r.status == 422, await r.text()
    body = await r.json()
    assert (body["field"], body["code"]) == ("scanned_at", code)
