"""Place codes against the real app, Postgres and Redis: venues, posters, check-ins, exposures."""

from __future__ import annotations

import time
from typing import Any

import asyncpg
import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient

from app.clients import add_client
from app.http.appkeys import INGEST, SIGNER
from app.identity import Identity, pseudonym
from app.settings import Settings
from signing.encoding import b64url_decode, b64url_encode
from signing.keys import generate_private_key
from signing.records import KeyRecord
from signing.venues import sign_venue
from tests.conftest import AppFactory
from tests.support import bearer
from tests.test_openapi import assert_documented

Api = TestClient[web.Request, web.Application]
PROBLEM = "application/problem+json"
PEOPLE = ("500103199003071239", "11010519491231002X", "440305200002294564")
HOUR = 3600


@pytest.fixture
async def keys(db: asyncpg.Connection, client_keys: dict[str, str]) -> dict[str, str]:
    """The conftest clients plus a venue registrar, a CDC agency and an agency with neither scope."""
    extra = {
        "registrar": ("agency", ("venue",)),
        "registrar2": ("agency", ("venue",)),
        "cdc": ("agency", ("cdc",)),
        "plain": ("agency", ("test",)),
    }
    issued = {
        name: (await add_client(db, f"test-{name}", kind, scopes)).secret for name, (kind, scopes) in extra.items()
    }
    return client_keys | issued


@pytest.fixture
async def api(make_client: AppFactory, keys: dict[str, str]) -> Api:
    return await make_client()  # started after `keys`, so it knows every client


async def people(api: Api, keys: dict[str, str]) -> None:
    """Everyone in PEOPLE registered (green) through an ordinary population upload."""
    body = "id_number,name\n" + "".join(f"{n},张三\n" for n in PEOPLE)
    r = await api.post(
        "/v1/batches?kind=population", data=body, headers={**bearer(keys["agency"]), "Content-Type": "text/csv"}
    )
    assert r.status == 202, await r.text()
    await api.app[INGEST].wait((await r.json())["id"])


async def register(api: Api, keys: dict[str, str], who: str = "registrar", **fields: Any) -> dict[str, Any]:
    body = {"name": "解放碑步行街", "address": "重庆市渝中区解放碑", "area_code": "500103"} | fields
    r = await api.post("/v1/venues", json=body, headers=bearer(keys[who]))
    assert r.status == 201, await r.text()
    venue: dict[str, Any] = await r.json()
    assert r.headers["Location"] == f"/v1/venues/{venue['id']}"
    return venue


async def checkin(api: Api, keys: dict[str, str], token: str, number: str = PEOPLE[0]) -> ClientResponse:
    return await api.post(
        "/v1/checkins", json={"venue_token": token, "id_number": number}, headers=bearer(keys["citizen-backend"])
    )


async def test_a_venue_is_registered_with_a_signed_code_and_a_printable_poster(api: Api, keys: dict[str, str]) -> None:
    venue = await register(api, keys, name="<火锅> & 茶馆")
    r = await api.get(f"/v1/venues/{venue['id']}", headers=bearer(keys["registrar"]))
    assert (await assert_documented(r, "/v1/venues/{venue_id}", "get"))["token"]
    assert venue["name"] == "<火锅> & 茶馆" and venue["area_code"] == "500103" and venue["serial"] == 1
    assert venue["typ"] == "hcv+jwt" and venue["token"].count(".") == 2
    r = await api.get(venue["poster"], headers=bearer(keys["registrar"]))
    assert r.status == 200, await r.text()
    assert r.content_type == "image/svg+xml"
    svg = await r.text()
    assert svg.startswith("<?xml") and "<path" in svg and "场所码" in svg
    assert "&lt;火锅&gt; &amp; 茶馆" in svg  # escaped: a name cannot inject markup
    # An operator sees every venue; another agency none but its own.
    assert (await api.get(f"/v1/venues/{venue['id']}", headers=bearer(keys["operator"]))).status == 200
    r = await api.get(f"/v1/venues/{venue['id']}", headers=bearer(keys["registrar2"]))
    assert r.status == 404 and (await r.json())["type"] == "/problems/venue-not-found"


