"""Place-code tokens (场所码): a venue's printed QR, signed with the service's key.

Type ``hcv+jwt``, so that no status verifier accepts a venue code as a health code, nor the reverse.
Claims: ``iss``, ``vid`` (the venue's public id), ``vs`` (the venue's code serial: reissuing the code
bumps it and ends the old posters), ``iat`` and ``exp``.

A poster hangs on a wall for months while status keys rotate every few days, so a venue code is
verified by the service itself (never offline) against every key it still holds that is not revoked,
retired ones included. Revoking a key ends the posters it signed; their venues are reissued.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from signing.errors import MalformedToken
from signing.jws import TokenSigner, TokenVerifier
from signing.records import REVOKED, KeyRecord

VENUE_TYP: Final = "hcv+jwt"
# A printed code outlives many key rotations; after two years the venue prints a reissued one.
VENUE_TOKEN_SECONDS: Final = 2 * 365 * 86400


@dataclass(frozen=True, slots=True)
class VenueClaims:
    venue_id: str
    serial: int
    expires_at: int


def sign_venue(record: KeyRecord, issuer: str, venue_id: str, serial: int, now: int) -> str:
    """A venue code signed with ``record`` (the active key, with its private half)."""
    if serial <= 0:
        raise ValueError("serial must be positive")
    return TokenSigner(record, issuer, VENUE_TOKEN_SECONDS, VENUE_TYP).sign({"vid": venue_id, "vs": serial}, now)


def verify_venue(records: Iterable[KeyRecord], issuer: str, token: str, now: int) -> VenueClaims:
    """The claims of a genuine venue code; raises a ``BadToken`` subclass saying why not."""
    by_kid: dict[str, list[KeyRecord]] = {}
    for record in records:
        if record.state != REVOKED:
            by_kid.setdefault(record.kid, []).append(record)

    def lookup(kid: str) -> Sequence[KeyRecord]:
        return by_kid.get(kid, ())

    claims = TokenVerifier(lookup, issuer, typ=VENUE_TYP).verify(token, now)
    venue_id, serial, exp = claims.get("vid"), claims.get("vs"), claims.get("exp")
    if not isinstance(venue_id, str) or type(serial) is not int or serial <= 0 or type(exp) is not int:
        raise MalformedToken("venue claims vid and vs missing or invalid")
    return VenueClaims(venue_id, serial, exp)
