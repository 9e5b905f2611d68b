"""POST /v1/declarations: a person with no records (or too few) declares their recent travel (申领)."""

from __future__ import annotations

import time

from aiohttp import web

from app.declarations.model import DeclarationInvalid, parse_declaration, today_in_china
from app.declarations.store import store_declaration
from app.http.appkeys import CLIENTS, PG, POSTGRES_STATE, PUBLISHER, SETTINGS, SIGNER
from app.http.client_limits import admit
from app.http.handlers.common import identity_from_body, json_response, postgres_answers, read_json_object
from app.http.handlers.status import signed_status
from app.http.problems import InvalidField
from app.identity import pseudonym
from app.limits import DECLARATIONS

routes = web.RouteTableDef()


@routes.post("/v1/declarations")
async def declare(request: web.Request) -> web.Response:
    app = request.app
    settings = app[SETTINGS]
    client = app[CLIENTS].authenticate(request.headers.get("Authorization"), kind="citizen-backend")
    await admit(request, client, DECLARATIONS)  # before parsing: refused guesses count too
    body = await read_json_object(request)
    identity = identity_from_body(body)
    now = int(time.time())
    try:
        declaration = parse_declaration(body, settings.pepper, today_in_china(now))
    except DeclarationInvalid as exc:
        raise InvalidField(exc.field, exc.code, exc.message) from None
    signer = app[SIGNER].status_signer()  # before storing: without a key there is nothing to answer
    subject = pseudonym(identity, settings.pepper)
    with postgres_answers(app[POSTGRES_STATE]):
        async with app[PG].acquire() as conn:
            await store_declaration(conn, subject, identity, declaration, client_id=client.id, now=now)
            entries = await app[PUBLISHER].recompute(conn, [subject], now)
    return json_response(signed_status(app, signer, subject, entries[subject], now))
