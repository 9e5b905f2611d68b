"""Corrections and retractions of records by the agency that sent them, through POST /v1/batches."""

from __future__ import annotations

import io
from pathlib import Path

import asyncpg
import jwt
from redis.asyncio import Redis

from app.clients import add_client
from app.http.appkeys import REDIS
from app.identity import Identity, pseudonym
from app.ingest.load import load_file
from app.scopes import RECORD_KINDS
from app.settings import Settings
from cache.entry import unpack
from cache.keys import status_field
from tests.conftest import Api, AppFactory
from tests.support import bearer
from tests.test_ingest_helpers import ago, csv_body, ndjson_body, number, rejections, upload

TESTS = "id_number,sampled_at,result,lab"
DESIGNATIONS = "id_number,kind,valid_from,valid_until,authority"


async def colours(api: Api, db: asyncpg.Connection, settings: Settings, citizen: str, i: int) -> tuple[str, str, str]:
    """The colour stored in Postgres, the one in Redis, and the one in the next token."""
    subject = pseudonym(Identity("resident", number(i)), settings.pepper)
    stored = await db.fetchval("SELECT colour FROM statuses WHERE pseudonym = $1", subject)
    raw = await api.app[REDIS].hget(*status_field(subject))
    assert isinstance(raw, bytes)
    r = await api.post("/v1/status", json={"id_number": number(i)}, headers=bearer(citizen))
    assert r.status == 200, await r.text()
    claims = jwt.decode((await r.json())["token"], options={"verify_signature": False})
    return stored, unpack(raw).colour, claims["st"]


def counts(corrected: int = 0, retracted: int = 0, **given: int) -> dict[str, int]:
    return {"read": 1, "accepted": 0, "rejected": 0, "duplicates": 0, **given} | {
        "corrected": corrected,
        "retracted": retracted,
    }


async def test_a_corrected_negative_turns_red_back_to_green_at_once(
    api: Api, client_keys: dict[str, str], db: asyncpg.Connection, settings: Settings
) -> None:
    agency, citizen = client_keys["agency"], client_keys["citizen-backend"]
    sampled = ago(hours=3)
    _, first = await upload(api, agency, "test", csv_body(TESTS, f"{number(1)},{sampled},positive,lab-a"))
    assert first["counts"] == counts(accepted=1)
    assert await colours(api, db, settings, citizen, 1) == ("red", "red", "R")
    revision = await db.fetchval("SELECT revision FROM subjects")

    _, fixed = await upload(api, agency, "test", csv_body(TESTS, f"{number(1)},{sampled},negative,lab-a"))
    assert fixed["counts"] == counts(corrected=1)
    assert fixed["subjects_recomputed"] == 1
    assert await colours(api, db, settings, citizen, 1) == ("green", "green", "G")
    assert await db.fetchval("SELECT revision FROM subjects") > revision
    assert await db.fetchval("SELECT result FROM nucleic_tests") == "negative"
    history = await db.fetchrow(
        "SELECT kind, change, previous, previous_batch_id, batch_id, client_id FROM record_history"
    )
    assert history is not None
    agency_id = await db.fetchval("SELECT id FROM api_clients WHERE name = 'test-agency'")
    assert (history["kind"], history["change"], history["previous_batch_id"], history["batch_id"]) == (
        "test",
        "corrected",
        first["id"],
        fixed["id"],
    )
    assert history["client_id"] == agency_id
    assert history["previous"]["result"] == "positive"

    # Sent again, the corrected record is a duplicate, not another correction.
    _, again = await upload(api, agency, "test", csv_body(TESTS, f"{number(1)},{sampled},negative,lab-b"))
    _, same = await upload(
        api,
        agency,
        "test",
        csv_body(TESTS, f"{number(1)},{sampled},negative,lab-a"),
        headers={"Idempotency-Key": "same"},
    )
    assert (again["counts"], same["counts"]) == (counts(accepted=1), counts(duplicates=1))
    assert await db.fetchval("SELECT count(*) FROM record_history") == 1


