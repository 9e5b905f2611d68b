"""Agency records always win over declared ones: an agency's row with the natural key of a record a person
declared takes it over (the declared record kept in history); an agency may not retract it."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg

from app.identity import Identity, pseudonym
from app.settings import Settings
from tests.conftest import Api
from tests.support import bearer
from tests.test_corrections import counts
from tests.test_declarations import CALM, trip
from tests.test_ingest_helpers import csv_body, number, rejections, upload

TRAVEL = "id_number,area_code,arrived_at,mode"


async def declared_arrival(api: Api, citizen: str, db: asyncpg.Connection, i: int) -> str:
    """Declares a rail arrival from CALM two days ago for person i; the moment stored, as ISO text."""
    body = {"id_number": number(i), "name": "李四", "phone": "13812345678", "travel": [trip(CALM, 2)]}
    r = await api.post("/v1/declarations", json=body, headers=bearer(citizen))
    assert r.status == 200, await r.text()
    arrived: datetime = await db.fetchval("SELECT arrived_at FROM travel_arrivals WHERE source = 'declared'")
    return arrived.astimezone(UTC).isoformat()


async def test_an_agency_row_for_a_declared_record_takes_it_over(
    api: Api, client_keys: dict[str, str], db: asyncpg.Connection, settings: Settings
) -> None:
    agency = client_keys["agency"]
    arrived = await declared_arrival(api, client_keys["citizen-backend"], db, 1)
    revision = await db.fetchval("SELECT revision FROM subjects")

    _, batch = await upload(api, agency, "travel", csv_body(TRAVEL, f"{number(1)},{CALM},{arrived},air"))

    assert batch["counts"] == counts(corrected=1)
    row = await db.fetchrow("SELECT mode, source, declaration_id, batch_id FROM travel_arrivals")
    assert row is not None
    assert tuple(row) == ("air", "agency", None, batch["id"])
    history = await db.fetchrow("SELECT change, previous, previous_batch_id, batch_id FROM record_history")
    assert history is not None
    assert (history["change"], history["previous_batch_id"], history["batch_id"]) == ("corrected", None, batch["id"])
    assert (history["previous"]["mode"], history["previous"]["source"]) == ("rail", "declared")
    assert await db.fetchval("SELECT revision FROM subjects") > revision
    subject = pseudonym(Identity("resident", number(1)), settings.pepper)
    assert await db.fetchval("SELECT pseudonym FROM statuses") == subject


async def test_an_agency_row_agreeing_with_a_declared_record_still_makes_it_the_agencys(
    api: Api, client_keys: dict[str, str], db: asyncpg.Connection
) -> None:
    agency = client_keys["agency"]
    arrived = await declared_arrival(api, client_keys["citizen-backend"], db, 2)
    _, batch = await upload(api, agency, "travel", csv_body(TRAVEL, f"{number(2)},{CALM},{arrived},rail"))
    assert batch["counts"] == counts(corrected=1)
    assert await db.fetchval("SELECT source FROM travel_arrivals") == "agency"
    # From then on it is the agency's record like any other: the same row again is a duplicate.
    _, again = await upload(
        api, agency, "travel", csv_body(TRAVEL, f"{number(2)},{CALM},{arrived},rail"), headers={"Idempotency-Key": "2"}
    )
    assert again["counts"] == counts(duplicates=1)


async def test_an_agency_may_not_retract_a_declared_record(
    api: Api, client_keys: dict[str, str], db: asyncpg.Connection
) -> None:
    agency = client_keys["agency"]
    arrived = await declared_arrival(api, client_keys["citizen-backend"], db, 3)
    body = csv_body(f"{TRAVEL},action", f"{number(3)},{CALM},{arrived},rail,retract")
    _, batch = await upload(api, agency, "travel", body)
    assert batch["counts"] == counts(rejected=1)
    assert [(r["field"], r["code"]) for r in await rejections(api, agency, batch["id"])] == [
        ("action", "not_record_owner")
    ]
    assert await db.fetchval("SELECT source FROM travel_arrivals") == "declared"
