"""Family members (代查 / 亲友码) against the real app, Postgres and Redis: relations registered and ended,
look-ups on behalf of a relative only through a live relation, each recorded for the relative to see."""

from __future__ import annotations

import time
from datetime import date, timedelta
from typing import Any

import asyncpg
import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from app.http.appkeys import HANDLES
from app.identity import Identity, pseudonym, resident_check_char
from app.limits import RELATIONS
from app.relations import store
from app.relations.errors import RelationExists
from app.relations.model import CARER, Registration, birthday, day_start, today_in_china
from app.settings import Settings
from cache.rate_limit import Rate
from tests.conftest import AppFactory
from tests.support import bearer
from tests.test_openapi import assert_documented

Api = TestClient[web.Request, web.Application]


def resident(born: date, seq: str = "123") -> str:
    first17 = f"500103{born:%Y%m%d}{seq}"
    return first17 + resident_check_char(first17)


def today() -> date:
    return today_in_china(int(time.time()))


def years_ago(years: int, days: int = 0) -> date:
    return birthday(today(), -years) + timedelta(days=days)


PARENT = resident(date(1985, 3, 7))
CHILD = resident(date(2015, 3, 7))
ELDER = resident(date(1951, 11, 5), "701")
STRANGER = resident(date(1990, 6, 1), "555")


def person(number: str, **more: Any) -> dict[str, Any]:
    return {"id_type": "resident", "id_number": number, **more}


@pytest.fixture
def citizen(client_keys: dict[str, str]) -> dict[str, str]:
    return bearer(client_keys["citizen-backend"])


async def declared(api: Api, citizen: dict[str, str], number: str) -> None:
    """The person gets a status (green: no travel, no records)."""
    body = person(number, name="李四", phone="13812345678", travel=[])
    r = await api.post("/v1/declarations", json=body, headers=citizen)
    assert r.status == 200, await r.text()


async def call(api: Api, path: str, body: dict[str, Any], headers: dict[str, str], status: int) -> dict[str, Any]:
    r = await api.post(path, json=body, headers=headers)
    assert r.status == status, await r.text()
    documented = "/v1/relations/{relation_id}/end" if path.endswith("/end") else path
    return await assert_documented(r, documented, "post")


async def register(
    api: Api, citizen: dict[str, str], holder: str, relative: str, status: int = 201, **more: Any
) -> Any:
    body = person(holder, relative=person(relative), **more)
    return await call(api, "/v1/relations", body, citizen, status)


async def on_behalf(api: Api, citizen: dict[str, str], holder: str, relative: str, status: int = 200) -> Any:
    return await call(api, "/v1/status", person(holder, on_behalf_of=person(relative)), citizen, status)


async def lookups(api: Api, citizen: dict[str, str], number: str, **page: int) -> Any:
    return await call(api, "/v1/lookups/query", person(number, **page), citizen, 200)


async def test_a_guardian_sees_the_childs_status_and_the_child_sees_the_look_up(
    api: Api, db: asyncpg.Connection, settings: Settings, citizen: dict[str, str]
) -> None:
    await declared(api, citizen, CHILD)
    relation = await register(api, citizen, PARENT, CHILD, kind="guardian")
    born = date(2015, 3, 7)
    assert relation == {
        "id": relation["id"],
        "kind": "guardian",
        "state": "live",
        "holder": {"id_type": "resident", "id_number": PARENT[:2] + "*" * 14 + PARENT[-2:]},
        "relative": {"id_type": "resident", "id_number": CHILD[:2] + "*" * 14 + CHILD[-2:]},
        "attested": False,
        "created_at": relation["created_at"],
        "valid_until": day_start(date(2033, 3, 7)),
        "ended_at": None,
        "ended_by": None,
        "role": "holder",
    }
    assert relation["valid_until"] == day_start(birthday(born, 18))

    answer = await on_behalf(api, citizen, PARENT, CHILD)

    assert answer["id_number"] == relation["relative"]["id_number"]
    assert answer["relation"] == {"id": relation["id"], "kind": "guardian"}
    assert answer["colour"] == "green"
    claims = jwt.decode(answer["token"], options={"verify_signature": False})
    child = pseudonym(Identity("resident", CHILD), settings.pepper)
    assert api.app[HANDLES].open(claims["sub"], claims["iat"]) == child  # the child's own token

    log = await lookups(api, citizen, CHILD)
    assert log["next_before"] is None
    [entry] = log["lookups"]
    assert entry["by"] == relation["holder"]
    assert (entry["relation_id"], entry["kind"], entry["client"]) == (
        relation["id"],
        "guardian",
        "test-citizen-backend",
    )
    assert abs(entry["looked_at"] - time.time()) < 60
    assert (await lookups(api, citizen, PARENT))["lookups"] == []  # nobody looked the parent up

    # Pseudonyms only: no table holds either number.
    row = await db.fetchrow("SELECT holder, relative, client_id FROM relation_lookups")
    assert row is not None
    assert bytes(row["relative"]) == child
    assert bytes(row["holder"]) == pseudonym(Identity("resident", PARENT), settings.pepper)
    for table in ("relations", "relation_lookups", "audit_log"):
        text = await db.fetchval(f"SELECT coalesce(string_agg(t::text, ' '), '') FROM {table} t")
        assert CHILD not in text and PARENT not in text, table
    actions = await db.fetch("SELECT action FROM audit_log WHERE action LIKE 'relation.%' AND pseudonym = $1", child)
    assert [r["action"] for r in actions] == ["relation.register"]


