"""POST /v1/verify: a checkpoint scanner checks a token online and the scan is recorded."""

from __future__ import annotations

import time

from aiohttp import web

from app.http.appkeys import CLIENTS, SCANS, SIGNER, STATUS_CACHE
from app.http.handlers.common import json_response, read_json_object, required_string
from app.scans import ScanEvent
from signing.colours import COLOUR_LETTER
from signing.encoding import b64url_decode
from signing.errors import BadToken
from signing.jws import MAX_TOKEN_LENGTH

routes = web.RouteTableDef()

_LETTER_COLOUR = {letter: colour for colour, letter in COLOUR_LETTER.items()}


@routes.post("/v1/verify")
async def verify(request: web.Request) -> web.Response:
    app = request.app
    client = app[CLIENTS].authenticate(request.headers.get("Authorization"), kind="scanner")
    body = await read_json_object(request)
    token = required_string(body, "token", max_length=MAX_TOKEN_LENGTH)
    checkpoint = required_string(body, "checkpoint", max_length=64)
    now = int(time.time())
    verifier = app[SIGNER].verifier
    assert verifier is not None

    subject: bytes | None = None
    token_colour = current_colour = name = number = None
    token_version: int | None = None
    current_version: int | None = None
    try:
        claims = verifier.verify(token, now)
    except BadToken as exc:
        valid, reason = False, exc.reason
    else:
        valid, reason = True, "ok"
        token_colour = _LETTER_COLOUR.get(str(claims["st"]))
        token_version = int(str(claims.get("ver", 0)))
        subject = b64url_decode(str(claims["sub"]))
        entry = await app[STATUS_CACHE].get(subject)
        if entry is not None:
            current_colour, name, number = entry.colour, entry.masked_name, entry.masked_number
            current_version = entry.version

    await app[SCANS].record(ScanEvent(now, checkpoint, client.id, subject, valid, reason, token_colour, current_colour))
    return json_response(
        {
            "valid": valid,
            "reason": reason,
            "checkpoint": checkpoint,
            "token_colour": token_colour,
            "current_colour": current_colour,
            "token_version": token_version,
            "current_version": current_version,
            "name": name,
            "id_number": number,
            "scanned_at": now,
        }
    )
