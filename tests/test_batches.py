"""Uploads of every record kind through POST /v1/batches, against real Postgres and Redis."""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest
from redis.asyncio import Redis

from app.clients import add_client
from app.http.appkeys import INGEST, INGEST_PG
from tests.conftest import AppFactory
from tests.support import bearer
from tests.test_ingest_helpers import (
    Api,
    ago,
    bad_checksum,
    csv_body,
    ndjson_body,
    number,
    rejections,
    status_of,
    upload,
)

POPULATION = "id_type,id_number,name"


def people(*indexes: int) -> bytes:
    return csv_body(POPULATION, *(f"resident,{number(i)},张{i}" for i in indexes))


async def test_population_good_and_bad_rows(api: Api, client_keys: dict[str, str], db: asyncpg.Connection) -> None:
    body = csv_body(
        POPULATION,
        f"resident,{number(1)},张三",
        f"resident,{number(2)},李四",
        f"resident,{bad_checksum(3)},王五",
        f"resident,{number(4)},",
        f"resident,{number(1)[:10]},赵六",
        "passport,E1234567,Smith",
    )
    status, batch = await upload(api, client_keys["agency"], "population", body)
    assert status == 202
    assert batch["state"] == "done"
    assert batch["counts"] == {"read": 6, "accepted": 3, "rejected": 3, "duplicates": 0, "corrected": 0, "retracted": 0}
    assert batch["subjects_recomputed"] == 3
    assert batch["timings"]["finished_at"] is not None
    assert await rejections(api, client_keys["agency"], batch["id"]) == [
        {
            "row": 3,
            "field": "id_number",
            "code": "bad_checksum",
            "message": "the check character does not match the first 17 digits",
        },
        {"row": 4, "field": "name", "code": "missing_field", "message": "name is required"},
        {
            "row": 5,
            "field": "id_number",
            "code": "wrong_length",
            "message": "a resident identity number has 18 characters, got 10",
        },
    ]
    rows = await db.fetch("SELECT id_type, masked_name, masked_number FROM subjects ORDER BY masked_name")
    assert sorted((r["id_type"], r["masked_name"]) for r in rows) == [
        ("passport", "S*"),
        ("resident", "张*"),
        ("resident", "李*"),
    ]
    assert {r["masked_number"] for r in rows} == {
        "50**************" + number(1)[-2:],
        "50**************" + number(2)[-2:],
        "E1****67",
    }
    # Staging is emptied once done, and no raw number is stored anywhere we wrote.
    assert await db.fetchval("SELECT count(*) FROM staging_population") == 0
    dump = str(await db.fetch("SELECT * FROM subjects")) + str(await db.fetch("SELECT * FROM batch_rejections"))
    assert number(1) not in dump and bad_checksum(3) not in dump
    assert (await status_of(api, client_keys["citizen-backend"], number(1)))["colour"] == "green"


async def test_repeated_upload_returns_the_first_batch(
    api: Api, client_keys: dict[str, str], db: asyncpg.Connection
) -> None:
    secret = client_keys["agency"]
    status, first = await upload(api, secret, "population", people(1, 2))
    assert status == 202
    status, again = await upload(api, secret, "population", people(1, 2))
    assert (status, again["id"]) == (200, first["id"])
    assert again["counts"] == first["counts"]
    assert await db.fetchval("SELECT count(*) FROM batches") == 1
    # With an Idempotency-Key, the key decides, whatever the body.
    key = {"Idempotency-Key": "upload-7"}
    status, keyed = await upload(api, secret, "population", people(3), headers=key)
    assert status == 202
    status, keyed_again = await upload(api, secret, "population", people(4), headers=key)
    assert (status, keyed_again["id"]) == (200, keyed["id"])
    assert await db.fetchval("SELECT count(*) FROM subjects") == 3


