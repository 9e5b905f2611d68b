"""Place codes (场所码): venues and their posters, check-ins, and exposure queries.

POST /v1/venues, GET /v1/venues/{id}, POST /v1/venues/{id}/reissue, GET /v1/venues/{id}/poster.svg:
an operator, or an agency with the `venue` scope (an agency sees only the venues it registered).
POST /v1/checkins: a citizen backend, for a person who scanned a venue's code; the answer is the
person's status, for the venue's staff. POST /v1/exposures: an agency with the `cdc` scope; a count,
and on request the visitors as a designation batch through the ingestion path. No identity number is
stored or answered: visits hold the pseudonym and the masked number only.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Final

from aiohttp import web

from app.clients import Client
from app.http.appkeys import CLIENTS, INGEST, PG, POSTGRES_STATE, SETTINGS, SIGNER, STATUS_CACHE
from app.http.client_limits import admit
from app.http.handlers.common import identity_from_body, json_response, postgres_answers, read_json_object
from app.http.handlers.status import signed_status
from app.http.problems import Forbidden, InvalidField, SubjectNotFound, VenueNotFound
from app.identity import mask_number, pseudonym
from app.limits import CHECKINS, EXPOSURES, VENUES
from app.scopes import CDC_SCOPE, VENUE_SCOPE
from app.venues.model import VENUE_ID, VenueFieldError, exposure_query, venue_request
from app.venues.poster import render_poster
from app.venues.store import (
    Venue,
    exposure,
    record_visit,
    register_venue,
    reissue_venue,
    stage_designation,
    venue_by_id,
)
from signing.errors import BadToken
from signing.venues import VENUE_TYP, sign_venue, verify_venue

log = logging.getLogger(__name__)
routes = web.RouteTableDef()

SVG_TYPE: Final = "image/svg+xml"


def _field_error(exc: VenueFieldError) -> InvalidField:
    return InvalidField(exc.field, exc.code, exc.message)


def _registrar(request: web.Request) -> Client:
    client = request.app[CLIENTS].authenticate(request.headers.get("Authorization"), kind=("operator", "agency"))
    if client.kind == "agency" and VENUE_SCOPE not in client.scopes:
        raise Forbidden(f"agency {client.name} may not register venues; it needs the {VENUE_SCOPE} scope")
    return client


async def _own_venue(request: web.Request, client: Client) -> Venue:
    venue_id = request.match_info["venue_id"]
    venue = None
    if VENUE_ID.fullmatch(venue_id):
        with postgres_answers(request.app[POSTGRES_STATE]):
            venue = await venue_by_id(request.app[PG], venue_id)
    # Another agency's venue is as unknown as a missing one; operators see every venue.
    if venue is None or (client.kind == "agency" and venue.client_id != client.id):
        raise VenueNotFound(f"no venue {venue_id} is registered for this client")
    return venue


def _token(request: web.Request, venue: Venue, now: int) -> str:
    state = request.app[SIGNER]
    state.status_signer()  # a 503 naming why, when this process cannot sign
    assert state.keyring is not None
    return sign_venue(state.keyring.active, request.app[SETTINGS].issuer, venue.id, venue.serial, now)


def _venue_answer(request: web.Request, venue: Venue) -> dict[str, Any]:
    now = int(time.time())
    return {
        **venue.public(),
        "serial": venue.serial,
        "created_at": int(venue.created_at.timestamp()),
        "token": _token(request, venue, now),
        "typ": VENUE_TYP,
        "poster": f"/v1/venues/{venue.id}/poster.svg",
    }


@routes.post("/v1/venues")
async def register(request: web.Request) -> web.Response:
    client = _registrar(request)
    await admit(request, client, VENUES)
    try:
        wanted = venue_request(await read_json_object(request))
    except VenueFieldError as exc:
        raise _field_error(exc) from None
    request.app[SIGNER].status_signer()  # refuse before storing a venue whose code cannot be signed
    with postgres_answers(request.app[POSTGRES_STATE]):
        async with request.app[PG].acquire() as conn:
            venue = await register_venue(conn, wanted, client.id, actor=f"{client.kind}:{client.name}")
    log.info("venue registered", extra={"event": "venue.register", "venue_id": venue.id, "client": client.name})
    location = f"/v1/venues/{venue.id}"
    return json_response(_venue_answer(request, venue), status=201, headers={"Location": location})


@routes.get("/v1/venues/{venue_id}")
async def show(request: web.Request) -> web.Response:
    client = _registrar(request)
    await admit(request, client, VENUES)
    return json_response(_venue_answer(request, await _own_venue(request, client)))


@routes.post("/v1/venues/{venue_id}/reissue")
async def reissue(request: web.Request) -> web.Response:
    client = _registrar(request)
    await admit(request, client, VENUES)
    venue = await _own_venue(request, client)
    with postgres_answers(request.app[POSTGRES_STATE]):
        async with request.app[PG].acquire() as conn:
            reissued = await reissue_venue(conn, venue.id, actor=f"{client.kind}:{client.name}")
    assert reissued is not None  # venues are never deleted
    log.info(
        "venue code reissued",
        extra={"event": "venue.reissue", "venue_id": venue.id, "serial": reissued.serial, "client": client.name},
    )
    return json_response(_venue_answer(request, reissued))


@routes.get("/v1/venues/{venue_id}/poster.svg")
async def poster(request: web.Request) -> web.Response:
    client = _registrar(request)
    await admit(request, client, VENUES)
    venue = await _own_venue(request, client)
    body = render_poster(venue, _token(request, venue, int(time.time())))
    return web.Response(
        body=body,
        headers={
            "Content-Type": SVG_TYPE,
            "Content-Disposition": f'inline; filename="venue-{venue.id}.svg"',
            "Cache-Control": "private, no-store",
        },
    )


@routes.post("/v1/checkins")
async def checkin(request: web.Request) -> web.Response:
    app = request.app
    client = app[CLIENTS].authenticate(request.headers.get("Authorization"), kind="citizen-backend")
    await admit(request, client, CHECKINS)  # before anything else: a malformed guess counts too
    body = await read_json_object(request)
    token = body.get("venue_token")
    if token is None:
        raise InvalidField("venue_token", "missing", "venue_token is required (the text of the venue's code)")
    if not isinstance(token, str):
        raise InvalidField("venue_token", "wrong_type", "venue_token must be the text of the venue's code")
    identity = identity_from_body(body)
    now = int(time.time())
    state = app[SIGNER]
    signer = state.status_signer()
    assert state.keyring is not None
    try:
        claims = verify_venue(state.keyring.records, app[SETTINGS].issuer, token, now)
    except BadToken as exc:
        raise InvalidField("venue_token", exc.reason, f"the venue's code is not valid: {exc}") from None
    with postgres_answers(app[POSTGRES_STATE]):
        venue = await venue_by_id(app[PG], claims.venue_id)
    if venue is None:
        raise VenueNotFound(f"the code names venue {claims.venue_id}, which is not registered")
    if venue.serial != claims.serial:
        raise InvalidField("venue_token", "superseded", "this venue's code was reissued; scan the current poster")
    subject = pseudonym(identity, app[SETTINGS].pepper)
    entry = await app[STATUS_CACHE].get(subject)
    # The visit is kept whether or not a status is held: the CDC may need to reach an unregistered visitor.
    with postgres_answers(app[POSTGRES_STATE]):
        await record_visit(app[PG], venue.id, subject, identity.id_type, mask_number(identity.number), client.id, now)
    if entry is None:
        raise SubjectNotFound("the visit is recorded, but no status is held for this document")
    answer = signed_status(app, signer, subject, entry, now)
    answer["venue"] = {"id": venue.id, "name": venue.name, "area_code": venue.area_code}
    answer["checked_in_at"] = now
    return json_response(answer)


@routes.post("/v1/exposures")
async def exposures(request: web.Request) -> web.Response:
    app = request.app
    client = app[CLIENTS].authenticate(request.headers.get("Authorization"), kind="agency")
    if CDC_SCOPE not in client.scopes:
        raise Forbidden(f"agency {client.name} may not ask for exposures; it needs the {CDC_SCOPE} scope")
    await admit(request, client, EXPOSURES)
    now = int(time.time())
    try:
        query = exposure_query(await read_json_object(request), now, app[SETTINGS].retention_days * 86400)
    except VenueFieldError as exc:
        raise _field_error(exc) from None
    answer: dict[str, Any] = {"venue_id": query.venue_id, "from": query.start, "to": query.end}
    with postgres_answers(app[POSTGRES_STATE]):
        venue = await venue_by_id(app[PG], query.venue_id) if VENUE_ID.fullmatch(query.venue_id) else None
        if venue is None:
            raise VenueNotFound(f"no venue {query.venue_id} is registered")
        found = await exposure(app[PG], query)
        answer |= {"visits": found.visits, "people": found.people}
        if query.designate is None:
            return json_response(answer)
        async with app[PG].acquire() as conn:
            designation = await stage_designation(conn, query, query.designate, client.id, authority=client.name)
    if designation.created:
        app[INGEST].submit(designation.batch_id)  # merged, recomputed and audited like any upload
        log.info(
            "exposure designated",
            extra={
                "event": "exposure.designate",
                "venue_id": query.venue_id,
                "batch_id": designation.batch_id,
                "people": designation.rows,
                "client": client.name,
            },
        )
    location = f"/v1/batches/{designation.batch_id}"
    answer["batch"] = {"id": designation.batch_id, "created": designation.created, "rows": designation.rows}
    return json_response(answer, status=202 if designation.created else 200, headers={"Location": location})
