"""Text Postgres cannot store is refused at the edge, on every text field of every JSON route, in one place."""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from cache.keys import SCAN_STREAM
from tests.support import bearer
from tests.test_openapi import DOCUMENT, resolve

Api = TestClient[web.Request, web.Application]
PROBLEM = "application/problem+json"

# The client kind that may call each JSON route; a new JSON route fails the first test until it is listed.
ROUTE_KINDS = {
    "/v1/status": "citizen-backend",
    "/v1/test-code": "citizen-backend",
    "/v1/verify": "scanner",
    "/v1/samples": "agency",
    "/v1/appeals": "citizen-backend",
    "/v1/declarations": "citizen-backend",
    "/v1/appeals/{appeal_id}/decisions": "operator",
    "/v1/status/alert": "citizen-backend",
    "/demo/backend/status": "citizen-backend",  # takes no key; the one sent is ignored
    "/v1/relations": "citizen-backend",
    "/v1/relations/query": "citizen-backend",
    "/v1/relations/{relation_id}/end": "citizen-backend",
    "/v1/lookups/query": "citizen-backend",
    "/v1/credentials/shc": "citizen-backend",
    "/v1/venues": "operator",
    "/v1/checkins": "citizen-backend",
    "/v1/exposures": "agency",
}
# Routes called by other deployments, not clients: a request is authenticated (its assertion checked)
# before its body is read, so a client key gets 401 there. tests/test_federation.py checks their NUL refusal.
SERVER_TO_SERVER = frozenset({"/v1/peer/vaccinations"})
# A value each field accepts, so that only the field under test is wrong.
GOOD = {
    "id_type": "resident",
    "id_number": "11010519491231002X",
    "token": "a.b.c",
    "checkpoint": "cq-jiefangbei-gate-3",
    "sample_id": "S-2022-0001",
    "category": "other",
    "text": "please check my test",
    "contact_ref": "wx-msg-1",
    "reason": "lab mix-up",
    "colour": "green",
    "name": "李四",
    "phone": "13812345678",
    "scan_id": "gate3-0001",
    "person": "arrival_pending",
    "kind": "carer",
    "attestation_ref": "poa-2022-0412",
    "birth_date": "1990-01-01",
    "address": "重庆市渝中区解放碑",
    "area_code": "500103",
    "venue_token": "a.b.c",
    "venue_id": "v3q8ZtKpXm2Ra7wL",
}


def json_text_fields() -> list[tuple[str, str]]:
    """(route, field) for every string field of every documented JSON request body."""
    fields = []
    for path, item in DOCUMENT["paths"].items():
        for operation in item.values():
            body = operation.get("requestBody", {}).get("content", {}).get("application/json")
            if body is None or path in SERVER_TO_SERVER:
                continue
            for name, schema in resolve(body["schema"])["properties"].items():
                if resolve(schema).get("type") == "string":
                    fields.append((path, name))
    return fields


def nul_problem(path: str, field: str, detail: str) -> dict[str, Any]:
    return {
        "type": "/problems/invalid-field",
        "title": "A field of the request is invalid",
        "status": 422,
        "detail": detail,
        "instance": path,
        "field": field,
        "code": "nul_character",
    }


async def post(api: Api, key: str, path: str, body: bytes) -> Any:
    return await api.post(path, data=body, headers={**bearer(key), "Content-Type": "application/json"})


def test_every_json_route_is_covered() -> None:
    assert {route for route, _ in json_text_fields()} == set(ROUTE_KINDS)
    assert {field for _, field in json_text_fields()} <= set(GOOD)


@pytest.mark.parametrize(("path", "field"), json_text_fields())
async def test_nul_in_a_text_field_is_422_and_nothing_is_stored(
    api: Api, db: asyncpg.Connection, redis: Redis, client_keys: dict[str, str], path: str, field: str
) -> None:
    body = {name: GOOD[name] for route, name in json_text_fields() if route == path}
    body[field] = body[field][:3] + "\x00" + body[field][3:]
    # No such appeal or relation: the body is refused before the id is looked up.
    url = path.replace("{appeal_id}", "1").replace("{relation_id}", "1")
    r = await post(api, client_keys[ROUTE_KINDS[path]], url, orjson.dumps(body))
    assert r.status == 422, await r.text()
    assert await r.json(content_type=PROBLEM) == nul_problem(
        url, field, f"{field} must not contain the NUL character (U+0000)"
    )
    assert await redis.xlen(SCAN_STREAM) == 0
    stored = """SELECT (SELECT count(*) FROM subjects) + (SELECT count(*) FROM samples) + (SELECT count(*) FROM appeals)
        + (SELECT count(*) FROM declarations) + (SELECT count(*) FROM relations)"""
    assert await db.fetchval(stored) == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"token": "a.b.c", "checkpoint": "gate", "note": "x\\u0000"}', "note"),
        (b'{"token": "a.b.c", "checkpoint": "gate", "device": {"tags": ["ok", "\\u0000"]}}', "device.tags[1]"),
    ],
)
async def test_nul_anywhere_in_the_body_is_refused_and_named(
    api: Api, redis: Redis, client_keys: dict[str, str], body: bytes, field: str
) -> None:
    r = await post(api, client_keys["scanner"], "/v1/verify", body)
    assert r.status == 422, await r.text()
    assert await r.json(content_type=PROBLEM) == nul_problem(
        "/v1/verify", field, f"{field} must not contain the NUL character (U+0000)"
    )
    assert await redis.xlen(SCAN_STREAM) == 0


async def test_nul_in_a_member_name_is_refused(api: Api, client_keys: dict[str, str]) -> None:
    r = await post(api, client_keys["scanner"], "/v1/verify", b'{"token": "a.b.c", "checkpoint": "g", "a\\u0000": 1}')
    assert r.status == 422, await r.text()
    assert await r.json(content_type=PROBLEM) == nul_problem(
        "/v1/verify", "a\\u0000", "a member name must not contain the NUL character (U+0000)"
    )


async def test_an_escaped_backslash_before_u0000_is_not_a_nul(api: Api, client_keys: dict[str, str]) -> None:
    # The byte search finds `\u0000` here, but the value is a backslash and "u0000": accepted.
    r = await post(api, client_keys["scanner"], "/v1/verify", b'{"token": "a.b.c", "checkpoint": "gate\\\\u0000"}')
    assert r.status == 200, await r.text()
    assert (await r.json())["checkpoint"] == "gate\\u0000"


async def test_a_lone_surrogate_is_refused_by_the_parser(api: Api, client_keys: dict[str, str]) -> None:
    # The other code point class UTF-8 (and so Postgres text) cannot hold never reaches a handler.
    r = await post(api, client_keys["scanner"], "/v1/verify", b'{"token": "a.b.c", "checkpoint": "\\ud800"}')
    assert r.status == 400, await r.text()
    assert (await r.json(content_type=PROBLEM))["type"] == "/problems/malformed-request"


async def test_deep_nesting_is_walked_without_recursion(api: Api, client_keys: dict[str, str]) -> None:
    deep = b'{"token": "a.b.c", "checkpoint": "g", "x": ' + b"[" * 1000 + b'"\\u0000"' + b"]" * 1000 + b"}"
    r = await post(api, client_keys["scanner"], "/v1/verify", deep)
    assert r.status == 422, await r.text()
    assert (await r.json(content_type=PROBLEM))["field"] == "x" + "[0]" * 1000