async def test_same_record_twice_is_stored_once(api: Api, client_keys: dict[str, str], db: asyncpg.Connection) -> None:
    secret = client_keys["agency"]
    header = "id_number,sampled_at,result,lab"
    row = f"{number(1)},{ago(hours=3)},negative,lab-a"
    _, batch = await upload(
        api, secret, "test", csv_body(header, row, row, f"{number(2)},{ago(hours=2)},negative,lab-a")
    )
    assert batch["counts"] == {"read": 3, "accepted": 2, "rejected": 0, "duplicates": 1, "corrected": 0, "retracted": 0}
    _, batch = await upload(api, secret, "test", csv_body(header, row, f"{number(3)},{ago(hours=2)},negative,lab-b"))
    assert batch["counts"] == {"read": 2, "accepted": 1, "rejected": 0, "duplicates": 1, "corrected": 0, "retracted": 0}
    assert await db.fetchval("SELECT count(*) FROM nucleic_tests") == 3


async def test_positive_test_turns_the_status_red(api: Api, client_keys: dict[str, str]) -> None:
    secret, citizen = client_keys["agency"], client_keys["citizen-backend"]
    await upload(api, secret, "population", people(1, 2))
    assert (await status_of(api, citizen, number(1)))["colour"] == "green"
    body = csv_body(
        "id_type,id_number,sampled_at,result,lab,reported_at",
        f"resident,{number(1)},{ago(hours=30)},positive,lab-a,{ago(hours=20)}",
        f"resident,{number(2)},{ago(hours=30)},negative,lab-a,",
        f"resident,{number(3)},{ago(hours=-30)},negative,lab-a,",
        f"resident,{number(4)},{ago(hours=3)},unclear,lab-a,",
        f"resident,{number(5)},{ago(hours=3)},negative,lab-a,{ago(hours=4)}",
        f"resident,{number(6)},yesterday,negative,lab-a,",
        f"resident,{bad_checksum(7)},{ago(hours=3)},negative,lab-a,",
    )
    _, batch = await upload(api, secret, "test", body)
    assert batch["counts"] == {"read": 7, "accepted": 2, "rejected": 5, "duplicates": 0, "corrected": 0, "retracted": 0}
    assert [(r["row"], r["field"], r["code"]) for r in await rejections(api, secret, batch["id"])] == [
        (3, "sampled_at", "date_in_future"),
        (4, "result", "bad_result"),
        (5, "reported_at", "bad_interval"),
        (6, "sampled_at", "bad_time"),
        (7, "id_number", "bad_checksum"),
    ]
    red = await status_of(api, citizen, number(1))
    assert (red["colour"], red["reasons"]) == ("red", ["positive_test"])
    green = await status_of(api, citizen, number(2))
    assert (green["colour"], green["last_test"]["result"]) == ("green", "negative")


async def test_vaccination_rows(api: Api, client_keys: dict[str, str]) -> None:
    secret = client_keys["agency"]
    await upload(api, secret, "population", people(1))
    body = csv_body(
        "id_number,product,dose,vaccinated_on,site",
        f"{number(1)},sinovac-coronavac,1,2021-05-01,site-1",
        f"{number(1)},sinovac-coronavac,2,2021-06-01,",
        f"{number(1)},made-up-vaccine,1,2021-05-01,",
        f"{number(1)},sinovac-coronavac,0,2021-05-01,",
        f"{number(1)},sinovac-coronavac,3,2999-01-01,",
        f"{number(1)},sinovac-coronavac,3,01/05/2021,",
    )
    _, batch = await upload(api, secret, "vaccination", body)
    assert batch["counts"] == {"read": 6, "accepted": 2, "rejected": 4, "duplicates": 0, "corrected": 0, "retracted": 0}
    assert [(r["row"], r["code"]) for r in await rejections(api, secret, batch["id"])] == [
        (3, "unknown_product"),
        (4, "bad_dose"),
        (5, "date_in_future"),
        (6, "bad_date"),
    ]
    status = await status_of(api, client_keys["citizen-backend"], number(1))
    assert status["vaccination"] == {"doses": 2, "complete": True}


