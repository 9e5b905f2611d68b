"""The federation pseudonym: how two deployments name one person without sharing a number or a pepper.

HMAC-SHA-256 of the normalised ``type:number`` (the same message as the local pseudonym) under the key
the whole federation shares (HEALTHCODE_FEDERATION_KEY), truncated to 16 bytes. Every deployment
computes the same value for one person; none can turn it into its peers' local pseudonyms (their
peppers differ) or back into the number. Sent between peers as base64url without padding.
"""

from __future__ import annotations

import hmac
from typing import Final

from app.identity import Identity
from cache.keys import PSEUDONYM_BYTES
from signing.encoding import b64url_decode, b64url_encode

FEDERATION_PSEUDONYM_BYTES: Final = PSEUDONYM_BYTES


def federation_pseudonym(identity: Identity, key: bytes) -> bytes:
    return federation_digest(identity.canonical, key)


def federation_digest(canonical: bytes, key: bytes) -> bytes:
    return hmac.digest(key, canonical, "sha256")[:FEDERATION_PSEUDONYM_BYTES]


def encode(value: bytes) -> str:
    return b64url_encode(value)


def decode(text: str) -> bytes:
    """A federation pseudonym from its wire form; ValueError when it is not one."""
    value = b64url_decode(text)
    if len(value) != FEDERATION_PSEUDONYM_BYTES:
        raise ValueError(f"a federation pseudonym is {FEDERATION_PSEUDONYM_BYTES} bytes, not {len(value)}")
    return value
