"""SMART Health Cards (spec.smarthealth.cards): the compact JWS of a card and its numeric QR form.

The payload is minified JSON compressed with raw DEFLATE (RFC 1951, no zlib header), named in the
header as `"zip": "DEF"`; the header is exactly `alg` ES256, `zip` and `kid` (the RFC 7638 thumbprint of
the signing key). The QR carries `shc:/` followed by each character of the JWS as two digits (its code
point minus 45), so the whole code fits QR numeric mode.
"""

from __future__ import annotations

import zlib
from typing import Final

import orjson

from signing.encoding import b64url_encode
from signing.jws import _raw_signer
from signing.keys import ES256, PrivateKey, key_alg

PREFIX: Final = "shc:/"
# The largest JWS one QR code (version 22 at error correction L) holds; longer cards are not made.
MAX_SINGLE_JWS: Final = 1195


def sign_card(payload: dict[str, object], private_key: PrivateKey, kid: str) -> str:
    if key_alg(private_key) != ES256:
        raise ValueError("a SMART Health Card is signed with ES256")
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)  # wbits -15: raw DEFLATE, no header or checksum
    deflated = compressor.compress(orjson.dumps(payload)) + compressor.flush()
    header = orjson.dumps({"zip": "DEF", "alg": ES256, "kid": kid})
    signing_input = (b64url_encode(header) + "." + b64url_encode(deflated)).encode("ascii")
    return (signing_input + b"." + b64url_encode(_raw_signer(private_key)(signing_input)).encode()).decode()


def numeric_qr(jws: str) -> str:
    """`shc:/` and two digits per character of the JWS."""
    return PREFIX + "".join(f"{ord(c) - 45:02d}" for c in jws)


def jws_from_numeric(qr: str) -> str:
    if not qr.startswith(PREFIX) or len(qr) % 2 != len(PREFIX) % 2:
        raise ValueError("not a single-chunk shc:/ numeric code")
    digits = qr[len(PREFIX) :]
    return "".join(chr(int(digits[i : i + 2]) + 45) for i in range(0, len(digits), 2))