async def test_travel_and_a_new_risk_area_recompute_arrivals(
    api: Api, client_keys: dict[str, str], db: asyncpg.Connection
) -> None:
    secret, citizen = client_keys["agency"], client_keys["citizen-backend"]
    body = csv_body(
        "id_number,area_code,arrived_at,mode",
        f"{number(1)},420102,{ago(hours=5)},rail",
        f"{number(2)},110105,{ago(hours=5)},air",
        f"{number(3)},999999,{ago(hours=5)},air",
        f"{number(3)},42010,{ago(hours=5)},air",
        f"{number(3)},420102,{ago(hours=5)},bicycle",
    )
    _, batch = await upload(api, secret, "travel", body)
    assert batch["counts"] == {"read": 5, "accepted": 2, "rejected": 3, "duplicates": 0, "corrected": 0, "retracted": 0}
    assert [r["code"] for r in await rejections(api, secret, batch["id"])] == [
        "unknown_area_code",
        "unknown_area_code",
        "bad_mode",
    ]
    assert (await status_of(api, citizen, number(1)))["colour"] == "green"
    # Wuhan (4201xx) becomes high-risk: everyone who arrived from there is recomputed, nobody else.
    since = ago(days=2)
    areas = csv_body("area_code,level,valid_from,valid_until", f"420100,high,{since},", f"420100,severe,{since},")
    _, batch = await upload(api, secret, "risk_area", areas)
    assert batch["counts"] == {"read": 2, "accepted": 1, "rejected": 1, "duplicates": 0, "corrected": 0, "retracted": 0}
    assert batch["subjects_recomputed"] == 1
    flagged = await status_of(api, citizen, number(1))
    assert (flagged["colour"], flagged["popup"], flagged["reasons"]) == ("yellow", True, ["risk_area_arrival"])
    assert (await status_of(api, citizen, number(2)))["colour"] == "green"
    # The same area sent again with another level is a change, and lowers the person again.
    _, batch = await upload(api, secret, "risk_area", csv_body("area_code,level,valid_from", f"420100,low,{since}"))
    assert batch["counts"]["accepted"] == 1
    assert (await status_of(api, citizen, number(1)))["colour"] == "green"
    assert await db.fetchval("SELECT count(*) FROM risk_areas") == 1


async def test_designations(api: Api, client_keys: dict[str, str]) -> None:
    secret, citizen = client_keys["agency"], client_keys["citizen-backend"]
    body = csv_body(
        "id_number,kind,valid_from,valid_until,authority,reason",
        f"{number(1)},confirmed,{ago(days=1)},,cdc,case 17",
        f"{number(2)},secondary_contact,{ago(days=1)},{ago(days=-3)},cdc,",
        f"{number(3)},suspicious,{ago(days=1)},,cdc,",
        f"{number(3)},quarantine,{ago(days=1)},{ago(days=2)},cdc,",
        f"{number(3)},quarantine,{ago(days=1)},,,",
    )
    _, batch = await upload(api, secret, "designation", body)
    assert batch["counts"] == {"read": 5, "accepted": 2, "rejected": 3, "duplicates": 0, "corrected": 0, "retracted": 0}
    assert [(r["field"], r["code"]) for r in await rejections(api, secret, batch["id"])] == [
        ("kind", "bad_kind"),
        ("valid_until", "bad_interval"),
        ("authority", "missing_field"),
    ]
    assert (await status_of(api, citizen, number(1)))["colour"] == "red"
    assert (await status_of(api, citizen, number(2)))["colour"] == "yellow"