async def test_registration_refusals(api: Api, keys: dict[str, str]) -> None:
    for junk in ("%00", "v" + "x" * 60, "vshort"):  # never reaches Postgres: a 404, not a 500
        r = await api.get(f"/v1/venues/{junk}/poster.svg", headers=bearer(keys["operator"]))
        assert r.status == 404 and (await r.json())["type"] == "/problems/venue-not-found"
    r = await api.post(
        "/v1/venues", json={"name": "a", "address": "b", "area_code": "500103"}, headers=bearer(keys["plain"])
    )
    assert r.status == 403 and (await r.json())["type"] == "/problems/forbidden"
    r = await api.post("/v1/venues", json={"name": "a", "address": "b"}, headers=bearer(keys["citizen-backend"]))
    assert r.status == 403
    for body, field, code in (
        ({"name": "a", "address": "b", "area_code": "990000"}, "area_code", "unknown_area_code"),
        ({"name": "a", "address": "b"}, "area_code", "missing"),
        ({"name": " ", "address": "b", "area_code": "500103"}, "name", "wrong_type"),
        ({"name": "a", "address": "b", "area_code": "500103", "x": 1}, "x", "unknown_member"),
        ({"name": "店 500103199003071239", "address": "b", "area_code": "500103"}, "name", "identity_number"),
    ):
        r = await api.post("/v1/venues", json=body, headers=bearer(keys["registrar"]))
        assert r.status == 422, await r.text()
        assert r.content_type == PROBLEM
        problem = await r.json()
        assert (problem["field"], problem["code"]) == (field, code)


async def test_a_check_in_answers_the_status_and_keeps_the_visit_by_pseudonym_only(
    api: Api, keys: dict[str, str], db: asyncpg.Connection, settings: Settings
) -> None:
    await people(api, keys)
    venue = await register(api, keys)
    r = await checkin(api, keys, venue["token"])
    assert r.status == 200, await r.text()
    answer = await assert_documented(r, "/v1/checkins", "post")
    assert answer["colour"] == "green" and answer["token"] and answer["id_number"].startswith("5")
    assert answer["venue"] == {"id": venue["id"], "name": venue["name"], "area_code": "500103"}
    rows = await db.fetch("SELECT * FROM venue_visits")
    assert len(rows) == 1
    assert bytes(rows[0]["pseudonym"]) == pseudonym(Identity("resident", PEOPLE[0]), settings.pepper)
    assert PEOPLE[0] not in repr(dict(rows[0]))
    assert abs(rows[0]["visited_at"].timestamp() - answer["checked_in_at"]) < 1
    # Someone the service holds nothing for: the visit is kept, the answer says no status is held.
    r = await checkin(api, keys, venue["token"], "310104195111057015")
    assert (await assert_documented(r, "/v1/checkins", "post"))["type"] == "/problems/subject-not-found"
    assert await db.fetchval("SELECT count(*) FROM venue_visits") == 2


async def test_bad_forged_unknown_and_superseded_venue_codes_are_refused(
    api: Api, keys: dict[str, str], db: asyncpg.Connection
) -> None:
    await people(api, keys)
    venue = await register(api, keys)
    header, payload, signature = venue["token"].split(".")
    state = api.app[SIGNER]
    assert state.keyring is not None
    active = state.keyring.active
    now = int(time.time())
    # A forger who copied the header (the service's kid) and signed with a key of their own.
    forged = sign_venue(KeyRecord.from_private_key(generate_private_key()), "healthcode", venue["id"], 1, now)
    _, forged_payload, forged_signature = forged.split(".")
    status_token = (
        await (
            await api.post("/v1/status", json={"id_number": PEOPLE[0]}, headers=bearer(keys["citizen-backend"]))
        ).json()
    )["token"]
    tampered = b64url_encode(b64url_decode(payload).replace(b'"vs":1', b'"vs":2'))  # the serial changed
    cases = (
        ("malformed", "not-a-token"),
        ("malformed", 3000 * "a"),
        ("unknown_key", forged),
        ("bad_signature", f"{header}.{forged_payload}.{forged_signature}"),
        ("bad_signature", f"{header}.{tampered}.{signature}"),
        ("wrong_type", status_token),
    )
    for code, token in cases:
        r = await checkin(api, keys, token)
        assert r.status == 422, (code, await r.text())
        problem = await r.json()
        assert (problem["field"], problem["code"]) == ("venue_token", code), problem
    r = await checkin(api, keys, sign_venue(active, "healthcode", "vNoSuchVenue00", 1, now))
    assert r.status == 404 and (await r.json())["type"] == "/problems/venue-not-found"
    r = await api.post(f"/v1/venues/{venue['id']}/reissue", headers=bearer(keys["registrar"]))
    assert r.status == 200, await r.text()
    reissued = await r.json()
    assert reissued["serial"] == 2
    r = await checkin(api, keys, venue["token"])
    assert r.status == 422 and (await r.json())["code"] == "superseded"
    assert (await checkin(api, keys, reissued["token"])).status == 200
    assert await db.fetchval("SELECT count(*) FROM venue_visits") == 1


