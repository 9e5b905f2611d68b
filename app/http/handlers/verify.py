"""POST /v1/verify: a checkpoint scanner checks a token online, optionally against its policy; the scan is
recorded."""

from __future__ import annotations

import contextlib
import re
import time
from typing import Any, Final

from aiohttp import web

from app.http.appkeys import CLIENTS, FEDERATION, HANDLES, REDIS, SCANS, SIGNER, STATUS_CACHE
from app.http.client_limits import admit, charge, rate_limited
from app.http.handlers.checkpoint_policy import policy_from_body
from app.http.handlers.common import json_response, read_json_object, required_string
from app.http.handlers.status_view import last_test, negative_test_at, vaccination
from app.http.problems import InvalidField
from app.limits import VERIFY
from app.scans import ScanEvent
from cache.connection import REDIS_ERRORS, AnyRedis
from cache.entry import StatusEntry
from cache.rate_limit import Refused
from cache.scan_ids import ScanIds
from signing.colours import COLOUR_LETTER
from signing.errors import BadToken
from signing.jws import MAX_TOKEN_LENGTH, STATUS_TYP
from signing.policy import Policy, failed_rules, token_failed_rules

routes = web.RouteTableDef()

_LETTER_COLOUR = {letter: colour for colour, letter in COLOUR_LETTER.items()}
# The rule an invalid token fails: nothing it claims can be believed.
VALID_TOKEN_RULE = "valid_token"
# A scanner's own id for a scan, so a scan sent again (a queue re-sent after an outage) is recorded once.
_SCAN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
# How late a queued scan (made offline, sent when the network returned) may say it was made, and how far
# ahead of ours a scanner's clock may be.
MAX_SCAN_DELAY_SECONDS: Final = 24 * 3600
_CLOCK_AHEAD_SECONDS: Final = 60


@routes.post("/v1/verify")
async def verify(request: web.Request) -> web.Response:
    app = request.app
    client = app[CLIENTS].authenticate(request.headers.get("Authorization"), kind="scanner")
    body = await read_json_object(request)
    token = required_string(body, "token", max_length=MAX_TOKEN_LENGTH)
    checkpoint = required_string(body, "checkpoint", max_length=64)
    policy = policy_from_body(body)
    scan_id = _scan_id(body)
    now = int(time.time())
    at = _scanned_at(body, scan_id, now)
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
        # Our own tokens and those of every peer on the trust list, each by its `iss` and `kid`; a queued
        # scan's token is checked as of when it was scanned.
        verified = await app[FEDERATION].trust.verify(token, STATUS_TYP, verifier, at)
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
    duplicate = scan_id is not None and not await _first_sight(app[REDIS], client.id, scan_id)
    if not duplicate:
        event = ScanEvent(at, checkpoint, client.id, subject, valid, reason, token_colour, current_colour)
        try:
            await app[SCANS].record(event)
        except BaseException:
            if scan_id is not None:
                with contextlib.suppress(*REDIS_ERRORS):
                    await ScanIds(app[REDIS]).forget(client.id, scan_id)
            raise
    failed = None if policy is None else _failed(policy, valid, claims, entry, at, peer)
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
            "scanned_at": at,
            "scan_id": scan_id,
            "duplicate": duplicate,
        }
    )


def _scan_id(body: dict[str, Any]) -> str | None:
    if "scan_id" not in body:
        return None
    value = body["scan_id"]
    if not isinstance(value, str) or not _SCAN_ID.fullmatch(value):
        raise InvalidField("scan_id", "bad_scan_id", "scan_id must be 1 to 64 letters, digits, '-' or '_'")
    return value


def _scanned_at(body: dict[str, Any], scan_id: str | None, now: int) -> int:
    """When the scan was made: `now`, or a queued scan's `scanned_at` (only with its scan_id, so that it
    is recorded once), at most a day back."""
    if "scanned_at" not in body:
        return now
    value = body["scanned_at"]
    if scan_id is None:
        raise InvalidField("scanned_at", "scan_id_required", "scanned_at is taken only with the scan's scan_id")
    if type(value) is not int:
        raise InvalidField("scanned_at", "wrong_type", "scanned_at must be Unix seconds")
    if not now - MAX_SCAN_DELAY_SECONDS <= value <= now + _CLOCK_AHEAD_SECONDS:
        raise InvalidField(
            "scanned_at", "out_of_range", f"scanned_at must be within the last {MAX_SCAN_DELAY_SECONDS // 3600} hours"
        )
    return min(value, now)


async def _first_sight(redis: AnyRedis, client_id: int, scan_id: str) -> bool:
    """Whether the scan is new; with Redis unavailable it is taken as new (a rare duplicate row beats a
    lost scan)."""
    try:
        return await ScanIds(redis).first_sight(client_id, scan_id)
    except REDIS_ERRORS:
        return True


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