async def test_ndjson_and_gzip(api: Api, client_keys: dict[str, str]) -> None:
    secret = client_keys["agency"]
    body = (
        ndjson_body(
            {"id_number": number(1), "name": "张三"},
            {"id_type": "resident", "id_number": number(2), "name": "李四", "age": 30},
            {"id_number": number(3), "name": ["x"]},
        )
        + b"not json\n[1, 2]\n"
    )
    status, batch = await upload(
        api,
        secret,
        "population",
        gzip.compress(body),
        content_type="application/x-ndjson",
        headers={"Content-Encoding": "gzip"},
    )
    assert status == 202
    assert batch["format"] == "ndjson"
    assert batch["counts"] == {"read": 5, "accepted": 1, "rejected": 4, "duplicates": 0, "corrected": 0, "retracted": 0}
    assert [(r["row"], r["field"], r["code"]) for r in await rejections(api, secret, batch["id"])] == [
        (2, "age", "unknown_field"),
        (3, "name", "bad_type"),
        (4, "", "bad_json"),
        (5, "", "bad_json"),
    ]
    # gzip CSV, with a quoted field holding a comma, a header in another order and a BOM.
    csv_gz = gzip.compress(f'\ufeffname,id_number\n"张,三",{number(9)}\n'.encode())
    status, batch = await upload(api, secret, "population", csv_gz, headers={"Content-Encoding": "gzip"})
    assert (status, batch["counts"]["accepted"]) == (202, 1)


async def test_batch_level_problems(api: Api, client_keys: dict[str, str], db: asyncpg.Connection) -> None:
    secret = client_keys["agency"]

    async def refused(kind: str, body: bytes, **kw: object) -> dict[str, object]:
        status, problem = await upload(api, secret, kind, body, **kw)  # type: ignore[arg-type]
        problem["status_code"] = status
        return problem

    problem = await refused("population", csv_body("id_number,nickname", f"{number(1)},x"))
    assert problem["status_code"] == 422
    assert (problem["code"], problem["missing"], problem["unknown"]) == ("bad_columns", ["name"], ["nickname"])
    problem = await refused("test", csv_body("sampled_at,result,lab", f"{ago(hours=1)},negative,x"))
    assert (problem["code"], problem["missing"]) == ("bad_columns", ["id_number or sample_id"])
    problem = await refused("population", b"\x1f\x8b\x08\x00garbage", headers={"Content-Encoding": "gzip"})
    assert (problem["status_code"], problem["code"]) == (422, "bad_gzip")
    problem = await refused("population", gzip.compress(people(1))[:-12], headers={"Content-Encoding": "gzip"})
    assert (problem["status_code"], problem["code"]) == (422, "bad_gzip")
    problem = await refused("population", b"")
    assert (problem["status_code"], problem["code"]) == (422, "missing_header")
    problem = await refused("population", f"id_number,name\n{number(1)},\xff".encode("latin-1"))
    assert (problem["status_code"], problem["code"]) == (422, "not_utf8")
    problem = await refused("vaccinations", people(1))
    assert problem["status_code"] == 422 and problem["type"] == "/problems/unknown-kind"
    problem = await refused("population", people(1), content_type="application/json")
    assert problem["status_code"] == 415
    problem = await refused("population", people(1), headers={"Content-Encoding": "br"})
    assert problem["status_code"] == 415
    # Nothing of any refused batch was kept.
    assert await db.fetchval("SELECT count(*) FROM batches") == 0
    assert await db.fetchval("SELECT count(*) FROM staging_population") == 0


async def test_over_the_size_limit(
    make_client: AppFactory, client_keys: dict[str, str], db: asyncpg.Connection
) -> None:
    api = await make_client(max_upload_bytes=4096)
    secret = client_keys["agency"]
    big = people(*range(200))
    assert len(big) > 4096
    status, problem = await upload(api, secret, "population", big)
    assert (status, problem["type"]) == (413, "/problems/batch-too-large")

    async def chunks() -> object:
        for start in range(0, len(big), 1000):
            yield big[start : start + 1000]

    # Streamed without a Content-Length: refused while reading.
    r = await api.post(
        "/v1/batches?kind=population", data=chunks(), headers={**bearer(secret), "Content-Type": "text/csv"}
    )
    assert r.status == 413, await r.text()
    # Small when compressed, over the limit when decompressed.
    bomb = gzip.compress(csv_body(POPULATION) + b"\n" * 100_000)
    assert len(bomb) < 4096
    status, problem = await upload(api, secret, "population", bomb, headers={"Content-Encoding": "gzip"})
    assert status == 413
    assert await db.fetchval("SELECT count(*) FROM batches") == 0
    # Under the limit is fine.
    status, _ = await upload(api, secret, "population", people(1, 2))
    assert status == 202


