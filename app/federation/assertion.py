"""Peer requests authenticated as in RFC 7523 (JWT client authentication): no shared passwords.

Each request carries `Authorization: Bearer <assertion>`, a JWT the caller signs with its own published
key (the key its status tokens are verified with): `iss` and `sub` the caller's issuer id, `aud` the
callee's issuer id, a fresh `jti`, `iat`, and an `exp` at most MAX_LIFETIME after `iat`. The callee
verifies it against the caller's keys from the trust list and remembers the `jti` until `exp`, so a
captured assertion cannot be replayed.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Final

from app.federation.trust import TrustedVerifier
from signing.errors import BadToken, MalformedToken
from signing.jws import TokenSigner, TokenVerifier

ASSERTION_TYP: Final = "hcp+jwt"  # a peer request
RECORDS_TYP: Final = "hcv+jwt"  # a peer's signed answer: vaccination records
ASSERTION_SECONDS: Final = 60
MAX_LIFETIME: Final = 300  # an assertion valid for longer is refused: replay protection must not grow unbounded
MAX_JTI: Final = 128


class AssertionRefused(BadToken):
    """A peer request's assertion is refused; `reason` is stable for answers and metrics."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Caller:
    issuer: str
    jti: str
    exp: int


def make_assertion(signer: TokenSigner, audience: str, now: int) -> str:
    """An assertion for one request to `audience` (signer: typ ASSERTION_TYP, ttl ASSERTION_SECONDS)."""
    if signer.typ != ASSERTION_TYP:
        raise ValueError(f"an assertion is signed as {ASSERTION_TYP}, not {signer.typ}")
    issuer = signer.issuer
    return signer.sign({"sub": issuer, "aud": audience, "jti": secrets.token_urlsafe(18)}, now)


async def check_assertion(trust: TrustedVerifier, token: str, now: int) -> Caller:
    """The caller of a valid assertion; AssertionRefused (or a BadToken) saying why not.

    The jti is not checked here: the caller of this function remembers it (app/federation/replay).
    """
    never = TokenVerifier(lambda kid: (), trust.own_issuer, ASSERTION_TYP)  # our own issuer is no peer
    try:
        verified = await trust.verify(token, ASSERTION_TYP, never, now)
    except MalformedToken as exc:
        raise AssertionRefused("malformed", str(exc)) from None
    claims = verified.claims
    if verified.local:
        raise AssertionRefused("untrusted_issuer", "a deployment does not call itself")
    if claims.get("sub") != verified.issuer:
        raise AssertionRefused("bad_subject", "sub must equal iss (the caller authenticates as itself)")
    if claims.get("aud") != trust.own_issuer:
        raise AssertionRefused("wrong_audience", f"aud must be {trust.own_issuer!r}")
    jti = claims.get("jti")
    if not isinstance(jti, str) or not 16 <= len(jti) <= MAX_JTI:
        raise AssertionRefused("bad_jti", f"jti must be a string of 16 to {MAX_JTI} characters")
    iat, exp = claims["iat"], claims["exp"]
    assert isinstance(iat, int) and isinstance(exp, int)  # checked by the verifier
    if exp - iat > MAX_LIFETIME:
        raise AssertionRefused("lifetime_too_long", f"exp may be at most {MAX_LIFETIME} s after iat")
    return Caller(verified.issuer, jti, exp)
