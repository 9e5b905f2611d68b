"""Test-registration codes, sample registration, and test results reported by sample id."""

from __future__ import annotations

import asyncpg
import orjson

from app.clients import add_client
from signing.encoding import b64url_decode
from tests.conftest import AppFactory
from tests.support import bearer
from tests.test_ingest_helpers import Api, ago, bad_checksum, csv_body, number, rejections, status_of, upload


async def issue_code(api: Api, citizen: str, i: int) -> str:
    r = await api.post("/v1/test-code", json={"id_type": "resident", "id_number": number(i)}, headers=bearer(citizen))
    assert r.status == 200, await r.text()
    body = await r.json()
    assert body["typ"] == "hct+jwt"
    token: str = body["token"]
    return token


async def test_code_flow(make_client: AppFactory, db: asyncpg.Connection, client_keys: dict[str, str]) -> None:
    collector = (await add_client(db, "collector", "agency", ("test",))).secret
    police = (await add_client(db, "police", "agency", ("population",))).secret
    api = await make_client()
    citizen = client_keys["citizen-backend"]
    token = await issue_code(api, citizen, 1)
    header, claims = (orjson.loads(b64url_decode(part)) for part in token.split(".")[:2])
    assert header["typ"] == "hct+jwt"
    # Only who and which code: no colour, pop-up or vaccination.
    assert set(claims) == {"iss", "sub", "cid", "iat", "exp"}

    # A test code is not a health code: the status verifier refuses it.
    r = await api.post(
        "/v1/verify", json={"token": token, "checkpoint": "gate-1"}, headers=bearer(client_keys["scanner"])
    )
    assert (await r.json())["valid"] is False

    r = await api.post("/v1/samples", json={"token": token, "sample_id": "S-0001"}, headers=bearer(collector))
    assert (r.status, await r.json()) == (201, {"sample_id": "S-0001", "registered": True})
    r = await api.post("/v1/samples", json={"token": token, "sample_id": "S-0001"}, headers=bearer(collector))
    assert (r.status, await r.json()) == (200, {"sample_id": "S-0001", "registered": False})
    assert await db.fetchval("SELECT count(*) FROM samples") == 1
    # The same sample id for someone else is a conflict; an agency without the test scope may not register.
    other = await issue_code(api, citizen, 2)
    r = await api.post("/v1/samples", json={"token": other, "sample_id": "S-0001"}, headers=bearer(collector))
    assert r.status == 409
    r = await api.post("/v1/samples", json={"token": other, "sample_id": "S-0002"}, headers=bearer(police))
    assert r.status == 403
    r = await api.post(
        "/v1/samples", json={"token": token[:-4] + "AAAA", "sample_id": "S-3"}, headers=bearer(collector)
    )
    assert (r.status, (await r.json())["field"]) == (422, "token")

    # The lab reports by sample id; an unknown sample is a rejected row.
    body = csv_body(
        "sample_id,sampled_at,result,lab",
        f"S-0001,{ago(hours=2)},positive,lab-a",
        f"S-9999,{ago(hours=2)},positive,lab-a",
    )
    status, batch = await upload(api, collector, "test", body)
    assert status == 202
    assert batch["counts"] == {"read": 2, "accepted": 1, "rejected": 1, "duplicates": 0, "corrected": 0, "retracted": 0}
    assert [(r["row"], r["field"], r["code"]) for r in await rejections(api, collector, batch["id"])] == [
        (2, "sample_id", "unknown_sample")
    ]
    person = await status_of(api, citizen, number(1))
    assert (person["colour"], person["reasons"]) == ("red", ["positive_test"])


async def test_code_needs_a_valid_identity(api: Api, client_keys: dict[str, str]) -> None:
    r = await api.post(
        "/v1/test-code", json={"id_number": bad_checksum(1)}, headers=bearer(client_keys["citizen-backend"])
    )
    assert r.status == 422
    r = await api.post("/v1/test-code", json={"id_number": number(1)}, headers=bearer(client_keys["agency"]))
    assert r.status == 403
