"""The operator console's read routes: GET /v1/operator/batches and GET /v1/operator/keys.

The agency routes show an agency its own batches only; an operator sees every agency's, newest first,
and the signing keys with their schedule. Read-only: key changes stay with `healthcode keys`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

from aiohttp import web

from app.http.appkeys import CLIENTS, PG, POSTGRES_STATE
from app.http.client_limits import admit
from app.http.handlers.common import json_response, postgres_answers
from app.http.problems import InvalidField
from app.ingest.store import batch_view
from app.limits import APPEALS

routes = web.RouteTableDef()

OPERATOR: Final = "operator"
DEFAULT_PAGE: Final = 50
MAX_PAGE: Final = 200

_BATCHES: Final = """SELECT b.id, b.client_id, c.name AS agency, b.kind, b.format, b.state, b.rows_read, b.accepted,
        b.rejected, b.duplicates, b.corrected, b.retracted, b.subjects, b.error, b.received_at, b.started_at,
        b.merged_at, b.finished_at
    FROM batches b LEFT JOIN api_clients c ON c.id = b.client_id
    ORDER BY b.id DESC LIMIT $1"""
_KEYS: Final = """SELECT kid, alg, state, created_at, activate_at, activated_at, retired_at, revoked_at
    FROM signing_keys ORDER BY created_at DESC"""


def _known_parameters(request: web.Request, known: frozenset[str]) -> None:
    """A misspelt parameter is refused, not ignored (as /v1/appeals does)."""
    for name in request.query.keys() - known:
        raise InvalidField(name or "(empty)", "unknown_parameter", f"unknown query parameter {name!r}")


def _limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_PAGE
    if not (len(raw) <= 4 and raw.isascii() and raw.isdigit() and 1 <= int(raw) <= MAX_PAGE):
        raise InvalidField("limit", "out_of_range", f"limit must be a whole number from 1 to {MAX_PAGE}")
    return int(raw)


def _at(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


@routes.get("/v1/operator/batches")
async def batches(request: web.Request) -> web.Response:
    app = request.app
    client = app[CLIENTS].authenticate(request.headers.get("Authorization"), kind=OPERATOR)
    await admit(request, client, APPEALS)  # the operator's one bucket: console reads share it
    _known_parameters(request, frozenset({"limit"}))
    limit = _limit(request.query.get("limit"))
    with postgres_answers(app[POSTGRES_STATE]):
        rows = await app[PG].fetch(_BATCHES, limit)
    views: list[dict[str, Any]] = [{**batch_view(row), "agency": row["agency"]} for row in rows]
    return json_response({"batches": views}, headers={"Cache-Control": "no-store"})


@routes.get("/v1/operator/keys")
async def keys(request: web.Request) -> web.Response:
    app = request.app
    client = app[CLIENTS].authenticate(request.headers.get("Authorization"), kind=OPERATOR)
    await admit(request, client, APPEALS)  # the operator's one bucket: console reads share it
    _known_parameters(request, frozenset())
    with postgres_answers(app[POSTGRES_STATE]):
        rows = await app[PG].fetch(_KEYS)
    views = [
        {
            "kid": row["kid"],
            "alg": row["alg"],
            "state": row["state"],
            **{
                name: _at(row[name])
                for name in ("created_at", "activate_at", "activated_at", "retired_at", "revoked_at")
            },
        }
        for row in rows
    ]
    return json_response({"keys": views}, headers={"Cache-Control": "no-store"})
