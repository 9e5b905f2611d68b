"""SMART Health Card export (citizen backends) and the card issuer's JWKS (anyone, CORS)."""

from __future__ import annotations

import time
from datetime import date
from typing import Any, Final

import orjson
from aiohttp import web

from app.credentials.shc import Holder, card_payload
from app.http.appkeys import CLIENTS, CREDENTIAL_KEYS, PG, POSTGRES_STATE, PUBLISHER, SETTINGS
from app.http.client_limits import admit
from app.http.handlers.common import identity_from_body, json_response, postgres_answers, read_json_object
from app.http.problems import CredentialTooLarge, CredentialUnavailable, InvalidField, SubjectNotFound
from app.identity import Identity, pseudonym
from app.limits import STATUS
from signing.shc import MAX_SINGLE_JWS, numeric_qr, sign_card

routes = web.RouteTableDef()

SHC_PATH: Final = "/shc"  # the card issuer is <public url>/shc, so its keys are at /shc/.well-known/jwks.json
_CORS: Final = {"Access-Control-Allow-Origin": "*", "Access-Control-Allow-Methods": "GET, OPTIONS"}
JWKS_MAX_AGE: Final = 3600  # card keys change rarely, and a retired one stays published


def issuer_url(request: web.Request) -> str:
    base = request.app[SETTINGS].public_url or f"{request.scheme}://{request.host}"
    return base + SHC_PATH


@routes.post("/v1/credentials/shc")
async def export_card(request: web.Request) -> web.Response:
    app = request.app
    client = app[CLIENTS].authenticate(request.headers.get("Authorization"), kind="citizen-backend")
    body = await read_json_object(request)
    await admit(request, client, STATUS)
    identity = identity_from_body(body)
    holder = _holder(body, identity)
    keys = app[CREDENTIAL_KEYS]
    if keys.signer is None:
        raise CredentialUnavailable(keys.problem or "no credential key")
    now = int(time.time())
    settings = app[SETTINGS]
    with postgres_answers(app[POSTGRES_STATE]):
        async with app[PG].acquire(timeout=settings.pg_acquire_timeout_seconds) as conn:
            payload = await card_payload(
                conn, pseudonym(identity, settings.pepper), holder, app[PUBLISHER].ruleset, issuer_url(request), now
            )
    if payload is None:
        raise SubjectNotFound("no vaccination or test is held for this document")
    jws = sign_card(payload, keys.signer.private_key, keys.signer.kid)
    if len(jws) > MAX_SINGLE_JWS:
        raise CredentialTooLarge(f"the card is {len(jws)} characters; one QR code holds {MAX_SINGLE_JWS}")
    return json_response(
        {"verifiableCredential": [jws], "qr": numeric_qr(jws), "issuer": payload["iss"], "kid": keys.signer.kid}
    )


def _holder(body: dict[str, Any], identity: Identity) -> Holder:
    name = body.get("name")
    if not isinstance(name, dict):
        raise InvalidField("name", "missing" if name is None else "wrong_type", "name must be {family, given}")
    family, given = name.get("family"), name.get("given", [])
    if not isinstance(family, str) or not 0 < len(family.strip()) <= 100:
        raise InvalidField("name.family", "wrong_type", "name.family must be a string of 1 to 100 characters")
    if (
        not isinstance(given, list)
        or len(given) > 5
        or not all(isinstance(g, str) and 0 < len(g) <= 100 for g in given)
    ):
        raise InvalidField("name.given", "wrong_type", "name.given must be a list of up to 5 names")
    birth = body.get("birth_date")
    if birth is None and identity.id_type == "resident":
        digits = identity.number[6:14]  # GB 11643: the birth date is digits 7 to 14
        born = date(int(digits[:4]), int(digits[4:6]), int(digits[6:8]))
    elif not isinstance(birth, str):
        raise InvalidField("birth_date", "missing", "birth_date (YYYY-MM-DD) is required for this document type")
    else:
        try:
            born = date.fromisoformat(birth)
        except ValueError:
            raise InvalidField("birth_date", "bad_date", "birth_date must be YYYY-MM-DD") from None
    return Holder(family.strip(), tuple(g.strip() for g in given), born)


@routes.get(SHC_PATH + "/.well-known/jwks.json")
async def card_jwks(request: web.Request) -> web.Response:
    """The card keys, readable from a browser-based verifier on any origin (CORS)."""
    return web.Response(
        body=orjson.dumps({"keys": request.app[CREDENTIAL_KEYS].published}),
        content_type="application/json",
        headers={**_CORS, "Cache-Control": f"public, max-age={JWKS_MAX_AGE}"},
    )


@routes.options(SHC_PATH + "/.well-known/jwks.json")
async def card_jwks_preflight(request: web.Request) -> web.Response:
    return web.Response(status=204, headers={**_CORS, "Access-Control-Max-Age": "86400"})
