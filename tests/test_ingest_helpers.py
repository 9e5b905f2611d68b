"""Helpers for ingestion tests (no tests here): valid identity numbers, bodies, upload and wait."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import TestClient

from app.http.appkeys import INGEST
from app.identity import resident_check_char
from tests.support import bearer

Api = TestClient[web.Request, web.Application]


def number(i: int) -> str:
    """A valid resident identity number, distinct per i."""
    first17 = f"500101199001{(i // 1000) % 28 + 1:02d}{i % 1000:03d}"
    return first17 + resident_check_char(first17)


def bad_checksum(i: int) -> str:
    good = number(i)
    return good[:17] + ("0" if good[17] != "0" else "1")


def iso(moment: datetime) -> str:
    return moment.isoformat()


def ago(**delta: float) -> str:
    return iso(datetime.now(UTC) - timedelta(**delta))


def csv_body(header: str, *rows: str) -> bytes:
    return ("\n".join((header, *rows)) + "\n").encode()


def ndjson_body(*rows: dict[str, Any]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in rows)


async def upload(
    api: Api,
    secret: str,
    kind: str,
    body: bytes,
    *,
    content_type: str = "text/csv",
    headers: dict[str, str] | None = None,
    wait: bool = True,
) -> tuple[int, dict[str, Any]]:
    """POST a batch; wait for its processing; return (status of the POST, the batch as GET shows it)."""
    r = await api.post(
        f"/v1/batches?kind={kind}",
        data=body,
        headers={**bearer(secret), "Content-Type": content_type, **(headers or {})},
    )
    status = r.status
    payload = await r.json()
    if status not in (200, 202):
        return status, payload
    assert r.headers["Location"] == f"/v1/batches/{payload['id']}"
    if wait:
        await api.app[INGEST].drain()
    got = await api.get(f"/v1/batches/{payload['id']}", headers=bearer(secret))
    assert got.status == 200, await got.text()
    return status, await got.json()


async def rejections(api: Api, secret: str, batch_id: int) -> list[dict[str, Any]]:
    r = await api.get(f"/v1/batches/{batch_id}/rejections", headers=bearer(secret))
    assert r.status == 200, await r.text()
    assert r.headers["Content-Type"].startswith("application/x-ndjson")
    return [orjson.loads(line) for line in (await r.read()).splitlines()]


async def status_of(api: Api, secret: str, id_number: str) -> dict[str, Any]:
    r = await api.post("/v1/status", json={"id_type": "resident", "id_number": id_number}, headers=bearer(secret))
    assert r.status == 200, await r.text()
    result: dict[str, Any] = await r.json()
    return result
