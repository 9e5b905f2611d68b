"""Unpadded base64url (RFC 7515 section 2), strict on input."""

from __future__ import annotations

import base64
import binascii
import re

_ALPHABET = re.compile(r"[A-Za-z0-9_-]*")


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Decode unpadded base64url; raise ValueError on padding, foreign characters or a bad length.

    The standard library's decoder silently skips characters outside the alphabet, so the alphabet is
    checked first. Non-zero trailing bits are refused too: every byte string then has exactly one
    encoding, and a token cannot be altered without changing what it decodes to.
    """
    if len(text) % 4 == 1 or _ALPHABET.fullmatch(text) is None:
        raise ValueError("not unpadded base64url")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except binascii.Error as exc:  # pragma: no cover - the checks above leave nothing for it to catch
        raise ValueError("not unpadded base64url") from exc
    if len(text) % 4 and b64url_encode(data) != text:
        raise ValueError("non-canonical base64url")
    return data
