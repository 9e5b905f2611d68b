"""Family members (代查 / 亲友码): relations between two people, and the look-ups made through them.

POST /v1/relations registers one (the backend's user holds it: `guardian` of a minor, `carer` of an
adult); POST /v1/relations/query lists a person's own relations; POST /v1/relations/{id}/end ends one
(either party may); POST /v1/status with `on_behalf_of` answers a relative's status through a live
relation and records the look-up; POST /v1/lookups/query shows a person who looked them up.

Every identity number travels in a JSON body, never in a URL: URLs are written to access logs, proxy
and load-balancer logs and Referer headers, where a number would outlive the request. A header would
keep it out of the URL too, but proxies log headers as readily, and a body is what the service already
validates and bounds (size, NUL, a problem naming the field) for every route. So the listings are POST
`.../query` rather than GET.
"""

from __future__ import annotations

import time
from typing import Any, Final

from aiohttp import web

from app.clients import Client
from app.http.appkeys import CLIENTS, PG, POSTGRES_STATE, SETTINGS, SIGNER, STATUS_CACHE
from app.http.client_limits import admit
from app.http.handlers.common import identity_from_body, json_response, postgres_answers, read_json_object
from app.http.handlers.status import signed_status
from app.http.problems import InvalidField, InvalidIdentityProblem, NotFound, SubjectNotFound, relation_problem
from app.identity import Identity, InvalidIdentity, parse_identity, pseudonym
from app.limits import RELATIONS, STATUS
from app.relations import store
from app.relations.errors import NoRelation, RelationError
from app.relations.model import registration

routes = web.RouteTableDef()

CITIZEN: Final = "citizen-backend"
ON_BEHALF_OF: Final = "on_behalf_of"
DEFAULT_PAGE: Final = 50
MAX_PAGE: Final = 200
MAX_ID: Final = 2**63 - 1  # a bigint: anything larger names no row, and Postgres would refuse it


def identity_at(body: dict[str, Any], member: str) -> Identity:
    """The identity document in the object `member` of the body (`id_type`, default resident, `id_number`)."""
    value = body.get(member)
    if value is None:
        raise InvalidField(member, "missing", f"{member} is required: an object with id_type and id_number")
    if not isinstance(value, dict):
        raise InvalidField(member, "wrong_type", f"{member} must be an object with id_type and id_number")
    try:
        return parse_identity(value.get("id_type", "resident"), value.get("id_number"))
    except InvalidIdentity as exc:
        raise InvalidIdentityProblem(f"{member}.{exc.field}", exc.code, exc.message) from None


def _page(body: dict[str, Any]) -> tuple[int, int | None]:
    limit, before = body.get("limit", DEFAULT_PAGE), body.get("before")
    if type(limit) is not int or not 1 <= limit <= MAX_PAGE:
        raise InvalidField("limit", "out_of_range", f"limit must be an integer from 1 to {MAX_PAGE}")
    if before is not None and (type(before) is not int or not 1 <= before <= MAX_ID):
        raise InvalidField("before", "wrong_type", "before must be a positive integer: a page's next_before")
    return limit, before


def _relation_id(request: web.Request) -> int:
    text = request.match_info["relation_id"]
    if not text.isascii() or not text.isdigit() or int(text) > MAX_ID:
        raise NotFound(f"no relation {text}")
    return int(text)


@routes.post("/v1/relations")
async def register(request: web.Request) -> web.Response:
    app = request.app
    client = app[CLIENTS].authenticate(request.headers.get("Authorization"), kind=CITIZEN)
    await admit(request, client, RELATIONS)
    body = await read_json_object(request)
    holder, relative = identity_from_body(body), identity_at(body, "relative")
    now = int(time.time())
    pepper = app[SETTINGS].pepper
    try:
        reg = registration(body, holder, relative, now)
        with postgres_answers(app[POSTGRES_STATE]):
            async with app[PG].acquire() as conn:
                done = await store.register(
                    conn,
                    store.Party.of(holder, pseudonym(holder, pepper)),
                    store.Party.of(relative, pseudonym(relative, pepper)),
                    reg,
                    client_id=client.id,
                    client_name=client.name,
                    now=now,
                )
    except RelationError as exc:
        raise relation_problem(exc) from None
    relation_id = done.relation["id"]
    return json_response(
        done.relation, status=201 if done.created else 200, headers={"Location": f"/v1/relations/{relation_id}"}
    )


