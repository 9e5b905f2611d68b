"""Signing keys: generation, PEM files, public JWKs (RFC 7517, RFC 8037) and thumbprints (RFC 7638)."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Final

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from signing.encoding import b64url_decode, b64url_encode

ES256: Final = "ES256"
EDDSA: Final = "EdDSA"
ALGORITHMS: Final = frozenset({ES256, EDDSA})

PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey

_P256_BYTES = 32
_ED25519_BYTES = 32
KID_LENGTH: Final = 8


def generate_private_key(alg: str = ES256) -> PrivateKey:
    if alg == ES256:
        return ec.generate_private_key(ec.SECP256R1())
    if alg == EDDSA:
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"unsupported algorithm {alg!r}; expected one of {sorted(ALGORITHMS)}")


def key_alg(key: PrivateKey | PublicKey) -> str:
    """The JWS algorithm for a key; refuses curves other than P-256."""
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return EDDSA
    if isinstance(key.curve, ec.SECP256R1):
        return ES256
    raise ValueError(f"unsupported curve {key.curve.name}; ES256 needs P-256")


def private_key_to_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def private_key_from_pem(data: bytes) -> PrivateKey:
    """Load an unencrypted PEM private key (from a file or the environment) and check it is usable."""
    key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        raise ValueError(f"unsupported private key type {type(key).__name__}; expected P-256 or Ed25519")
    key_alg(key)
    return key


def save_private_key(key: PrivateKey, path: str | os.PathLike[str]) -> None:
    """Write the key as PEM PKCS#8 with mode 0600; never overwrite an existing file.

    The key is written to a temporary file in the same directory and then hard-linked into place, so
    the path either does not exist or holds the whole key, and an existing key is never replaced.
    """
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(private_key_to_pem(key))
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, target)
    finally:
        os.unlink(tmp)


def load_private_key(path: str | os.PathLike[str]) -> PrivateKey:
    return private_key_from_pem(Path(path).read_bytes())


def _public_members(key: PrivateKey | PublicKey) -> dict[str, str]:
    """The RFC 7638 required members of the public JWK, in lexicographic order."""
    public = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) else key
    if isinstance(public, ed25519.Ed25519PublicKey):
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {"crv": "Ed25519", "kty": "OKP", "x": b64url_encode(raw)}
    key_alg(public)
    numbers = public.public_numbers()
    return {
        "crv": "P-256",
        "kty": "EC",
        "x": b64url_encode(numbers.x.to_bytes(_P256_BYTES, "big")),
        "y": b64url_encode(numbers.y.to_bytes(_P256_BYTES, "big")),
    }


def jwk_thumbprint(jwk: dict[str, str]) -> str:
    """RFC 7638 SHA-256 thumbprint, base64url: hash of the required members only, sorted, no spaces."""
    if jwk.get("kty") == "EC":
        names: tuple[str, ...] = ("crv", "kty", "x", "y")
    elif jwk.get("kty") == "OKP":
        names = ("crv", "kty", "x")
    else:
        raise ValueError(f"unsupported JWK kty {jwk.get('kty')!r}")
    try:
        canonical = orjson.dumps({name: jwk[name] for name in names})
    except KeyError as exc:
        raise ValueError(f"JWK lacks member {exc.args[0]!r}") from exc
    return b64url_encode(hashlib.sha256(canonical).digest())


def short_kid(thumbprint: str) -> str:
    """The key id put in token headers: short to keep the QR small, so two keys may share one."""
    return thumbprint[:KID_LENGTH]


def public_jwk(key: PrivateKey | PublicKey) -> dict[str, str]:
    """The public JWK to publish: key members plus ``kid``, ``alg`` and ``use``."""
    members = _public_members(key)
    return {
        "kid": short_kid(jwk_thumbprint(members)),
        "alg": key_alg(key),
        "use": "sig",
        **members,
    }


def public_key_from_jwk(jwk: dict[str, str]) -> PublicKey:
    """Build a public key from a JWK, checking sizes and (for P-256) that the point is on the curve."""
    try:
        kty, crv, x = jwk["kty"], jwk["crv"], b64url_decode(jwk["x"])
        if kty == "OKP" and crv == "Ed25519" and len(x) == _ED25519_BYTES:
            return ed25519.Ed25519PublicKey.from_public_bytes(x)
        if kty == "EC" and crv == "P-256":
            y = b64url_decode(jwk["y"])
            if len(x) == len(y) == _P256_BYTES:
                return ec.EllipticCurvePublicNumbers(
                    int.from_bytes(x, "big"), int.from_bytes(y, "big"), ec.SECP256R1()
                ).public_key()
    except KeyError as exc:
        raise ValueError(f"JWK lacks member {exc.args[0]!r}") from exc
    raise ValueError(f"unsupported or malformed JWK (kty={jwk.get('kty')!r}, crv={jwk.get('crv')!r})")
