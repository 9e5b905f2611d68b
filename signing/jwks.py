"""The JWKS document (RFC 7517) served at /.well-known/jwks.json."""

from __future__ import annotations

from collections.abc import Iterable

import orjson

from signing.records import REVOKED, KeyRecord

_ORDER = ("kid", "alg", "use", "kty", "crv", "x", "y")


def jwks_document(records: Iterable[KeyRecord]) -> dict[str, list[dict[str, str]]]:
    """``{"keys": [...]}`` with only public members; revoked keys are left out whatever the caller passes."""
    return {
        "keys": [
            {name: r.public_jwk[name] for name in _ORDER if name in r.public_jwk} for r in records if r.state != REVOKED
        ]
    }


def jwks_bytes(records: Iterable[KeyRecord]) -> bytes:
    """The document serialised once, for a handler to cache and send with cache headers."""
    return orjson.dumps(jwks_document(records))