async def test_without_a_relation_a_look_up_is_refused_and_reveals_nothing(
    api: Api, db: asyncpg.Connection, citizen: dict[str, str]
) -> None:
    await declared(api, citizen, CHILD)
    await register(api, citizen, PARENT, CHILD, kind="guardian")

    known = await on_behalf(api, citizen, STRANGER, CHILD, status=403)
    unknown = await on_behalf(api, citizen, STRANGER, resident(date(2016, 1, 1), "999"), status=403)
    reversed_ = await on_behalf(api, citizen, CHILD, PARENT, status=403)  # a relation runs one way

    assert known["type"] == "/problems/no-relation" and known["code"] == "no_relation"
    assert known["detail"] == unknown["detail"] == reversed_["detail"]
    assert await db.fetchval("SELECT count(*) FROM relation_lookups") == 0
    assert (await lookups(api, citizen, CHILD))["lookups"] == []


async def test_a_relatives_malformed_number_names_the_field(api: Api, citizen: dict[str, str]) -> None:
    problem = await on_behalf(api, citizen, PARENT, CHILD[:-1] + ("0" if CHILD[-1] != "0" else "1"), status=422)
    assert (problem["type"], problem["field"], problem["code"]) == (
        "/problems/invalid-identity",
        "on_behalf_of.id_number",
        "bad_checksum",
    )
    r = await api.post("/v1/status", json=person(PARENT, on_behalf_of=CHILD), headers=citizen)
    assert r.status == 422 and (await r.json())["field"] == "on_behalf_of"


@pytest.mark.parametrize(
    ("holder", "relative", "more", "field", "code"),
    [
        (PARENT, STRANGER, {"kind": "guardian"}, "relative.id_number", "not_a_minor"),  # an adult as a "minor"
        (PARENT, ELDER, {"kind": "guardian"}, "relative.id_number", "not_a_minor"),
        (resident(years_ago(17)), CHILD, {"kind": "guardian"}, "id_number", "guardian_not_adult"),
        (PARENT, CHILD, {"kind": "guardian", "attestation_ref": "x"}, "attestation_ref", "not_allowed"),
        (PARENT, ELDER, {"kind": "carer"}, "attestation_ref", "missing"),  # a carer without attestation
        (PARENT, ELDER, {"kind": "carer", "attestation_ref": " "}, "attestation_ref", "wrong_type"),
        (PARENT, ELDER, {"kind": "carer", "attestation_ref": "x" * 201}, "attestation_ref", "too_long"),
        (PARENT, CHILD, {"kind": "carer", "attestation_ref": "poa-1"}, "kind", "relative_is_a_minor"),
        (PARENT, PARENT, {"kind": "carer", "attestation_ref": "poa-1"}, "relative", "same_person"),
        (PARENT, CHILD, {"kind": "uncle"}, "kind", "unknown_kind"),
        (PARENT, CHILD, {}, "kind", "missing"),
    ],
)
async def test_a_relation_that_does_not_fit_the_people_is_refused(
    api: Api,
    db: asyncpg.Connection,
    citizen: dict[str, str],
    holder: str,
    relative: str,
    more: dict[str, Any],
    field: str,
    code: str,
) -> None:
    problem = await register(api, citizen, holder, relative, status=422, **more)
    assert (problem["type"], problem["field"], problem["code"]) == ("/problems/invalid-field", field, code)
    assert await db.fetchval("SELECT count(*) FROM relations") == 0