async def test_agency_may_upload_only_its_kinds(
    make_client: AppFactory, db: asyncpg.Connection, client_keys: dict[str, str]
) -> None:
    lab = (await add_client(db, "lab-1", "agency", ("test",))).secret
    other = (await add_client(db, "lab-2", "agency", ("test", "population"))).secret
    api = await make_client()
    status, problem = await upload(api, lab, "designation", csv_body("id_number,kind,valid_from,authority"))
    assert (status, problem["type"]) == (403, "/problems/kind-not-allowed")
    status, problem = await upload(api, client_keys["scanner"], "test", csv_body("id_number,sampled_at,result,lab"))
    assert status == 403
    status, batch = await upload(
        api, lab, "test", csv_body("id_number,sampled_at,result,lab", f"{number(1)},{ago(hours=1)},negative,l")
    )
    assert status == 202
    # Another agency cannot see the batch.
    r = await api.get(f"/v1/batches/{batch['id']}", headers=bearer(other))
    assert r.status == 404
    r = await api.get(f"/v1/batches/{batch['id']}/rejections", headers=bearer(other))
    assert r.status == 404
    r = await api.get("/v1/batches/nonsense", headers=bearer(lab))
    assert r.status == 404


async def test_an_agency_past_its_upload_rate_is_told_to_back_off(
    make_client: AppFactory, client_keys: dict[str, str], db: asyncpg.Connection
) -> None:
    api = await make_client(agency_uploads_per_second=1)
    # Three uploads within a second or two: whichever second holds two of them refuses the second.
    answers = [await upload(api, client_keys["agency"], "population", people(i), wait=False) for i in range(3)]

    statuses = [status for status, _ in answers]
    assert 429 in statuses, statuses
    assert set(statuses) <= {202, 429}
    refused = next(payload for status, payload in answers if status == 429)
    assert refused["type"] == "/problems/rate-limited"
    assert refused["limit"] == "uploads"
    assert refused["detail"].startswith("client test-agency has used its uploads limit (1 a second, bursts of 1)")
    # A refused upload leaves nothing behind.
    assert await db.fetchval("SELECT count(*) FROM batches") == statuses.count(202)


async def test_a_batch_id_no_bigint_holds_is_not_found(api: Api, client_keys: dict[str, str]) -> None:
    for path in ("/v1/batches/99999999999999999999", "/v1/batches/99999999999999999999/rejections"):
        r = await api.get(path, headers=bearer(client_keys["agency"]))
        assert r.status == 404, await r.text()
        assert (await r.json())["type"] == "/problems/not-found"


async def test_a_batch_id_out_of_range_is_not_found(api: Api, client_keys: dict[str, str]) -> None:
    """Ids past bigint (or below 1) name no batch: a 404 problem, never a 500 from Postgres."""
    secret = client_keys["agency"]
    for path in (
        "/v1/batches/99999999999999999999",
        "/v1/batches/99999999999999999999/rejections",
        "/v1/batches/9223372036854775808",
        "/v1/batches/0",
        "/v1/batches/-1",
    ):
        r = await api.get(path, headers=bearer(secret))
        assert r.status == 404, (path, await r.text())
        assert r.content_type == "application/problem+json"
        number_part = path.split("/")[3]
        assert await r.json() == {
            "type": "/problems/not-found",
            "title": "No such resource",
            "status": 404,
            "detail": f"no batch {number_part} for this agency",
            "instance": path,
        }


