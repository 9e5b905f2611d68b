"""Verifying a token from this deployment or from any peer on the trust list, by its `iss` and `kid`."""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp
import orjson

from app.federation.keys import PeerKeys
from signing.encoding import b64url_decode
from signing.errors import UntrustedIssuer
from signing.jws import MAX_TOKEN_LENGTH, TokenVerifier, unverified_issuer

# Allowance for a peer's clock being ahead of ours (its tokens' `iat` slightly in our future).
PEER_LEEWAY_SECONDS = 30


@dataclass(frozen=True, slots=True)
class Verified:
    issuer: str
    claims: dict[str, object]
    local: bool  # signed by this deployment (its handle opens here); False for a peer's token


class TrustedVerifier:
    """Chooses whose keys verify a token from the `iss` it claims, then verifies it strictly.

    An `iss` that is neither ours nor on the trust list is refused as `untrusted_issuer` before any key
    is looked at. A peer's token whose kid we lack makes one re-fetch of its JWKS (a key it has just
    added), at most once per peer every few seconds.
    """

    def __init__(self, own_issuer: str, peer_keys: PeerKeys, session: aiohttp.ClientSession | None) -> None:
        self.own_issuer = own_issuer
        self.peer_keys = peer_keys
        self.session = session

    async def verify(
        self, token: str, typ: str, own: TokenVerifier, now: int, *, max_length: int = MAX_TOKEN_LENGTH
    ) -> Verified:
        issuer = unverified_issuer(token, max_length)
        if issuer == self.own_issuer:
            return Verified(issuer, own.verify(token, now), local=True)
        peer = self.peer_keys.trusted(issuer)
        if peer is None:
            raise UntrustedIssuer(f"issuer {issuer!r} is not on the trust list")
        kid = _kid(token)
        if kid is not None and self.session is not None and self.peer_keys.wants_refetch(issuer, kid):
            await self.peer_keys.fetch(self.session, peer)
        verifier = TokenVerifier(
            lambda k: self.peer_keys.candidates(issuer, k), issuer, typ, PEER_LEEWAY_SECONDS, max_length=max_length
        )
        return Verified(issuer, verifier.verify(token, now), local=False)


def _kid(token: str) -> str | None:
    try:
        header = orjson.loads(b64url_decode(token.split(".", 1)[0]))
    except ValueError:
        return None  # the verifier names what is wrong with it
    kid = header.get("kid") if isinstance(header, dict) else None
    return kid if isinstance(kid, str) else None