async def test_a_guardian_of_a_passport_holder_is_refused_for_want_of_a_birth_date(
    api: Api, citizen: dict[str, str]
) -> None:
    body = person(PARENT, relative={"id_type": "passport", "id_number": "E12345678"}, kind="guardian")
    problem = await call(api, "/v1/relations", body, citizen, 422)
    assert (problem["field"], problem["code"]) == ("relative.id_type", "no_birth_date")


async def test_an_attestation_holding_an_identity_number_is_refused(api: Api, citizen: dict[str, str]) -> None:
    problem = await register(api, citizen, PARENT, ELDER, status=422, kind="carer", attestation_ref=f"poa for {ELDER}")
    assert (problem["type"], problem["field"], problem["code"]) == (
        "/problems/identity-number-in-text",
        "attestation_ref",
        "identity_number_in_text",
    )
    assert ELDER not in problem["detail"]


async def test_a_guardian_relation_lapses_when_the_minor_turns_18(
    api: Api, db: asyncpg.Connection, settings: Settings, citizen: dict[str, str]
) -> None:
    almost = resident(years_ago(18, days=1), "321")  # 18 tomorrow (China Standard Time)
    await declared(api, citizen, almost)
    relation = await register(api, citizen, PARENT, almost, kind="guardian")
    eighteenth = day_start(today() + timedelta(days=1))
    assert relation["valid_until"] == eighteenth
    await on_behalf(api, citizen, PARENT, almost)

    holder = pseudonym(Identity("resident", PARENT), settings.pepper)
    relative = pseudonym(Identity("resident", almost), settings.pepper)
    assert await store.look_up(db, holder, relative, client_id=1, now=eighteenth - 1) is not None
    assert await store.look_up(db, holder, relative, client_id=1, now=eighteenth) is None

    # The birthday comes (moved here instead of waiting for it): the same look-up is now refused.
    await db.execute(
        "UPDATE relations SET valid_until = now() - interval '1 second', created_at = now() - interval '2 days'"
    )
    await on_behalf(api, citizen, PARENT, almost, status=403)
    [listed] = (await call(api, "/v1/relations/query", person(almost), citizen, 200))["relations"]
    assert (listed["state"], listed["ended_by"], listed["role"]) == ("lapsed", "lapsed", "relative")
    # Look-ups made while it was live stay listed for the (now adult) relative.
    assert [e["relation_id"] for e in (await lookups(api, citizen, almost))["lookups"]] == [relation["id"]] * 2


def test_a_guardian_relation_of_a_leap_day_child_lapses_on_1_march() -> None:
    assert birthday(date(2008, 2, 29), 18) == date(2026, 3, 1)
    assert birthday(date(2008, 2, 28), 18) == date(2026, 2, 28)
    assert birthday(date(2006, 2, 28), 18) == date(2024, 2, 28)  # a leap year's 28th is still the 28th


async def test_a_carer_with_an_attestation_looks_up_until_the_relative_ends_it(
    api: Api, db: asyncpg.Connection, citizen: dict[str, str], make_client: AppFactory
) -> None:
    await declared(api, citizen, ELDER)
    relation = await register(api, citizen, PARENT, ELDER, kind="carer", attestation_ref="poa-2022-0412")
    assert (relation["kind"], relation["attested"], relation["valid_until"]) == ("carer", True, None)
    # The same registration again is the live one, not a second.
    again = await register(api, citizen, PARENT, ELDER, status=200, kind="carer", attestation_ref="poa-2022-0412")
    assert again["id"] == relation["id"]
    await on_behalf(api, citizen, PARENT, ELDER)

    end = f"/v1/relations/{relation['id']}/end"
    stranger = await call(api, end, person(STRANGER), citizen, 404)  # not a party: as if there were none
    assert stranger["type"] == "/problems/not-found"
    ended = await call(api, end, person(ELDER), citizen, 200)
    assert (ended["state"], ended["ended_by"], ended["role"]) == ("ended", "relative", "relative")
    assert (await call(api, end, person(PARENT), citizen, 200))["ended_by"] == "relative"  # already ended

    await on_behalf(api, citizen, PARENT, ELDER, status=403)
    assert [e["kind"] for e in (await lookups(api, citizen, ELDER))["lookups"]] == ["carer"]
    actions = await db.fetch(
        "SELECT action FROM audit_log WHERE action LIKE 'relation.%' AND (detail->>'relation_id')::bigint = $1 "
        "ORDER BY id",
        relation["id"],
    )
    assert [r["action"] for r in actions] == ["relation.register", "relation.end"]

    # Ended, the pair may register again: a new relation.
    renewed = await register(api, citizen, PARENT, ELDER, kind="carer", attestation_ref="poa-2023-0001")
    assert renewed["id"] != relation["id"]
    await on_behalf(api, citizen, PARENT, ELDER)