async def test_retracting_the_only_positive_test_turns_green_at_once(
    api: Api, client_keys: dict[str, str], db: asyncpg.Connection, settings: Settings
) -> None:
    agency, citizen = client_keys["agency"], client_keys["citizen-backend"]
    row = {"id_number": number(2), "sampled_at": ago(hours=5), "result": "positive", "lab": "lab-a"}
    await upload(api, agency, "test", ndjson_body(row), content_type="application/x-ndjson")
    assert await colours(api, db, settings, citizen, 2) == ("red", "red", "R")

    body = ndjson_body({**row, "action": "retract"})
    _, withdrawn = await upload(api, agency, "test", body, content_type="application/x-ndjson")
    assert withdrawn["counts"] == counts(retracted=1)
    assert await colours(api, db, settings, citizen, 2) == ("green", "green", "G")
    assert await db.fetchval("SELECT count(*) FROM nucleic_tests") == 0
    assert await db.fetchval("SELECT change FROM record_history") == "retracted"

    # Nothing is left to retract: the same retraction again is refused, with its own code.
    _, nothing = await upload(
        api, agency, "test", body, content_type="application/x-ndjson", headers={"Idempotency-Key": "2"}
    )
    assert nothing["counts"] == counts(rejected=1)
    assert [(r["field"], r["code"]) for r in await rejections(api, agency, nothing["id"])] == [
        ("action", "no_such_record")
    ]


async def test_another_agency_may_neither_correct_nor_retract(
    make_client: AppFactory, client_keys: dict[str, str], db: asyncpg.Connection, settings: Settings
) -> None:
    agency, citizen = client_keys["agency"], client_keys["citizen-backend"]
    other = (await add_client(db, "other-lab", "agency", RECORD_KINDS)).secret
    api = await make_client()  # after the client is added: the app loads its clients at start
    sampled = ago(hours=3)
    await upload(api, agency, "test", csv_body(TESTS, f"{number(3)},{sampled},positive,lab-a"))

    body = csv_body(
        f"{TESTS},action",
        f"{number(3)},{sampled},negative,lab-a,upsert",
        f"{number(3)},{sampled},positive,lab-a,retract",
        f"{number(3)},{sampled},positive,lab-a,",  # the same record: changes nothing, so no refusal
    )
    _, refused = await upload(api, other, "test", body)
    assert refused["counts"] == {**counts(rejected=2, duplicates=1), "read": 3}
    assert [(r["row"], r["field"], r["code"]) for r in await rejections(api, other, refused["id"])] == [
        (1, "action", "not_record_owner"),
        (2, "action", "not_record_owner"),
    ]
    assert await colours(api, db, settings, citizen, 3) == ("red", "red", "R")
    assert await db.fetchval("SELECT count(*) FROM record_history") == 0


async def test_an_operator_load_may_correct_any_agency_record(
    api: Api, client_keys: dict[str, str], db: asyncpg.Connection, redis: Redis, settings: Settings, tmp_path: Path
) -> None:
    sampled = ago(hours=3)
    await upload(api, client_keys["agency"], "test", csv_body(TESTS, f"{number(4)},{sampled},positive,lab-a"))
    path = tmp_path / "fix.csv"
    path.write_bytes(csv_body(TESTS, f"{number(4)},{sampled},negative,lab-a"))
    out = io.StringIO()
    batch_id = await load_file(settings, "test", path, out=out)
    assert "corrected 1, retracted 0" in out.getvalue()
    assert await db.fetchval("SELECT client_id FROM record_history WHERE batch_id = $1", batch_id) == 0
    assert await colours(api, db, settings, client_keys["citizen-backend"], 4) == ("green", "green", "G")


async def test_a_designation_ended_early_recomputes_at_once(
    api: Api, client_keys: dict[str, str], db: asyncpg.Connection, settings: Settings
) -> None:
    agency, citizen = client_keys["agency"], client_keys["citizen-backend"]
    since = ago(days=2)
    row = f"{number(5)},quarantine,{since},{{until}},cdc-1"
    await upload(api, agency, "designation", csv_body(DESIGNATIONS, row.format(until=ago(days=-5))))
    assert await colours(api, db, settings, citizen, 5) == ("red", "red", "R")
    _, ended = await upload(api, agency, "designation", csv_body(DESIGNATIONS, row.format(until=ago(hours=1))))
    assert ended["counts"] == counts(corrected=1)
    assert await colours(api, db, settings, citizen, 5) == ("green", "green", "G")
    previous = await db.fetchval("SELECT previous FROM record_history")
    assert (previous["kind"], previous["authority"]) == ("quarantine", "cdc-1")


async def test_an_unknown_action_is_rejected(api: Api, client_keys: dict[str, str]) -> None:
    agency = client_keys["agency"]
    body = csv_body(f"{TESTS},action", f"{number(6)},{ago(hours=1)},negative,lab-a,delete")
    _, batch = await upload(api, agency, "test", body)
    assert batch["counts"] == counts(rejected=1)
    got = await rejections(api, agency, batch["id"])
    assert [(r["field"], r["code"]) for r in got] == [("action", "bad_action")]
