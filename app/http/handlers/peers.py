"""The federation's routes: the peer vaccination API (server to server) and the signed trust list."""

from __future__ import annotations

import time
from typing import Any, Final

import orjson
from aiohttp import web

from app.federation import identity
from app.federation.assertion import RECORDS_TYP, AssertionRefused, check_assertion
from app.federation.records import held_vaccinations
from app.http.appkeys import FEDERATION, PG, POSTGRES_STATE, REDIS, SETTINGS, SIGNER
from app.http.handlers.common import json_response, postgres_answers, read_json_object, required_string
from app.http.problems import DependencyUnavailable, InvalidField, PeerUnauthorized
from cache.connection import REDIS_ERRORS
from cache.federation import first_use
from signing.errors import BadToken

routes = web.RouteTableDef()

RECORDS_SECONDS: Final = 60  # a peer's answer is used at once; it need not live long
TRUST_LIST_TYP: Final = "hctl+jwt"
TRUST_LIST_MAX_AGE: Final = 60
# A replayed assertion is remembered a little past its exp, for clocks that disagree.
_REPLAY_MARGIN: Final = 30


@routes.post("/v1/peer/vaccinations")
async def peer_vaccinations(request: web.Request) -> web.Response:
    app = request.app
    settings, federation = app[SETTINGS], app[FEDERATION]
    header = request.headers.get("Authorization", "")
    if not header.startswith("Bearer ") or not header[7:].strip():
        raise PeerUnauthorized(
            "missing_assertion", "send Authorization: Bearer <assertion signed with your published key>"
        )
    now = int(time.time())
    try:
        caller = await check_assertion(federation.trust, header[7:].strip(), now)
    except AssertionRefused as exc:
        raise PeerUnauthorized(exc.reason, str(exc)) from None
    except BadToken as exc:
        raise PeerUnauthorized(exc.reason, f"the assertion is refused: {exc.reason}") from None
    try:
        fresh = await first_use(app[REDIS], caller.issuer, caller.jti, caller.exp - now + _REPLAY_MARGIN)
    except REDIS_ERRORS:
        # Without the replay check an assertion could be used twice: refuse rather than answer.
        raise DependencyUnavailable("the replay check is unavailable", dependency="redis") from None
    if not fresh:
        raise PeerUnauthorized("replayed", "this assertion (jti) was used before; sign a new one per request")
    body = await read_json_object(request)
    wire = required_string(body, "federation_pseudonym", max_length=64)
    try:
        federated = identity.decode(wire)
    except ValueError as exc:
        raise InvalidField("federation_pseudonym", "bad_pseudonym", str(exc)) from None
    # A token must not outlive the key ring's publication window (the status-token lifetime).
    signer = app[SIGNER].signer_for(RECORDS_TYP, min(RECORDS_SECONDS, settings.token_ttl_seconds))
    with postgres_answers(app[POSTGRES_STATE]):
        async with app[PG].acquire(timeout=settings.pg_acquire_timeout_seconds) as conn:
            records = await held_vaccinations(conn, federated, settings.region_code)
    claims: dict[str, object] = {
        "aud": caller.issuer,
        "fp": wire,
        "region": settings.region_code,
        "vaccinations": [r.as_claim() for r in records],
    }
    return json_response({"issuer": settings.issuer, "records": signer.sign(claims, now)})


@routes.get("/.well-known/trust-list.json")
async def trust_list(request: web.Request) -> web.Response:
    """The peers this deployment trusts and their keys as last fetched, as a flattened JWS JSON
    serialisation (RFC 7515 7.2.2) signed with a status-token key, so an offline scanner that holds our
    JWKS can check it before trusting any key in it."""
    app = request.app
    federation = app[FEDERATION]
    now = int(time.time())
    peers: list[dict[str, Any]] = []
    for peer in sorted(federation.keys.peers.values(), key=lambda p: p.issuer):
        keys = federation.keys.sets.get(peer.issuer)
        usable = keys is not None and now <= keys.usable_until
        peers.append(
            {
                "iss": peer.issuer,
                "name": peer.display_name,
                "jwks_url": peer.jwks_url,
                "algorithms": list(peer.algorithms),
                "vaccination_source": peer.vaccination_source,
                "keys": [r.public_jwk for rs in keys.by_kid.values() for r in rs] if usable and keys else [],
            }
        )
    signer = app[SIGNER].signer_for(TRUST_LIST_TYP, min(app[SETTINGS].token_ttl_seconds, 3600))
    protected, payload, signature = signer.sign({"peers": peers}, now).split(".")
    body = orjson.dumps({"protected": protected, "payload": payload, "signature": signature})
    headers = {"Cache-Control": f"public, max-age={TRUST_LIST_MAX_AGE}"}
    return web.Response(body=body, content_type="application/jose+json", headers=headers)
