"""Appeals: filed by a citizen backend (POST /v1/appeals, GET /v1/appeals/{id} for its own), reviewed by
operators (GET /v1/appeals, GET /v1/appeals/{id}, POST /v1/appeals/{id}/decisions)."""

from __future__ import annotations

import time
from typing import Final

from aiohttp import web

from app.appeals import model
from app.appeals.decisions import decide
from app.appeals.store import citizen_view, file_appeal, list_appeals, operator_view
from app.http.appkeys import CLIENTS, PG, PUBLISHER, SETTINGS
from app.http.client_limits import admit
from app.http.handlers.common import identity_from_body, json_response, read_json_object
from app.http.problems import InvalidField, NotFound
from app.identity import pseudonym
from app.limits import APPEALS

routes = web.RouteTableDef()

CITIZEN: Final = "citizen-backend"
OPERATOR: Final = "operator"
DEFAULT_PAGE: Final = 50
MAX_PAGE: Final = 200


def _appeal_id(request: web.Request) -> int:
    try:
        return int(request.match_info["appeal_id"])
    except ValueError:
        raise NotFound(f"no appeal {request.match_info['appeal_id']}") from None


@routes.post("/v1/appeals")
async def file(request: web.Request) -> web.Response:
    app = request.app
    client = app[CLIENTS].authenticate(request.headers.get("Authorization"), kind=CITIZEN)
    await admit(request, client, APPEALS)
    body = await read_json_object(request)
    identity = identity_from_body(body)
    filing = model.filing(body.get("category"), body.get("text"), body.get("contact_ref"))
    async with app[PG].acquire() as conn:
        appeal_id = await file_appeal(
            conn,
            client_id=client.id,
            client_name=client.name,
            subject=pseudonym(identity, app[SETTINGS].pepper),
            filing=filing,
        )
        view = await citizen_view(conn, appeal_id, client.id)
    return json_response(view, status=201, headers={"Location": f"/v1/appeals/{appeal_id}"})


@routes.get("/v1/appeals/{appeal_id}")
async def show(request: web.Request) -> web.Response:
    app = request.app
    client = app[CLIENTS].authenticate(request.headers.get("Authorization"), kind=(CITIZEN, OPERATOR))
    await admit(request, client, APPEALS)
    appeal_id = _appeal_id(request)
    async with app[PG].acquire() as conn:
        if client.kind == OPERATOR:
            return json_response(await operator_view(conn, appeal_id))
        return json_response(await citizen_view(conn, appeal_id, client.id))


@routes.get("/v1/appeals")
async def index(request: web.Request) -> web.Response:
    app = request.app
    client = app[CLIENTS].authenticate(request.headers.get("Authorization"), kind=OPERATOR)
    await admit(request, client, APPEALS)
    query = request.query
    # A misspelt filter must not quietly widen the list an operator reads.
    for name in query.keys() - _LIST_PARAMETERS:
        raise InvalidField(name or "(empty)", "unknown_parameter", f"unknown query parameter {name!r}")
    state = _choice(query.get("state"), "state", model.STATES)
    category = _choice(query.get("category"), "category", model.CATEGORIES)
    limit = _bounded_int(query.get("limit"), "limit", 1, MAX_PAGE) or DEFAULT_PAGE
    before = _bounded_int(query.get("before"), "before", 1, 2**63 - 1)
    async with app[PG].acquire() as conn:
        appeals = await list_appeals(conn, state=state, category=category, before=before, limit=limit)
    # A full page may have older appeals behind it: the next page starts before its last one.
    next_before = appeals[-1]["id"] if len(appeals) == limit else None
    return json_response({"appeals": appeals, "next_before": next_before})


@routes.post("/v1/appeals/{appeal_id}/decisions")
async def decisions(request: web.Request) -> web.Response:
    app = request.app
    client = app[CLIENTS].authenticate(request.headers.get("Authorization"), kind=OPERATOR)
    await admit(request, client, APPEALS)
    body = await read_json_object(request)  # the body first: a bad one is 422 whichever appeal it names
    decision = model.decision(
        body.get("action"),
        body.get("reason"),
        colour=body.get("colour"),
        expires_at=body.get("expires_at"),
        proposal_id=body.get("proposal_id"),
    )
    appeal_id = _appeal_id(request)
    async with app[PG].acquire() as conn:
        decision_id = await decide(
            conn,
            appeal_id,
            model.Operator(client.id, client.name),
            decision,
            publisher=app[PUBLISHER],
            now=int(time.time()),
        )
        view = await operator_view(conn, appeal_id)
    return json_response({"decision_id": decision_id, "appeal": view}, status=201)


_LIST_PARAMETERS = frozenset({"state", "category", "limit", "before"})


def _choice(value: str | None, field: str, allowed: tuple[str, ...]) -> str | None:
    if value is None or value in allowed:
        return value
    raise InvalidField(field, "unknown_value", f"{field} must be one of {', '.join(allowed)}")


def _bounded_int(value: str | None, field: str, low: int, high: int) -> int | None:
    if value is None:
        return None
    # Length first: int() of thousands of digits raises, and no bound here has more than 19.
    if not (len(value) <= 19 and value.isascii() and value.isdigit() and low <= int(value) <= high):
        raise InvalidField(field, "out_of_range", f"{field} must be a whole number from {low} to {high}")
    return int(value)
