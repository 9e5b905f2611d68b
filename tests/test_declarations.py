"""POST /v1/declarations (申领) against the real app, Postgres and Redis: a person with no records declares
their travel and gets their status at once; agency records win; refusals name the field."""

from __future__ import annotations

import time
from datetime import date, timedelta
from typing import Any

import asyncpg
import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from app.declarations.model import MAX_TRAVEL, today_in_china
from app.http.appkeys import PUBLISHER
from app.identity import Identity, pseudonym
from app.limits import DECLARATIONS
from app.rules.records import Arrival
from app.settings import Settings
from app.statuses.compute import declared_not_held
from cache.entry import unpack
from cache.keys import status_field
from cache.rate_limit import Rate
from tests.conftest import AppFactory
from tests.redis_targets import all_keys
from tests.support import bearer
from tests.test_openapi import assert_documented

Api = TestClient[web.Request, web.Application]
NUMBER = "500103199003071239"
PHONE = "13812345678"
HIGH = "420106"  # a high-risk area in these tests
CALM = "500103"  # an area of no risk
DAY = 86_400


def today() -> date:
    return today_in_china(int(time.time()))


def trip(area: str, days_ago: int, mode: str = "rail") -> dict[str, str]:
    return {"area_code": area, "arrived_on": (today() - timedelta(days=days_ago)).isoformat(), "mode": mode}


def body(travel: list[Any], **fields: Any) -> dict[str, Any]:
    return {"id_type": "resident", "id_number": NUMBER, "name": "李四", "phone": PHONE, "travel": travel, **fields}


@pytest.fixture
def citizen(client_keys: dict[str, str]) -> dict[str, str]:
    return bearer(client_keys["citizen-backend"])


@pytest.fixture
def subject(settings: Settings) -> bytes:
    return pseudonym(Identity("resident", NUMBER), settings.pepper)


@pytest.fixture
async def high_risk(db: asyncpg.Connection) -> str:
    await db.execute(
        "INSERT INTO risk_areas (area_code, level, valid_from) VALUES ($1, 'high', now() - interval '30 days')", HIGH
    )
    await db.execute("UPDATE input_revisions SET value = value + 1 WHERE name = 'risk_areas'")
    return HIGH


async def declare(api: Api, citizen: dict[str, str], payload: dict[str, Any], status: int = 200) -> dict[str, Any]:
    r = await api.post("/v1/declarations", json=payload, headers=citizen)
    assert r.status == status, await r.text()
    return await assert_documented(r, "/v1/declarations", "post")


async def colours(api: Api, db: asyncpg.Connection, redis: Redis, citizen: dict[str, str], subject: bytes) -> Any:
    """(colour, popup) in Postgres, in Redis, and in the next /v1/status token."""
    row = await db.fetchrow("SELECT colour, popup FROM statuses WHERE pseudonym = $1", subject)
    assert row is not None
    raw = await redis.hget(*status_field(subject))
    assert isinstance(raw, bytes)
    entry = unpack(raw)
    r = await api.post("/v1/status", json={"id_number": NUMBER}, headers=citizen)
    assert r.status == 200, await r.text()
    claims = jwt.decode((await r.json())["token"], options={"verify_signature": False})
    return (row["colour"], row["popup"]), (entry.colour, entry.popup), (claims["st"], claims["pop"])


async def test_an_unknown_person_declaring_an_arrival_from_a_high_risk_area_gets_the_popup(
    api: Api, db: asyncpg.Connection, redis: Redis, citizen: dict[str, str], subject: bytes, high_risk: str
) -> None:
    r = await api.post("/v1/status", json={"id_number": NUMBER}, headers=citizen)
    assert r.status == 404  # no record: no code, until the person declares (the miss is cached negative)

    answer = await declare(api, citizen, body([trip(high_risk, 1), trip(CALM, 3, "road")]))

    assert answer["colour"] == "yellow"
    assert answer["reasons"] == ["risk_area_arrival"]
    assert answer["popup"] is True
    assert (answer["name"], answer["id_number"]) == ("李*", "50**************39")
    claims = jwt.decode(answer["token"], options={"verify_signature": False})
    assert (claims["st"], claims["pop"]) == ("Y", 1)
    assert await colours(api, db, redis, citizen, subject) == (("yellow", True), ("yellow", True), ("Y", 1))
    rows = await db.fetch(
        "SELECT area_code, mode, source FROM travel_arrivals WHERE pseudonym = $1 ORDER BY area_code", subject
    )
    assert [tuple(r) for r in rows] == [(HIGH, "rail", "declared"), (CALM, "road", "declared")]
    assert await db.fetchval("SELECT masked_name FROM subjects WHERE pseudonym = $1", subject) == "李*"