@routes.post("/v1/relations/query")
async def query_relations(request: web.Request) -> web.Response:
    app = request.app
    client = app[CLIENTS].authenticate(request.headers.get("Authorization"), kind=CITIZEN)
    await admit(request, client, RELATIONS)
    body = await read_json_object(request)
    person = pseudonym(identity_from_body(body), app[SETTINGS].pepper)
    limit, _ = _page(body)
    with postgres_answers(app[POSTGRES_STATE]):
        async with app[PG].acquire() as conn:
            relations = await store.relations_of(conn, person, int(time.time()), limit)
    return json_response({"relations": relations})


@routes.post("/v1/relations/{relation_id}/end")
async def end(request: web.Request) -> web.Response:
    app = request.app
    client = app[CLIENTS].authenticate(request.headers.get("Authorization"), kind=CITIZEN)
    await admit(request, client, RELATIONS)
    relation_id = _relation_id(request)
    body = await read_json_object(request)
    asker = pseudonym(identity_from_body(body), app[SETTINGS].pepper)
    try:
        with postgres_answers(app[POSTGRES_STATE]):
            async with app[PG].acquire() as conn:
                relation = await store.end(
                    conn, relation_id, asker, client_id=client.id, client_name=client.name, now=int(time.time())
                )
    except RelationError as exc:
        raise relation_problem(exc) from None
    return json_response(relation)


@routes.post("/v1/lookups/query")
async def query_lookups(request: web.Request) -> web.Response:
    app = request.app
    client = app[CLIENTS].authenticate(request.headers.get("Authorization"), kind=CITIZEN)
    await admit(request, client, RELATIONS)
    body = await read_json_object(request)
    person = pseudonym(identity_from_body(body), app[SETTINGS].pepper)
    limit, before = _page(body)
    with postgres_answers(app[POSTGRES_STATE]):
        async with app[PG].acquire() as conn:
            lookups, next_before = await store.lookups_of(conn, person, before=before, limit=limit)
    return json_response({"lookups": lookups, "next_before": next_before})


async def status_on_behalf(request: web.Request, client: Client, body: dict[str, Any]) -> web.Response:
    """POST /v1/status with `on_behalf_of`: the relative's status, through a live relation, recorded.

    Off the hot path by design: finding the relation and recording the look-up take one Postgres
    statement, and without Postgres there is no answer (503), since no look-up may go unrecorded."""
    app = request.app
    await admit(request, client, STATUS)  # refused guesses count against the status limit too
    holder, relative = identity_from_body(body), identity_at(body, ON_BEHALF_OF)
    signer = app[SIGNER].status_signer()
    pepper = app[SETTINGS].pepper
    relative_subject = pseudonym(relative, pepper)
    now = int(time.time())
    with postgres_answers(app[POSTGRES_STATE]):
        async with app[PG].acquire() as conn:
            found = await store.look_up(conn, pseudonym(holder, pepper), relative_subject, client_id=client.id, now=now)
    if found is None:
        # The same answer whether or not the relative is known: a stranger learns nothing.
        raise relation_problem(
            NoRelation(
                "no live relation lets this person look up the other: register a guardian or carer relation "
                "(POST /v1/relations) first; a guardian relation ends when the minor turns 18"
            )
        )
    entry = await app[STATUS_CACHE].get(relative_subject)
    if entry is None:
        raise SubjectNotFound("no status is held for the relative; they may not be registered yet")
    answer = signed_status(app, signer, relative_subject, entry, now)
    answer["relation"] = {"id": found.relation_id, "kind": found.kind}
    return json_response(answer)
