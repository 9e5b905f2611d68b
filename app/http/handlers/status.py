"""POST /v1/status: a citizen's current status and a signed, short-lived QR token (the hot path)."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from app.http.appkeys import CLIENTS, SETTINGS, SIGNER, STATUS_CACHE
from app.http.handlers.common import identity_from_body, json_response, read_json_object
from app.http.problems import SubjectNotFound
from app.identity import pseudonym
from cache.entry import StatusEntry
from signing.colours import COLOUR_LETTER
from signing.encoding import b64url_encode

routes = web.RouteTableDef()


@routes.post("/v1/status")
async def status(request: web.Request) -> web.Response:
    app = request.app
    settings = app[SETTINGS]
    app[CLIENTS].authenticate(request.headers.get("Authorization"), kind="citizen-backend")
    body = await read_json_object(request)
    identity = identity_from_body(body)
    signer = app[SIGNER].status_signer()  # before any look-up: without a key there is nothing to answer
    subject = pseudonym(identity, settings.pepper)
    entry = await app[STATUS_CACHE].get(subject)
    if entry is None:
        raise SubjectNotFound("no status is held for this document; the person may not be registered yet")
    now = int(time.time())
    sub = b64url_encode(subject)
    token = signer.sign_status(
        sub, COLOUR_LETTER[entry.colour], int(entry.popup), int(entry.vaccine_complete), now, ver=entry.version
    )
    return json_response(status_payload(sub, entry, token, now, now + settings.token_ttl_seconds))


def status_payload(sub: str, entry: StatusEntry, token: str, now: int, token_expires_at: int) -> dict[str, Any]:
    return {
        "subject": sub,
        "id_type": entry.id_type,
        "name": entry.masked_name,
        "id_number": entry.masked_number,
        "colour": entry.colour,
        "reasons": entry.reasons,
        "popup": entry.popup,
        "vaccination": {"doses": entry.vaccine_doses, "complete": entry.vaccine_complete},
        "last_test": None
        if entry.last_test_at is None
        else {
            "sampled_at": entry.last_test_at,
            "result": entry.last_test_result,
            "hours_ago": (now - entry.last_test_at) // 3600,
        },
        "ruleset": entry.ruleset,
        "version": entry.version,
        "computed_at": entry.computed_at,
        "valid_until": entry.valid_until,
        "token": token,
        "token_expires_at": token_expires_at,
    }