async def test_a_multi_member_gzip_upload_is_read_to_the_end(api: Api, client_keys: dict[str, str]) -> None:
    """`cat a.gz b.gz`: every member's rows are read, none silently dropped."""
    more = "".join(f"resident,{number(i)},李{i}\n" for i in (3, 4, 5)).encode()
    body = gzip.compress(people(1, 2)) + gzip.compress(more)
    status, batch = await upload(api, client_keys["agency"], "population", body, headers={"Content-Encoding": "gzip"})
    assert status == 202
    assert batch["counts"] == {"read": 5, "accepted": 5, "rejected": 0, "duplicates": 0, "corrected": 0, "retracted": 0}


async def test_rejections_past_the_cap_refuse_the_batch_with_a_summary(
    make_client: AppFactory, client_keys: dict[str, str], db: asyncpg.Connection
) -> None:
    """A few hundred KB of gzipped `{}` lines is millions of bad rows: refused at the cap, none stored."""
    api = await make_client(max_rejections_per_batch=100)
    secret = client_keys["agency"]
    junk = gzip.compress(b"{}\n" * 2_000_000)
    assert len(junk) < 10_000
    r = await api.post(
        "/v1/batches?kind=population",
        data=junk,
        headers={**bearer(secret), "Content-Type": "application/x-ndjson", "Content-Encoding": "gzip"},
    )
    assert r.status == 422, await r.text()
    assert await r.json() == {
        "type": "/problems/too-many-rejections",
        "title": "Too many rows of the batch were rejected",
        "status": 422,
        "detail": "more than 100 rows of the batch were rejected (missing_field 101) by row 101; "
        "nothing was stored: fix the data and send it again",
        "instance": "/v1/batches",
        "limit": 100,
        "rows_read": 101,
        "rejections_by_code": {"missing_field": 101},
    }
    assert await db.fetchval("SELECT count(*) FROM batches") == 0
    assert await db.fetchval("SELECT count(*) FROM batch_rejections") == 0
    # Counted by code, whatever the mix; up to the cap a batch is stored with its rejections.
    mixed = csv_body(POPULATION, *(f"resident,{number(i)},张{i}" for i in range(5)), *(["x,y,z"] * 60), *(["a,b"] * 50))
    status, problem = await upload(api, secret, "population", mixed)
    assert (status, problem["rejections_by_code"]) == (422, {"unknown_id_type": 60, "bad_row": 41})
    status, batch = await upload(api, secret, "population", mixed[: mixed.index(b"a,b")])
    assert (status, batch["counts"]["rejected"]) == (202, 60)


async def uploads_in_transaction(db: asyncpg.Connection, count: int) -> None:
    """Wait (bounded) until `count` sessions of this database hold a transaction open while idle:
    uploads whose batch row is written and whose body is still to come."""
    query = """SELECT count(*) FROM pg_stat_activity
               WHERE datname = current_database() AND state = 'idle in transaction'"""
    for _ in range(500):
        if await db.fetchval(query) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"fewer than {count} uploads in progress after 5 s")