async def exposures(api: Api, keys: dict[str, str], body: dict[str, Any], who: str = "cdc") -> ClientResponse:
    return await api.post("/v1/exposures", json=body, headers=bearer(keys[who]))


async def test_an_exposure_query_counts_and_designates_visitors_through_ingestion(
    api: Api, keys: dict[str, str], db: asyncpg.Connection
) -> None:
    await people(api, keys)
    venue, other = await register(api, keys), await register(api, keys, name="别处")
    for number in PEOPLE[:2]:
        assert (await checkin(api, keys, venue["token"], number)).status == 200
    assert (await checkin(api, keys, venue["token"], PEOPLE[0])).status == 200  # twice: one person
    assert (await checkin(api, keys, other["token"], PEOPLE[2])).status == 200
    now = int(time.time())
    window = {"venue_id": venue["id"], "from": now - HOUR, "to": now + 1}
    r = await exposures(api, keys, window)
    assert r.status == 200, await r.text()
    assert await r.json() == {**window, "visits": 3, "people": 2}

    r = await exposures(api, keys, {**window, "designate": {"days": 7, "reason": "case 2022-0601"}})
    assert r.status == 202, await r.text()
    answer = await assert_documented(r, "/v1/exposures", "post")
    assert answer["batch"] == {"id": answer["batch"]["id"], "created": True, "rows": 2}
    assert "id_number" not in str(answer) and PEOPLE[0] not in str(answer)
    await api.app[INGEST].wait(answer["batch"]["id"])
    r = await api.get(r.headers["Location"], headers=bearer(keys["cdc"]))
    batch = await assert_documented(r, "/v1/batches/{batch_id}", "get")
    assert (batch["kind"], batch["format"], batch["state"]) == ("designation", "visits", "done"), batch
    assert batch["counts"]["accepted"] == 2 and batch["subjects_recomputed"] == 2
    for number, colour in ((PEOPLE[0], "yellow"), (PEOPLE[1], "yellow"), (PEOPLE[2], "green")):
        r = await api.post("/v1/status", json={"id_number": number}, headers=bearer(keys["citizen-backend"]))
        status = await r.json()
        assert status["colour"] == colour, status
    assert "secondary_contact" in status["reasons"] or colour == "green"
    audit = await db.fetchrow("SELECT actor, detail FROM audit_log WHERE action = 'exposure.designate'")
    assert audit is not None and audit["actor"] == "test-cdc" and audit["detail"]["people"] == 2
    # The same query again is the same batch, and changes nothing.
    r = await exposures(api, keys, {**window, "designate": {"days": 7, "reason": "case 2022-0601"}})
    assert r.status == 200 and (await r.json())["batch"] == {**answer["batch"], "created": False}


async def test_exposure_refusals(api: Api, keys: dict[str, str]) -> None:
    venue = await register(api, keys)
    now = int(time.time())
    assert (
        await exposures(api, keys, {"venue_id": venue["id"], "from": now - HOUR, "to": now}, "registrar")
    ).status == 403
    r = await exposures(api, keys, {"venue_id": "vNoSuchVenue00", "from": now - HOUR, "to": now})
    assert r.status == 404 and (await r.json())["type"] == "/problems/venue-not-found"
    for body, field, code in (
        ({"from": now - 8 * 24 * HOUR, "to": now}, "to", "window_too_wide"),
        ({"from": now, "to": now - HOUR}, "to", "bad_interval"),
        ({"from": now, "to": now + 2 * HOUR}, "to", "in_future"),
        ({"from": now - 30 * 24 * HOUR, "to": now - 29 * 24 * HOUR}, "from", "before_retention"),
        ({"from": "yesterday", "to": now}, "from", "wrong_type"),
        ({"from": now - HOUR, "to": now, "designate": {"kind": "confirmed"}}, "designate.kind", "bad_kind"),
        ({"from": now - HOUR, "to": now, "designate": {"days": 90}}, "designate.days", "out_of_range"),
    ):
        r = await exposures(api, keys, {"venue_id": venue["id"], **body})
        assert r.status == 422, (body, await r.text())
        problem = await r.json()
        assert (problem["field"], problem["code"]) == (field, code), problem