async def test_a_person_who_did_not_travel_gets_a_green_code(
    api: Api, db: asyncpg.Connection, citizen: dict[str, str], subject: bytes
) -> None:
    answer = await declare(api, citizen, body([]))
    assert (answer["colour"], answer["popup"], answer["reasons"]) == ("green", False, [])
    assert await db.fetchval("SELECT revision FROM subjects WHERE pseudonym = $1", subject) == 0


async def test_a_declaration_cannot_lower_a_colour_from_agency_records(
    api: Api, db: asyncpg.Connection, redis: Redis, citizen: dict[str, str], subject: bytes
) -> None:
    await db.execute(
        "INSERT INTO subjects (pseudonym, id_type, masked_name, masked_number) VALUES ($1, 'resident', '王*', 'x')",
        subject,
    )
    await db.execute(
        """INSERT INTO designations (pseudonym, kind, valid_from, authority)
           VALUES ($1, 'close_contact', now() - interval '1 day', 'cdc')""",
        subject,
    )
    await api.app[PUBLISHER].recompute(db, [subject], int(time.time()))
    before = await db.fetchval("SELECT revision FROM subjects WHERE pseudonym = $1", subject)

    answer = await declare(api, citizen, body([trip(CALM, 2)]))

    assert answer["colour"] == "red"
    assert "close_contact" in answer["reasons"]
    assert await colours(api, db, redis, citizen, subject) == (("red", False), ("red", False), ("R", 0))
    assert await db.fetchval("SELECT count(*) FROM designations WHERE pseudonym = $1", subject) == 1
    # The agency's name stays; the change bumped the revision (sql/004_status_versions.sql).
    subject_row = await db.fetchrow("SELECT masked_name, revision FROM subjects WHERE pseudonym = $1", subject)
    assert subject_row is not None
    assert tuple(subject_row) == ("王*", before + 1)


async def test_an_agency_arrival_wins_over_the_same_declared_one(
    api: Api, db: asyncpg.Connection, citizen: dict[str, str], subject: bytes, high_risk: str
) -> None:
    await db.execute(
        "INSERT INTO subjects (pseudonym, id_type, masked_name, masked_number) VALUES ($1, 'resident', '王*', 'x')",
        subject,
    )
    arrived = int(time.time()) - 2 * DAY
    await db.execute(
        "INSERT INTO travel_arrivals (pseudonym, area_code, arrived_at, mode) VALUES ($1, $2, to_timestamp($3), 'air')",
        subject,
        high_risk,
        arrived,
    )
    day = today_in_china(arrived)

    answer = await declare(
        api, citizen, body([{"area_code": high_risk, "arrived_on": day.isoformat(), "mode": "rail"}])
    )

    assert (answer["colour"], answer["popup"]) == ("yellow", True)
    rows = await db.fetch("SELECT mode, source FROM travel_arrivals WHERE pseudonym = $1", subject)
    assert [tuple(r) for r in rows] == [("air", "agency")]  # not stored a second time as declared


def test_the_rules_drop_a_declared_arrival_an_agency_later_sent() -> None:
    ten_am = 1654048800  # 2022-06-01 10:00 China Standard Time
    agency = [Arrival(HIGH, ten_am, "air")]
    declared = [
        Arrival(HIGH, ten_am + 13 * 3600, "rail"),  # 23:00 the same day: the agency's arrival
        Arrival(HIGH, ten_am + 14 * 3600, "rail"),  # 00:00 the next day
        Arrival(CALM, ten_am, "road"),
    ]
    assert declared_not_held(declared, agency) == declared[1:]


async def test_a_second_declaration_within_a_day_updates_the_first_and_clears_nothing(
    api: Api, db: asyncpg.Connection, redis: Redis, citizen: dict[str, str], subject: bytes, high_risk: str
) -> None:
    await declare(api, citizen, body([trip(high_risk, 1)]))

    # The second leaves the risk area out: the first's arrival stays, and so does the pop-up.
    answer = await declare(api, citizen, body([trip(CALM, 0)], phone="139 0000 1111"))

    assert (answer["colour"], answer["popup"]) == ("yellow", True)
    assert await colours(api, db, redis, citizen, subject) == (("yellow", True), ("yellow", True), ("Y", 1))
    rows = await db.fetch("SELECT id, updates, jsonb_array_length(travel) AS trips FROM declarations")
    assert [(r["updates"], r["trips"]) for r in rows] == [(1, 2)]
    codes = await db.fetch(
        "SELECT area_code FROM travel_arrivals WHERE declaration_id = $1 ORDER BY area_code", rows[0]["id"]
    )
    assert [r["area_code"] for r in codes] == [HIGH, CALM]
    # The same again adds nothing: today's arrival is not stored twice.
    await declare(api, citizen, body([trip(CALM, 0)]))
    assert await db.fetchval("SELECT count(*) FROM travel_arrivals") == 2


