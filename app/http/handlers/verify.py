"""POST /v1/verify: a checkpoint scanner checks a token online, optionally against its policy; the scan is
recorded."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from app.http.appkeys import CLIENTS, FEDERATION, HANDLES, SCANS, SIGNER, STATUS_CACHE
from app.http.client_limits import admit, charge, rate_limited
from app.http.handlers.checkpoint_policy import policy_from_body
from app.http.handlers.common import json_response, read_json_object, required_string
from app.http.handlers.status_view import last_test, negative_test_at, vaccination
from app.limits import VERIFY
from app.scans import ScanEvent
from cache.entry import StatusEntry
from cache.rate_limit import Refused
from signing.colours import COLOUR_LETTER
from signing.errors import BadToken
from signing.jws import MAX_TOKEN_LENGTH, STATUS_TYP
from signing.policy import Policy, failed_rules, token_failed_rules

routes = web.RouteTableDef()

_LETTER_COLOUR = {letter: colour for colour, letter in COLOUR_LETTER.items()}
# The rule an invalid token fails: nothing it claims can be believed.
VALID_TOKEN_RULE = "valid_token"


@routes.post("/v1/verify")
async def verify(request: web.Request) -> web.Response:
    app = request.app
    client = app[CLIENTS].authenticate(request.headers.get("Authorization"), kind="scanner")
    body = await read_json_object(request)
    token = required_string(body, "token", max_length=MAX_TOKEN_LENGTH)
    checkpoint = required_string(body, "checkpoint", max_length=64)
    policy = policy_from_body(body)
    now = int(time.time())
    verifier = app[SIGNER].verifier
    assert verifier is not None

    subject: bytes | None = None
    claims: dict[str, object] = {}
    entry: StatusEntry | None = None
    token_colour: str | None = None
    token_version: int | None = None
    issuer: str | None = None
    peer = False
    try:
        # Our own tokens and those of every peer on the trust list, each by its `iss` and `kid`.
        verified = await app[FEDERATION].trust.verify(token, STATUS_TYP, verifier, now)
        claims = verified.claims
        if verified.local:
            # Only this service opens the handle: offline scanners never learn who the token is for.
            subject = app[HANDLES].open(str(claims["sub"]), int(str(claims["iat"])))
    except BadToken as exc:
        valid, reason = False, exc.reason
        await admit(request, client, VERIFY)
    else:
        valid, reason, issuer, peer = True, "ok", verified.issuer, not verified.local
        token_colour = _LETTER_COLOUR.get(str(claims["st"]))
        token_version = int(str(claims.get("ver", 0)))
        if subject is None:  # a peer's person: only the token speaks for them here
            await admit(request, client, VERIFY)
        else:
            try:
                # The limit's token is taken in the same Redis round trip as the read.
                entry = await app[STATUS_CACHE].get(subject, admission=charge(request, client, VERIFY))
            except Refused as refused:
                raise rate_limited(client, refused) from None

    current_colour = entry.colour if entry else None
    await app[SCANS].record(ScanEvent(now, checkpoint, client.id, subject, valid, reason, token_colour, current_colour))
    failed = None if policy is None else _failed(policy, valid, claims, entry, now, peer)
    return json_response(
        {
            "valid": valid,
            "reason": reason,
            "issuer": issuer,
            "issuer_name": _peer_name(app, issuer) if peer and issuer else None,
            "checkpoint": checkpoint,
            "token_colour": token_colour,
            "current_colour": current_colour,
            "token_version": token_version,
            "current_version": entry.version if entry else None,
            "name": entry.masked_name if entry else None,
            "id_number": entry.masked_number if entry else None,
            "vaccination": vaccination(entry) if entry else None,
            "last_test": last_test(entry, now) if entry else None,
            "meets_policy": None if failed is None else not failed,
            "failed_rules": failed,
            "scanned_at": now,
        }
    )


def _failed(
    policy: Policy, valid: bool, claims: dict[str, Any], entry: StatusEntry | None, now: int, peer: bool
) -> list[str]:
    """The policy's failed rules for the current status, or for the token's claims when there is none
    (always for a peer's token: its person's status is held by the peer)."""
    if not valid:
        return [VALID_TOKEN_RULE]
    if entry is None:
        return list(token_failed_rules(policy, claims, now, peer=peer))
    return list(
        failed_rules(policy, negative_test_at=negative_test_at(entry), vaccinated=entry.vaccine_complete, now=now)
    )


def _peer_name(app: web.Application, issuer: str) -> str | None:
    found = app[FEDERATION].keys.trusted(issuer)
    return found.display_name if found else None
