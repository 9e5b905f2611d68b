"""Rows Postgres could not store are rejected one by one, in every column of every kind, never the batch."""

from __future__ import annotations

import orjson
import pytest

from app.ingest.kinds import KINDS
from tests.test_ingest_helpers import Api, ago, csv_body, ndjson_body, number, rejections, upload


def good_row(kind: str, i: int) -> dict[str, str]:
    """A row of `kind` with every column filled, that the kind accepts."""
    person = {"id_type": "resident", "id_number": number(i)}
    rows = {
        "population": {**person, "name": "张三"},
        "vaccination": {**person, "product": "sinovac-coronavac", "dose": "1", "vaccinated_on": "2021-05-01"}
        | {"site": "site-1"},
        "test": {**person, "sample_id": f"s-{i}", "sampled_at": ago(hours=3), "result": "negative", "lab": "lab-a"}
        | {"reported_at": ago(hours=2)},
        "travel": {**person, "area_code": "420102", "arrived_at": ago(hours=5), "mode": "rail"},
        "designation": {**person, "kind": "confirmed", "valid_from": ago(days=1), "valid_until": ago(days=-3)}
        | {"authority": "cdc", "reason": "case 17"},
        "risk_area": {"area_code": "420100", "level": "high", "valid_from": ago(days=2), "valid_until": ago(days=-2)},
    }
    row = rows[kind] | ({} if kind in ("population", "risk_area") else {"action": "upsert"})
    assert set(row) == KINDS[kind].columns
    return row


def as_csv(rows: list[dict[str, str]]) -> bytes:
    columns = list(rows[0])  # no value here holds a comma, a quote or a newline
    return csv_body(",".join(columns), *(",".join(r[c] for c in columns) for r in rows))


def with_nul(value: str) -> str:
    return value[:1] + "\x00" + value[1:]


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("fmt", ["csv", "ndjson"])
async def test_nul_in_any_column_rejects_that_row_only(
    api: Api, client_keys: dict[str, str], kind: str, fmt: str
) -> None:
    columns = sorted(KINDS[kind].columns)
    rows = [good_row(kind, 1)]
    for n, column in enumerate(columns, 2):
        row = good_row(kind, n)
        row[column] = with_nul(row[column])
        rows.append(row)
    body = as_csv(rows) if fmt == "csv" else ndjson_body(*rows)
    assert b"\x00" in body if fmt == "csv" else b"\\u0000" in body
    content_type = "text/csv" if fmt == "csv" else "application/x-ndjson"
    status, batch = await upload(api, client_keys["agency"], kind, body, content_type=content_type)
    assert status == 202, batch
    assert batch["state"] == "done"
    assert batch["counts"] == {
        "read": len(rows),
        "accepted": 1,
        "rejected": len(columns),
        "duplicates": 0,
        "corrected": 0,
        "retracted": 0,
    }
    got = await rejections(api, client_keys["agency"], batch["id"])
    assert [(r["row"], r["field"], r["code"]) for r in got] == [
        (n, column, "nul_character") for n, column in enumerate(columns, 2)
    ]
    assert got[0]["message"] == f"{columns[0]} holds '\\x00' at position 1, which cannot be stored; remove it"


async def test_nul_in_an_ndjson_field_name_is_a_row_rejection(api: Api, client_keys: dict[str, str]) -> None:
    body = ndjson_body(good_row("population", 1)) + orjson.dumps({"na\x00me": "x", "id_number": number(2)}) + b"\n"
    status, batch = await upload(api, client_keys["agency"], "population", body, content_type="application/x-ndjson")
    assert (status, batch["counts"]["accepted"], batch["counts"]["rejected"]) == (202, 1, 1)
    assert [(r["row"], r["field"], r["code"]) for r in await rejections(api, client_keys["agency"], batch["id"])] == [
        (2, "", "nul_character")
    ]


TIME_COLUMNS = [
    (kind, column)
    for kind in KINDS
    for column in sorted(KINDS[kind].columns)
    if column in {"sampled_at", "reported_at", "arrived_at", "valid_from", "valid_until"}
]


@pytest.mark.parametrize(("kind", "column"), TIME_COLUMNS)
async def test_a_time_past_what_our_columns_hold_rejects_that_row_only(
    api: Api, client_keys: dict[str, str], kind: str, column: str
) -> None:
    """Year 9999 in a western offset is past what Python's datetime holds in UTC; year 9999 anywhere is
    past any real record. Each is a rejection of its row with its own code."""
    late = ("9999-12-31T23:00:00-05:00", "9999-12-31T23:00:00+08:00", "2100-01-01T08:00:00+08:00")
    rows = [good_row(kind, 1)]
    for n, value in enumerate(late, 2):
        row = good_row(kind, n)
        row[column] = value
        if column == "valid_from":
            row.pop("valid_until", None)  # so that the interval check does not speak first
        rows.append(row)
    rows = [{c: r.get(c, "") for c in rows[0]} for r in rows]
    status, batch = await upload(api, client_keys["agency"], kind, as_csv(rows))
    assert status == 202, batch
    assert batch["counts"] == {"read": 4, "accepted": 1, "rejected": 3, "duplicates": 0, "corrected": 0, "retracted": 0}
    got = await rejections(api, client_keys["agency"], batch["id"])
    assert [(r["row"], r["field"], r["code"]) for r in got] == [(n, column, "time_out_of_range") for n in (2, 3, 4)]
    assert got[0]["message"] == f"{column} 9999-12-31T23:00:00-05:00 is not before 2100"