async def test_a_declaration_a_day_later_is_a_new_one(
    api: Api, db: asyncpg.Connection, citizen: dict[str, str]
) -> None:
    await declare(api, citizen, body([]))
    await db.execute("UPDATE declarations SET declared_at = declared_at - interval '25 hours'")
    await declare(api, citizen, body([]))
    assert await db.fetchval("SELECT count(*) FROM declarations") == 2


@pytest.mark.parametrize(
    ("change", "field", "code"),
    [
        ({"travel": [trip("990000", 1)]}, "travel[0].area_code", "unknown_area_code"),
        ({"travel": [trip(CALM, 1), trip("42010", 1)]}, "travel[1].area_code", "unknown_area_code"),
        ({"travel": [trip(CALM, 15)]}, "travel[0].arrived_on", "outside_window"),
        ({"travel": [trip(CALM, -1)]}, "travel[0].arrived_on", "outside_window"),
        ({"travel": [{**trip(CALM, 1), "arrived_on": "2022-13-01"}]}, "travel[0].arrived_on", "bad_date"),
        ({"travel": [trip(CALM, 1, "bicycle")]}, "travel[0].mode", "bad_mode"),
        ({"travel": [{**trip(CALM, 1), "via": "x"}]}, "travel[0].via", "unknown_member"),
        ({"travel": [trip(CALM, 1)] * (MAX_TRAVEL + 1)}, "travel", "too_many_entries"),
        ({"travel": "420106"}, "travel", "wrong_type"),
        ({"travel": None}, "travel", "missing"),
        ({"phone": "12345"}, "phone", "bad_phone"),
        ({"name": ""}, "name", "wrong_type"),
        ({"name": "李" * 51}, "name", "too_long"),
        ({"id_number": "500103199003071238"}, "id_number", "bad_checksum"),
    ],
)
async def test_a_wrong_field_is_refused_naming_it_and_nothing_is_stored(
    api: Api, db: asyncpg.Connection, citizen: dict[str, str], change: dict[str, Any], field: str, code: str
) -> None:
    problem = await declare(api, citizen, {**body([trip(CALM, 1)]), **change}, status=422)
    assert (problem["field"], problem["code"]) == (field, code)
    assert await db.fetchval("SELECT count(*) FROM subjects") == 0
    assert await db.fetchval("SELECT count(*) FROM declarations") == 0


async def test_the_oldest_and_newest_days_of_the_window_are_accepted(
    api: Api, db: asyncpg.Connection, citizen: dict[str, str]
) -> None:
    await declare(api, citizen, body([trip(CALM, 14), trip(CALM, 0)]))
    assert await db.fetchval("SELECT count(*) FROM travel_arrivals WHERE source = 'declared'") == 2


async def test_neither_the_phone_nor_the_document_number_is_stored(
    api: Api,
    db: asyncpg.Connection,
    redis: Redis,
    citizen: dict[str, str],
    high_risk: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await declare(api, citizen, body([trip(high_risk, 1)], phone="+86 138-1234-5678"))

    tables = await db.fetch(
        """SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition"""
    )
    dump = "\n".join([str(r[0]) for t in tables for r in await db.fetch(f"SELECT t::text FROM {t['relname']} t")])
    assert "李*" in dump  # the dump does see what is stored
    keys = await all_keys(redis)
    assert keys
    values = [await redis.dump(k) for k in keys]
    for secret in (PHONE, "1381234", NUMBER, "李四"):
        assert secret not in dump
        assert all(secret.encode() not in k for k in keys)
        assert all(secret.encode() not in (v or b"") for v in values)
        assert secret not in caplog.text
    phone_ref = await db.fetchval("SELECT phone_ref FROM declarations")
    assert len(phone_ref) == 16 and PHONE.encode().hex() not in phone_ref.hex()


async def test_declarations_draw_from_the_clients_declarations_limit(
    make_client: AppFactory, db: asyncpg.Connection, citizen: dict[str, str]
) -> None:
    api = await make_client(rate_limits=(("citizen-backend", DECLARATIONS, Rate(0.001, 1)),))
    await declare(api, citizen, body([]))

    problem = await declare(api, citizen, body([]), status=429)

    assert problem["type"] == "/problems/rate-limited"
    assert problem["limit"] == DECLARATIONS
    assert await db.fetchval("SELECT count(*) FROM declarations") == 1


async def test_only_citizen_backends_may_declare(api: Api, client_keys: dict[str, str]) -> None:
    r = await api.post("/v1/declarations", json=body([]), headers=bearer(client_keys["scanner"]))
    assert r.status == 403, await r.text()
