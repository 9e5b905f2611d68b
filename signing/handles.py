"""The ``sub`` of a status token: a handle for one token that only this service can resolve.

A handle is AES-GCM (NIST SP 800-38D) of the subject's 16-byte pseudonym under the service's handle key,
with a fresh random 96-bit nonce and the token's issue time as associated data, spelt
base64url(nonce || ciphertext || tag): 44 bytes, 59 characters. Every token of one person therefore
carries a different ``sub``, so scanners at two checkpoints (or a mini-program vendor) cannot link them;
online verification opens the handle to find the subject's current status. The issue time is bound
without being carried (the token already says it), so a handle moved into another token does not open.
A token type other than the status token binds its own ``purpose`` too (the test-registration code
uses ``hct``), so a handle made for one kind of token never opens as the other's.

Random nonces under one key collide with probability about n^2 / 2^97 after n handles; NIST advises at
most 2^32 of them per key. A collision would reveal the XOR of two pseudonyms, nothing more useful: the
handle carries no authority, the token's signature does. Change the key well before 2^32 handles
(about four days at 10^9 a day); a token made under the old key then opens as ``bad_handle`` until it
expires (minutes).
"""

from __future__ import annotations

import os
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from signing.encoding import b64url_decode, b64url_encode
from signing.errors import BadHandle

KEY_SIZES: Final = frozenset({16, 24, 32})  # AES-128, AES-192, AES-256
NONCE_BYTES: Final = 12
TAG_BYTES: Final = 16
# The 59 characters of a handle for a 16-byte pseudonym; anything longer is refused before decoding.
MAX_HANDLE_LENGTH: Final = 128


def _associated(iat: int, purpose: bytes) -> bytes:
    return iat.to_bytes(8, "big", signed=True) + purpose


class HandleCipher:
    """Seals pseudonyms into handles and opens them, under one key."""

    __slots__ = ("_aead",)

    def __init__(self, key: bytes) -> None:
        if len(key) not in KEY_SIZES:
            raise ValueError(f"a handle key is 16, 24 or 32 bytes, not {len(key)}")
        self._aead = AESGCM(key)

    def __repr__(self) -> str:
        return "HandleCipher(<secret>)"

    def seal(self, pseudonym: bytes, iat: int, purpose: bytes = b"") -> str:
        """A new handle for ``pseudonym`` in a token issued at ``iat``: never the same twice."""
        nonce = os.urandom(NONCE_BYTES)
        return b64url_encode(nonce + self._aead.encrypt(nonce, pseudonym, _associated(iat, purpose)))

    def open(self, handle: str, iat: int, purpose: bytes = b"") -> bytes:
        """The pseudonym inside ``handle``; ``BadHandle`` if this key did not seal it for that ``iat`` and
        ``purpose``."""
        if len(handle) > MAX_HANDLE_LENGTH:
            raise BadHandle("handle too long")
        try:
            raw = b64url_decode(handle)
        except ValueError:
            raise BadHandle("handle is not base64url") from None
        if len(raw) <= NONCE_BYTES + TAG_BYTES:
            raise BadHandle("handle too short")
        try:
            return self._aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], _associated(iat, purpose))
        except (InvalidTag, OverflowError):  # OverflowError: an iat no handle of ours was made for
            raise BadHandle("handle does not open under this service's key") from None
