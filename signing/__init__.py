"""Signed QR status tokens: keys, JWS signing and verification, key rotation, JWKS, QR images.

Synchronous and free of the application: the only I/O is reading and writing key files.
"""

from signing.errors import (
    BadHandle,
    BadSignature,
    BadToken,
    MalformedToken,
    TokenExpired,
    TokenNotYetValid,
    UnknownKey,
    WrongIssuer,
    WrongTokenType,
)
from signing.jwks import jwks_bytes, jwks_document
from signing.jws import MAX_TOKEN_LENGTH, STATUS_TYP, TokenSigner, TokenVerifier
from signing.keyring import KeyRing, NoSigningKey
from signing.keys import EDDSA, ES256, generate_private_key, load_private_key, save_private_key
from signing.records import KeyRecord

__all__ = [
    "EDDSA",
    "ES256",
    "MAX_TOKEN_LENGTH",
    "STATUS_TYP",
    "BadHandle",
    "BadSignature",
    "BadToken",
    "KeyRecord",
    "KeyRing",
    "MalformedToken",
    "NoSigningKey",
    "TokenExpired",
    "TokenNotYetValid",
    "TokenSigner",
    "TokenVerifier",
    "UnknownKey",
    "WrongIssuer",
    "WrongTokenType",
    "generate_private_key",
    "jwks_bytes",
    "jwks_document",
    "load_private_key",
    "save_private_key",
]