async def test_the_holder_may_end_a_relation_too(api: Api, citizen: dict[str, str]) -> None:
    relation = await register(api, citizen, PARENT, CHILD, kind="guardian")
    ended = await call(api, f"/v1/relations/{relation['id']}/end", person(PARENT), citizen, 200)
    assert (ended["state"], ended["ended_by"]) == ("ended", "holder")
    for bad in ("x1", str(2**63)):
        r = await api.post(f"/v1/relations/{bad}/end", json=person(PARENT), headers=citizen)
        assert r.status == 404


async def test_a_pair_holds_one_live_relation(db: asyncpg.Connection, settings: Settings) -> None:
    now = int(time.time())
    holder = store.Party(pseudonym(Identity("resident", PARENT), settings.pepper), "resident", "50**39")
    relative = store.Party(pseudonym(Identity("resident", ELDER), settings.pepper), "resident", "50**15")
    first = await store.register(
        db, holder, relative, Registration(CARER, "poa", None), client_id=1, client_name="b", now=now
    )
    with pytest.raises(RelationExists) as info:
        await store.register(
            db, holder, relative, Registration("guardian", None, now + 86_400), client_id=1, client_name="b", now=now
        )
    assert info.value.relation_id == first.relation["id"]


async def test_the_look_up_log_comes_a_page_at_a_time(api: Api, citizen: dict[str, str]) -> None:
    await declared(api, citizen, ELDER)
    await register(api, citizen, PARENT, ELDER, kind="carer", attestation_ref="consent-7")
    await register(api, citizen, STRANGER, ELDER, kind="carer", attestation_ref="consent-8")
    for holder in (PARENT, STRANGER, PARENT):
        await on_behalf(api, citizen, holder, ELDER)

    first = await lookups(api, citizen, ELDER, limit=2)
    rest = await lookups(api, citizen, ELDER, limit=2, before=first["next_before"])

    assert len(first["lookups"]) == 2 and len(rest["lookups"]) == 1 and rest["next_before"] is None
    ids = [e["id"] for e in first["lookups"] + rest["lookups"]]
    assert ids == sorted(ids, reverse=True)
    assert [e["by"]["id_number"][-2:] for e in first["lookups"] + rest["lookups"]] == [
        PARENT[-2:],
        STRANGER[-2:],
        PARENT[-2:],
    ]
    problem = await call(api, "/v1/lookups/query", person(ELDER, limit=0), citizen, 422)
    assert (problem["field"], problem["code"]) == ("limit", "out_of_range")
    problem = await call(api, "/v1/lookups/query", person(ELDER, before=2**63), citizen, 422)
    assert (problem["field"], problem["code"]) == ("before", "wrong_type")


async def test_only_citizen_backends_and_within_the_relations_limit(
    make_client: AppFactory, client_keys: dict[str, str], citizen: dict[str, str]
) -> None:
    api = await make_client(rate_limits=(("citizen-backend", RELATIONS, Rate(0.001, 1)),))
    scanner = bearer(client_keys["scanner"])
    for path in ("/v1/relations", "/v1/relations/query", "/v1/lookups/query", "/v1/relations/1/end"):
        r = await api.post(path, json=person(PARENT), headers=scanner)
        assert r.status == 403, (path, await r.text())
    r = await api.post("/v1/status", json=person(PARENT, on_behalf_of=person(CHILD)), headers=scanner)
    assert r.status == 403

    await call(api, "/v1/relations/query", person(PARENT), citizen, 200)
    problem = await call(api, "/v1/lookups/query", person(PARENT), citizen, 429)
    assert (problem["type"], problem["limit"]) == ("/problems/rate-limited", RELATIONS)