async def test_the_same_key_while_the_first_upload_streams_is_409_at_once(
    api: Api, client_keys: dict[str, str], db: asyncpg.Connection
) -> None:
    secret = client_keys["agency"]
    headers = {**bearer(secret), "Content-Type": "text/csv", "Idempotency-Key": "upload-9"}
    release = asyncio.Event()

    async def slow_body() -> AsyncIterator[bytes]:
        yield people(1, 2)
        await release.wait()
        yield f"resident,{number(3)},王三\n".encode()

    first = asyncio.create_task(api.post("/v1/batches?kind=population", data=slow_body(), headers=headers))
    await uploads_in_transaction(db, 1)
    started = time.monotonic()
    r = await asyncio.wait_for(api.post("/v1/batches?kind=population", data=people(5), headers=headers), 10)
    assert time.monotonic() - started < 2
    assert r.status == 409, await r.text()
    assert r.headers["Retry-After"] == "5"
    assert await r.json() == {
        "type": "/problems/upload-in-progress",
        "title": "An upload with this Idempotency-Key is in progress",
        "status": 409,
        "detail": "an upload with this Idempotency-Key is still in progress; once it ends, the same request "
        "answers with its batch",
        "instance": "/v1/batches",
    }
    release.set()
    done = await first
    assert done.status == 202, await done.text()
    batch_id = (await done.json())["id"]
    r = await api.post("/v1/batches?kind=population", data=people(5), headers=headers)
    assert (r.status, (await r.json())["id"]) == (200, batch_id)
    await api.app[INGEST].drain()
    assert await db.fetchval("SELECT rows_read FROM batches") == 3


class StalledBodies:
    """Upload bodies that send their first rows, then stop until released."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def body(self, i: int) -> AsyncIterator[bytes]:
        yield people(i)
        await self.release.wait()


@pytest.mark.slow
async def test_slow_uploads_cannot_starve_misses_or_readiness(
    make_client: AppFactory, client_keys: dict[str, str], db: asyncpg.Connection, redis: Redis
) -> None:
    """More stalled uploads than the upload pool holds: a status miss and /readyz still answer at once,
    and the upload past the pool is told to come back."""
    api = await make_client(pg_pool_max=2, ingest_pool_max=2)
    secret, citizen = client_keys["agency"], client_keys["citizen-backend"]
    await upload(api, secret, "population", people(100))
    await redis.flushdb()  # the next status look-up is a miss, answered from Postgres
    stalled = StalledBodies()
    headers = {**bearer(secret), "Content-Type": "text/csv"}
    slow = [
        asyncio.create_task(api.post("/v1/batches?kind=population", data=stalled.body(i), headers=headers))
        for i in range(3)
    ]
    await uploads_in_transaction(db, 2)
    started = time.monotonic()
    status = await asyncio.wait_for(status_of(api, citizen, number(100)), 5)
    ready = await asyncio.wait_for(api.get("/readyz"), 5)
    assert time.monotonic() - started < 1.0
    assert (status["colour"], ready.status) == ("green", 200)
    # The third upload found no free slot: a 503 to retry, not a wait without end.
    done, _ = await asyncio.wait(slow, timeout=10, return_when=asyncio.FIRST_COMPLETED)
    refused = done.pop().result()
    assert refused.status == 503, await refused.text()
    assert refused.headers["Retry-After"] == "5"
    assert await refused.json() == {
        "type": "/problems/uploads-busy",
        "title": "Every upload slot of this process is in use",
        "status": 503,
        "detail": "all 2 upload slots of this process are in use; retry after Retry-After seconds",
        "instance": "/v1/batches",
    }
    stalled.release.set()
    assert sorted([(await task).status for task in slow]) == [202, 202, 503]


@pytest.mark.slow
async def test_an_upload_whose_body_stops_is_ended_and_frees_its_connection(
    make_client: AppFactory, client_keys: dict[str, str], db: asyncpg.Connection
) -> None:
    api = await make_client(upload_idle_seconds=1)
    stalled = StalledBodies()
    headers = {**bearer(client_keys["agency"]), "Content-Type": "text/csv"}
    r = await asyncio.wait_for(api.post("/v1/batches?kind=population", data=stalled.body(1), headers=headers), 10)
    assert r.status == 408, await r.text()
    assert await r.json() == {
        "type": "/problems/body-timeout",
        "title": "The request body stopped arriving",
        "status": 408,
        "detail": "no part of the body arrived for 1 s; nothing was stored, send the batch again",
        "instance": "/v1/batches",
    }
    stalled.release.set()
    assert await db.fetchval("SELECT count(*) FROM batches") == 0
    assert api.app[INGEST_PG].get_idle_size() == api.app[INGEST_PG].get_size()
