"""Per-client limits on every authorised route, through the running app: 429 with Retry-After, shared
through Redis, one client's flood leaving another client alone."""

from __future__ import annotations

from datetime import date, timedelta

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from app.clients import add_client, set_client_limits
from app.http.appkeys import CLIENTS, PG, RATE_LIMITER, STATUS_LOADER
from app.identity import resident_check_char
from cache.rate_limit import Rate
from tests.conftest import AppFactory
from tests.support import bearer
from tests.test_openapi import assert_documented

Api = TestClient[web.Request, web.Application]
PROBLEM = "application/problem+json"
# No refill to speak of during a test: a bucket's burst is what a client gets.
SLOW = 0.001


def resident(i: int) -> str:
    born = date(1990, 1, 1) + timedelta(days=i // 1000)
    first17 = f"500101{born:%Y%m%d}{i % 1000:03d}"
    return first17 + resident_check_char(first17)


async def test_an_enumeration_from_one_citizen_backend_is_stopped_and_another_is_unaffected(
    make_client: AppFactory, db: asyncpg.Connection, client_keys: dict[str, str]
) -> None:
    api = await make_client(rate_limits=(("citizen-backend", "status", Rate(SLOW, 5)),))
    attacker = bearer(client_keys["citizen-backend"])
    other = bearer((await add_client(db, "other-backend", "citizen-backend")).secret)
    await api.app[CLIENTS].refresh(api.app[PG])

    answers = []
    for i in range(40):
        r = await api.post("/v1/status", json={"id_number": resident(i)}, headers=attacker)
        answers.append(r.status)
        if i < 3:  # the other client keeps getting its answers meanwhile
            mine = await api.post("/v1/status", json={"id_number": resident(1000 + i)}, headers=other)
            assert mine.status == 404, await mine.text()

    assert answers == [404] * 5 + [429] * 35
    # What was refused reached neither Postgres nor the cache's loader.
    assert api.app[STATUS_LOADER].reads == 5 + 3
    r = await api.post("/v1/status", json={"id_number": resident(99)}, headers=attacker)
    assert r.status == 429
    assert int(r.headers["Retry-After"]) >= 1
    body = await assert_documented(r, "/v1/status", "post")
    assert (body["type"], body["limit"]) == ("/problems/rate-limited", "status")
    assert "client test-citizen-backend has used its status limit (0.001 a second, bursts of 5)" in body["detail"]
    metrics = await (await api.get("/metrics")).text()
    assert "healthcode_rate_limit_denied_total 36\n" in metrics
    # Malformed guesses count too: an enumeration cannot go on by sending bad checksums.
    r = await api.post("/v1/status", json={"id_number": resident(1)[:-1] + "0"}, headers=attacker)
    assert r.status == 429
    # The other client has all but its three look-ups left.
    for i in range(2):
        r = await api.post("/v1/status", json={"id_number": resident(2000 + i)}, headers=other)
        assert r.status == 404


async def test_limits_are_shared_by_processes(make_client: AppFactory, client_keys: dict[str, str]) -> None:
    limits = (("scanner", "verify", Rate(SLOW, 3)),)
    first, second = await make_client(rate_limits=limits), await make_client(rate_limits=limits)
    scanner = bearer(client_keys["scanner"])
    statuses = []
    for api in (first, second, first, second):
        r = await api.post("/v1/verify", json={"token": "x.y.z", "checkpoint": "gate"}, headers=scanner)
        statuses.append(r.status)
    assert statuses == [200, 200, 200, 429]


async def test_a_client_can_have_limits_of_its_own(
    make_client: AppFactory, db: asyncpg.Connection, client_keys: dict[str, str]
) -> None:
    api = await make_client()
    await set_client_limits(db, "test-scanner", {"verify": Rate(SLOW, 2)})
    await api.app[CLIENTS].refresh(api.app[PG])
    scanner = bearer(client_keys["scanner"])
    statuses = [
        (await api.post("/v1/verify", json={"token": "x.y.z", "checkpoint": "gate"}, headers=scanner)).status
        for _ in range(3)
    ]
    assert statuses == [200, 200, 429]


ROUTES = [
    ("citizen-backend", "status", "post", "/v1/status", "/v1/status", {"json": {"id_number": resident(1)}}),
    ("citizen-backend", "test-code", "post", "/v1/test-code", "/v1/test-code", {"json": {"id_number": resident(1)}}),
    ("citizen-backend", "qr", "get", "/v1/qr.png?token=x.y.z", "/v1/qr.png", {}),
    ("citizen-backend", "qr", "get", "/v1/qr.svg?token=x.y.z", "/v1/qr.svg", {}),
    ("scanner", "verify", "post", "/v1/verify", "/v1/verify", {"json": {"token": "x.y.z", "checkpoint": "gate"}}),
    ("agency", "samples", "post", "/v1/samples", "/v1/samples", {"json": {"token": "x.y.z", "sample_id": "s-1"}}),
    (
        "agency",
        "uploads",
        "post",
        "/v1/batches?kind=test",
        "/v1/batches",
        {"data": b"", "headers": {"Content-Type": "text/csv"}},
    ),
    ("agency", "batch-reads", "get", "/v1/batches/1", "/v1/batches/{batch_id}", {}),
    ("agency", "batch-reads", "get", "/v1/batches/1/rejections", "/v1/batches/{batch_id}/rejections", {}),
    ("citizen-backend", "appeals", "post", "/v1/appeals", "/v1/appeals", {"json": {"id_number": resident(1)}}),
    ("citizen-backend", "appeals", "get", "/v1/appeals/1", "/v1/appeals/{appeal_id}", {}),
    ("operator", "appeals", "get", "/v1/appeals", "/v1/appeals", {}),
    ("operator", "appeals", "post", "/v1/appeals/1/decisions", "/v1/appeals/{appeal_id}/decisions", {"json": {}}),
    ("citizen-backend", "relations", "post", "/v1/relations", "/v1/relations", {"json": {"id_number": resident(1)}}),
    ("citizen-backend", "relations", "post", "/v1/relations/query", "/v1/relations/query", {"json": {}}),
    ("citizen-backend", "relations", "post", "/v1/relations/1/end", "/v1/relations/{relation_id}/end", {"json": {}}),
    ("citizen-backend", "relations", "post", "/v1/lookups/query", "/v1/lookups/query", {"json": {}}),
    (
        "citizen-backend",
        "status",
        "post",
        "/v1/status",
        "/v1/status",
        {"json": {"id_number": resident(1), "on_behalf_of": {"id_number": resident(2)}}},
    ),
]


@pytest.mark.parametrize(
    ("kind", "bucket", "method", "path", "documented", "request_args"),
    ROUTES,
    ids=[f"{r[0]}:{r[2]}:{r[3]}" for r in ROUTES],
)
async def test_every_authorised_route_is_limited(
    make_client: AppFactory,
    db: asyncpg.Connection,
    client_keys: dict[str, str],
    kind: str,
    bucket: str,
    method: str,
    path: str,
    documented: str,
    request_args: dict[str, object],
) -> None:
    api = await make_client()
    await set_client_limits(db, f"test-{kind}", {bucket: Rate(0, 0)})  # this client may not call it at all
    await api.app[CLIENTS].refresh(api.app[PG])
    args: dict[str, object] = dict(request_args)
    headers = {**bearer(client_keys[kind]), **args.pop("headers", {})}  # type: ignore[dict-item]

    r = await api.request(method.upper(), path, headers=headers, **args)  # type: ignore[arg-type]

    assert r.status == 429, await r.text()
    body = await r.json(content_type=PROBLEM)
    assert (body["type"], body["limit"]) == ("/problems/rate-limited", bucket)
    assert int(r.headers["Retry-After"]) >= 1
    await assert_documented(r, documented, method)
    assert api.app[RATE_LIMITER].denied == 1
