"""SMART Health Card export: checked by an independent implementation (PyJWT for the JWS, zlib for the
raw DEFLATE payload, the numeric QR decoded here by hand) against the card keys the service publishes."""

from __future__ import annotations

import zlib
from typing import Any

import asyncpg
import jwt
import orjson

from app.credentials import keys as card_keys
from app.http.appkeys import CREDENTIAL_KEYS, PG
from app.settings import Settings
from tests.conftest import AppFactory
from tests.support import bearer
from tests.test_ingest_helpers import Api, csv_body, number, upload


async def card_key(api: Api, db: asyncpg.Connection, settings: Settings) -> str:
    thumbprint = await card_keys.activate(db, await card_keys.new_key(db, settings.keys_dir))
    await api.app[CREDENTIAL_KEYS].refresh(api.app[PG])
    return thumbprint


async def person_with_records(api: Api, agency: str) -> None:
    await upload(api, agency, "population", csv_body("id_number,name", f"{number(1)},张三"))
    await upload(
        api,
        agency,
        "vaccination",
        csv_body(
            "id_number,product,dose,vaccinated_on",
            f"{number(1)},sinovac-coronavac,1,2021-05-01",
            f"{number(1)},pfizer-comirnaty,2,2021-09-01",
        ),
    )
    await upload(
        api,
        agency,
        "test",
        csv_body("id_number,sampled_at,result,lab", f"{number(1)},2022-06-01T08:00:00+08:00,negative,lab-1"),
    )


async def export(api: Api, secret: str, **body: Any) -> tuple[int, dict[str, Any]]:
    payload = {"id_number": number(1), "name": {"family": "Zhang", "given": ["San"]}, **body}
    r = await api.post("/v1/credentials/shc", json=payload, headers=bearer(secret))
    return r.status, await r.json()


def inflate(jws: str, key: jwt.PyJWK) -> dict[str, Any]:
    verified = jwt.api_jws.decode_complete(jws, key, algorithms=["ES256"])
    assert verified["header"] == {"zip": "DEF", "alg": "ES256", "kid": key.key_id}
    payload: dict[str, Any] = orjson.loads(zlib.decompress(verified["payload"], wbits=-15))
    return payload


def from_numeric(qr: str) -> str:
    assert qr.startswith("shc:/")
    digits = qr[5:]
    return "".join(chr(int(digits[i : i + 2]) + 45) for i in range(0, len(digits), 2))


async def test_a_card_verifies_with_an_independent_implementation(
    api: Api, db: asyncpg.Connection, settings: Settings, client_keys: dict[str, str]
) -> None:
    thumbprint = await card_key(api, db, settings)
    await person_with_records(api, client_keys["agency"])
    status, body = await export(api, client_keys["citizen-backend"])
    assert status == 200, body
    [jws] = body["verifiableCredential"]
    assert from_numeric(body["qr"]) == jws and body["qr"][5:].isdigit()
    r = await api.get("/shc/.well-known/jwks.json")
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    [jwk] = (await r.json())["keys"]
    assert jwk["kid"] == thumbprint
    key = jwt.PyJWK(jwk)
    card = inflate(jws, key)
    assert card["iss"] == body["issuer"] and card["iss"].endswith("/shc")
    assert card["vc"]["type"] == [
        "https://smarthealth.cards#health-card",
        "https://smarthealth.cards#immunization",
        "https://smarthealth.cards#laboratory",
    ]
    entries = [e["resource"] for e in card["vc"]["credentialSubject"]["fhirBundle"]["entry"]]
    assert entries[0] == {
        "resourceType": "Patient",
        "name": [{"family": "Zhang", "given": ["San"]}],
        "birthDate": "1990-01-01",
    }
    assert [(e["vaccineCode"]["coding"][0]["code"], e["occurrenceDateTime"]) for e in entries[1:3]] == [
        ("511", "2021-05-01"),
        ("208", "2021-09-01"),
    ]
    assert entries[3]["code"]["coding"] == [{"system": "http://loinc.org", "code": "94500-6"}]
    assert entries[3]["valueCodeableConcept"]["coding"][0]["code"] == "260385009"
    assert entries[3]["effectiveDateTime"] == "2022-06-01T00:00:00Z"
    # Nothing identifying is stored: the name was used for the card only.
    assert await db.fetchval("SELECT count(*) FROM subjects WHERE masked_name LIKE 'Zhang%'") == 0


async def test_rotation_keeps_cards_of_the_retired_key_verifiable_until_revoked(
    api: Api, db: asyncpg.Connection, settings: Settings, client_keys: dict[str, str]
) -> None:
    first = await card_key(api, db, settings)
    await person_with_records(api, client_keys["agency"])
    old_card = (await export(api, client_keys["citizen-backend"]))[1]["verifiableCredential"][0]
    second = await card_key(api, db, settings)
    new_card = (await export(api, client_keys["citizen-backend"]))[1]["verifiableCredential"][0]
    assert jwt.get_unverified_header(new_card)["kid"] == second
    published = {k["kid"]: k for k in (await (await api.get("/shc/.well-known/jwks.json")).json())["keys"]}
    assert set(published) == {first, second}
    inflate(old_card, jwt.PyJWK(published[first]))
    await card_keys.set_state(db, first[:12], "revoked")
    await api.app[CREDENTIAL_KEYS].refresh(api.app[PG])
    assert [k["kid"] for k in (await (await api.get("/shc/.well-known/jwks.json")).json())["keys"]] == [second]


async def test_card_problems(
    make_client: AppFactory, db: asyncpg.Connection, settings: Settings, client_keys: dict[str, str]
) -> None:
    api = await make_client()
    status, body = await export(api, client_keys["citizen-backend"])
    assert (status, body["type"]) == (503, "/problems/credential-unavailable")
    await card_key(api, db, settings)
    status, body = await export(api, client_keys["citizen-backend"])
    assert (status, body["type"]) == (404, "/problems/subject-not-found")
    status, body = await export(api, client_keys["citizen-backend"], name="Zhang San")
    assert (status, body["field"], body["code"]) == (422, "name", "wrong_type")
    status, body = await export(api, client_keys["citizen-backend"], id_type="passport", id_number="E12345678")
    assert (status, body["field"], body["code"]) == (422, "birth_date", "missing")
    r = await api.options("/shc/.well-known/jwks.json")
    assert r.status == 204 and r.headers["Access-Control-Allow-Origin"] == "*"
