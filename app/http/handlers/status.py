"""POST /v1/status: a citizen's current status and a signed, short-lived QR token (the hot path)."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from app.federation.service import consult
from app.http.appkeys import CLIENTS, FEDERATION, HANDLES, PG, PUBLISHER, REDIS, SETTINGS, SIGNER, STATUS_CACHE
from app.http.client_limits import admit, charge, rate_limited
from app.http.handlers.common import identity_from_body, json_response, read_json_object
from app.http.handlers.status_view import last_test, negative_test_at, vaccination
from app.http.problems import InvalidField, InvalidIdentityProblem, SubjectNotFound
from app.identity import pseudonym
from app.limits import STATUS
from cache.entry import StatusEntry
from cache.rate_limit import Refused
from signing.colours import COLOUR_LETTER
from signing.jws import TokenSigner

routes = web.RouteTableDef()


@routes.post("/v1/status")
async def status(request: web.Request) -> web.Response:
    app = request.app
    settings = app[SETTINGS]
    client = app[CLIENTS].authenticate(request.headers.get("Authorization"), kind="citizen-backend")
    body = await read_json_object(request)
    if "on_behalf_of" in body:  # a relative's status, through a registered relation (off the hot path)
        # Imported here: the relations module answers with signed_status, defined below.
        from app.http.handlers.relations import status_on_behalf

        return await status_on_behalf(request, client, body)
    try:
        identity = identity_from_body(body)
    except InvalidIdentityProblem:
        await admit(request, client, STATUS)  # a malformed guess counts against the limit too
        raise
    requested = _include_peer_vaccinations(body)
    signer = app[SIGNER].status_signer()  # before any look-up: without a key there is nothing to answer
    subject = pseudonym(identity, settings.pepper)
    try:
        # The limit's token is taken in the same Redis round trip as the read.
        entry = await app[STATUS_CACHE].get(subject, admission=charge(request, client, STATUS))
    except Refused as refused:
        raise rate_limited(client, refused) from None
    if entry is None:
        raise SubjectNotFound("no status is held for this document; the person may not be registered yet")
    consulted = await consult(
        app[FEDERATION],
        identity=identity,
        subject=subject,
        entry=entry,
        requested=requested,
        redis=app[REDIS],
        pool=app[PG],
        publisher=app[PUBLISHER],
    )
    answer = signed_status(app, signer, subject, consulted.entry, int(time.time()))
    if consulted.report is not None:
        answer["peer_vaccinations"] = consulted.report
    return json_response(answer)


def _include_peer_vaccinations(body: dict[str, Any]) -> bool:
    value = body.get("include_peer_vaccinations", False)
    if type(value) is not bool:
        raise InvalidField("include_peer_vaccinations", "wrong_type", "include_peer_vaccinations must be true or false")
    return value


def signed_status(
    app: web.Application, signer: TokenSigner, subject: bytes, entry: StatusEntry, now: int
) -> dict[str, Any]:
    """The status answer with a new token (also the answer of a declaration)."""
    token = signer.sign_status(
        app[HANDLES].seal(subject, now),  # a new handle per token: two tokens of one person do not link
        COLOUR_LETTER[entry.colour],
        int(entry.popup),
        int(entry.vaccine_complete),
        now,
        ver=entry.version,
        negative_test_at=negative_test_at(entry),
    )
    return status_payload(entry, token, now, now + app[SETTINGS].token_ttl_seconds)


def status_payload(entry: StatusEntry, token: str, now: int, token_expires_at: int) -> dict[str, Any]:
    """The answer; the pseudonym is not in it (the token's `sub` is a handle only this service opens)."""
    return {
        "id_type": entry.id_type,
        "name": entry.masked_name,
        "id_number": entry.masked_number,
        "colour": entry.colour,
        "reasons": entry.reasons,
        "popup": entry.popup,
        "vaccination": vaccination(entry),
        "last_test": last_test(entry, now),
        "ruleset": entry.ruleset,
        "version": entry.version,
        "computed_at": entry.computed_at,
        "valid_until": entry.valid_until,
        "token": token,
        "token_expires_at": token_expires_at,
    }
