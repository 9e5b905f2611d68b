"""Compact JWS tokens (RFC 7515) with ES256 or EdDSA: signing on the hot path, strict verification.

Only this module's own token shape is accepted: a header of exactly ``alg``, ``kid`` and ``typ``, the
algorithm the key was made for, integer ``iat``/``exp``. Anything else is refused before any claim is
believed, so that tokens from a standard JOSE library verify here only if they look like ours.
"""

from __future__ import annotations

from base64 import urlsafe_b64encode
from collections.abc import Callable, Sequence
from typing import Final, Protocol

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from signing.colours import STATUS_LETTERS as COLOURS
from signing.encoding import b64url_decode
from signing.errors import (
    BadSignature,
    MalformedToken,
    TokenExpired,
    TokenNotYetValid,
    UnknownKey,
    WrongIssuer,
    WrongTokenType,
)
from signing.keys import ES256, PrivateKey, PublicKey
from signing.records import ACTIVE, REVOKED, KeyRecord

STATUS_TYP: Final = "hcs+jwt"
# Well above a status token (about 300 characters) and small enough to refuse junk before decoding it.
MAX_TOKEN_LENGTH: Final = 2048
SIGNATURE_BYTES: Final = 64  # r||s for ES256 (RFC 7518 3.4), and an Ed25519 signature (RFC 8032)

# When the last test, if negative, was sampled (Unix seconds); absent when there is none.
NEGATIVE_TEST_CLAIM: Final = "nt"

_RESERVED: Final = frozenset({"iss", "iat", "exp"})
_HEADER_MEMBERS: Final = frozenset({"alg", "kid", "typ"})
_ECDSA_SHA256: Final = ec.ECDSA(hashes.SHA256())
_HALF: Final = SIGNATURE_BYTES // 2
# The order n of P-256. ECDSA accepts s and n - s alike; only s <= n/2 ("low S") is made and accepted, so a
# token has one valid spelling and cannot be re-spelt into a different string that still verifies.
_P256_ORDER: Final = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
# Fixed-width big-endian, so comparing bytes compares the integers without converting them.
_HALF_ORDER: Final = (_P256_ORDER // 2).to_bytes(_HALF, "big")


def _raw_signer(key: PrivateKey) -> Callable[[bytes], bytes]:
    """A function giving the JWS signature bytes; method lookups are done here, once, not per token."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign
    sign, algorithm = key.sign, _ECDSA_SHA256

    def es256(data: bytes) -> bytes:
        # cryptography returns DER; JWS wants the two integers as fixed-width big-endian halves.
        return _low_s(_der_to_raw(sign(data, algorithm)))

    return es256


def _low_s(raw: bytes) -> bytes:
    """r||s with s replaced by n - s when s > n/2 (about every other signature); both verify the same."""
    s = raw[_HALF:]
    if s <= _HALF_ORDER:
        return raw
    return raw[:_HALF] + (_P256_ORDER - int.from_bytes(s, "big")).to_bytes(_HALF, "big")


def _der_to_raw(der: bytes) -> bytes:
    """r||s from a DER ECDSA-Sig-Value of P-256, sliced out directly (several times faster than
    decode_dss_signature and int.to_bytes); any other shape goes through the general decoder."""
    # SEQUENCE { INTEGER r, INTEGER s }; for P-256 every length fits one byte (the whole is < 128 bytes).
    if len(der) >= 8 and der[0] == 0x30 and der[1] == len(der) - 2 and der[2] == 0x02:
        r_len = der[3]
        s_at = 4 + r_len
        if r_len <= _HALF + 1 and s_at + 2 <= len(der) and der[s_at] == 0x02:
            s_len = der[s_at + 1]
            if s_len <= _HALF + 1 and s_at + 2 + s_len == len(der):
                # A 33-byte integer has a leading zero (sign byte); a short one is left-padded.
                r = der[4:s_at][-_HALF:].rjust(_HALF, b"\0")
                s = der[s_at + 2 :][-_HALF:].rjust(_HALF, b"\0")
                return r + s
    r_int, s_int = decode_dss_signature(der)
    return r_int.to_bytes(_HALF, "big") + s_int.to_bytes(_HALF, "big")


def _b64(data: bytes) -> bytes:
    return urlsafe_b64encode(data).rstrip(b"=")


def _signature_valid(key: PublicKey, signature: bytes, data: bytes) -> bool:
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, data)
        else:
            r = int.from_bytes(signature[:_HALF], "big")
            s = int.from_bytes(signature[_HALF:], "big")
            key.verify(encode_dss_signature(r, s), data, _ECDSA_SHA256)
    except InvalidSignature:
        return False
    return True


def _check_flag(name: str, value: object) -> None:
    if type(value) is not int or value not in (0, 1):
        raise ValueError(f"{name} must be 0 or 1, not {value!r}")


class TokenSigner:
    """Signs tokens with one active key. Header and issuer are encoded once, at construction."""

    __slots__ = ("_iss", "_prefix", "_sign", "_ttl", "kid", "typ")

    def __init__(self, record: KeyRecord, issuer: str, ttl_seconds: int, typ: str = STATUS_TYP) -> None:
        if record.private_key is None:
            raise ValueError(f"key {record.kid} has no private key loaded")
        if record.state != ACTIVE:
            raise ValueError(f"key {record.kid} is {record.state}; only the active key signs")
        if ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be positive")
        self._sign = _raw_signer(record.private_key)
        self._iss = issuer
        self._ttl = ttl_seconds
        self.kid = record.kid
        self.typ = typ
        header = orjson.dumps({"alg": record.alg, "kid": record.kid, "typ": typ})
        self._prefix = _b64(header) + b"."

    @property
    def issuer(self) -> str:
        return self._iss

    def _finish(self, payload: bytes) -> str:
        signing_input = self._prefix + _b64(payload)
        return (signing_input + b"." + _b64(self._sign(signing_input))).decode("ascii")

    def sign(self, claims: dict[str, object], now: int) -> str:
        """Sign ``claims`` plus ``iss``, ``iat`` = now and ``exp`` = now + ttl."""
        reserved = _RESERVED.intersection(claims)
        if reserved:
            raise ValueError(f"claims {sorted(reserved)} are set by the signer")
        return self._finish(orjson.dumps({"iss": self._iss, **claims, "iat": now, "exp": now + self._ttl}))

    def sign_status(
        self, sub: str, st: str, pop: int, vac: int, now: int, *, ver: int, negative_test_at: int | None = None
    ) -> str:
        """The hot path: a status token, byte for byte what ``sign`` makes from the same claims.

        ``sub`` is the per-token handle (signing/handles.py), never the pseudonym itself. ``ver`` is the
        version of the status computation shown, so an operator can tell which one a scanner saw.
        ``negative_test_at`` (the ``nt`` claim, left out when None) is when the last test was sampled,
        if it was negative: what a checkpoint's test-age policy needs (signing/policy.py).
        """
        if st not in COLOURS:
            raise ValueError(f"st must be one of G, Y, R, not {st!r}")
        _check_flag("pop", pop)
        _check_flag("vac", vac)
        if type(ver) is not int or ver < 0:
            raise ValueError(f"ver must be a non-negative integer, not {ver!r}")
        claims: dict[str, object] = {"iss": self._iss, "sub": sub, "st": st, "pop": pop, "vac": vac}
        if negative_test_at is not None:
            if type(negative_test_at) is not int or negative_test_at < 0:
                raise ValueError(f"negative_test_at must be a non-negative integer, not {negative_test_at!r}")
            claims[NEGATIVE_TEST_CLAIM] = negative_test_at
        claims["ver"] = ver
        claims["iat"] = now
        claims["exp"] = now + self._ttl
        return self._finish(orjson.dumps(claims))


class CandidateSource(Protocol):
    def candidates(self, kid: str) -> Sequence[KeyRecord]: ...


CandidateLookup = Callable[[str], Sequence[KeyRecord]]


def _int_claim(claims: dict[str, object], name: str) -> int:
    value = claims.get(name)
    if type(value) is not int:  # bool is an int subclass; true is not a time
        raise MalformedToken(f"claim {name} missing or not an integer")
    return value


class TokenVerifier:
    """Verifies tokens of one ``typ`` from one issuer against the keys a lookup returns for a ``kid``.

    Every candidate with the token's kid and algorithm is tried, since short kids can collide.
    ``leeway_seconds`` allows for clocks behind the signer's (``iat`` slightly in the future); expiry is
    exact: a token is refused once ``exp <= now``.
    """

    __slots__ = ("_issuer", "_leeway", "_lookup", "_max_length", "_status", "typ")

    def __init__(
        self,
        keys: CandidateSource | CandidateLookup,
        issuer: str,
        typ: str,
        leeway_seconds: int = 0,
        *,
        max_length: int = MAX_TOKEN_LENGTH,
    ) -> None:
        if leeway_seconds < 0:
            raise ValueError("leeway_seconds must not be negative")
        self._max_length = max_length  # larger for signed documents (a peer's records), not status tokens
        self._lookup: CandidateLookup = keys if callable(keys) else keys.candidates
        self._issuer = issuer
        self._leeway = leeway_seconds
        self._status = typ == STATUS_TYP
        self.typ = typ

    def verify(self, token: str, now: int) -> dict[str, object]:
        """Return the claims of a valid token; raise a ``BadToken`` subclass saying why not."""
        if not isinstance(token, str) or len(token) > self._max_length:
            raise MalformedToken("not a string or too long")
        parts = token.split(".")
        if len(parts) != 3:
            raise MalformedToken("not three dot-separated segments")
        header_seg, payload_seg, signature_seg = parts
        try:
            header = orjson.loads(b64url_decode(header_seg))
            payload = b64url_decode(payload_seg)
            signature = b64url_decode(signature_seg)
        except ValueError as exc:  # orjson.JSONDecodeError is a ValueError
            raise MalformedToken(f"bad base64url or JSON: {exc}") from None
        if not isinstance(header, dict) or header.keys() != _HEADER_MEMBERS:
            raise MalformedToken("header must have exactly alg, kid and typ")
        alg, kid, typ = header["alg"], header["kid"], header["typ"]
        if not (isinstance(alg, str) and isinstance(kid, str) and isinstance(typ, str)):
            raise MalformedToken("header members must be strings")

        self._check_signature(kid, alg, signature, token[: len(header_seg) + 1 + len(payload_seg)])
        if typ != self.typ:
            raise WrongTokenType(f"token type {typ!r}, expected {self.typ!r}")
        try:
            claims = orjson.loads(payload)
        except orjson.JSONDecodeError:
            raise MalformedToken("payload is not JSON") from None
        if not isinstance(claims, dict):
            raise MalformedToken("payload is not a JSON object")
        self._check_claims(claims, now)
        return claims

    def _check_signature(self, kid: str, alg: str, signature: bytes, signing_input: str) -> None:
        records = [r for r in self._lookup(kid) if r.state != REVOKED]
        if not records:
            raise UnknownKey(f"no published key with kid {kid!r}")
        records = [r for r in records if r.alg == alg]
        if not records:
            raise BadSignature(f"algorithm {alg!r} is not the algorithm of key {kid!r}")
        if len(signature) != SIGNATURE_BYTES:
            raise BadSignature(f"signature is {len(signature)} bytes, expected {SIGNATURE_BYTES}")
        if alg == ES256 and signature[_HALF:] > _HALF_ORDER:
            raise BadSignature("ES256 signature with a high S; only low-S signatures are accepted")
        data = signing_input.encode("ascii")  # already checked to be base64url
        for record in records:
            if _signature_valid(record.public_key, signature, data):
                return
        raise BadSignature("signature does not verify")

    def _check_claims(self, claims: dict[str, object], now: int) -> None:
        if claims.get("iss") != self._issuer:
            raise WrongIssuer(f"issuer {claims.get('iss')!r}, expected {self._issuer!r}")
        iat = _int_claim(claims, "iat")
        exp = _int_claim(claims, "exp")
        if self._status:
            sub, st = claims.get("sub"), claims.get("st")
            if not isinstance(sub, str) or st not in COLOURS:
                raise MalformedToken("status claims sub and st missing or invalid")
            try:
                _check_flag("pop", claims.get("pop"))
                _check_flag("vac", claims.get("vac"))
            except ValueError as exc:
                raise MalformedToken(str(exc)) from None
            ver = claims.get("ver", 0)  # absent from tokens signed before versions existed
            if type(ver) is not int or ver < 0:
                raise MalformedToken("status claim ver is not a non-negative integer")
            nt = claims.get(NEGATIVE_TEST_CLAIM, 0)
            if type(nt) is not int or nt < 0:
                raise MalformedToken(f"status claim {NEGATIVE_TEST_CLAIM} is not a non-negative integer")
        if exp <= now:
            raise TokenExpired(f"expired at {exp}, now {now}")
        if iat > now + self._leeway:
            raise TokenNotYetValid(f"issued at {iat}, now {now}")


def unverified_issuer(token: str, max_length: int = MAX_TOKEN_LENGTH) -> str:
    """The ``iss`` a token claims, read before any signature check: only to choose whose keys verify it.

    Nothing else may be believed from it; the verifier then checks ``iss`` again under the signature.
    """
    if not isinstance(token, str) or len(token) > max_length:
        raise MalformedToken("not a string or too long")
    parts = token.split(".")
    if len(parts) != 3:
        raise MalformedToken("not three dot-separated segments")
    try:
        claims = orjson.loads(b64url_decode(parts[1]))
    except ValueError as exc:
        raise MalformedToken(f"bad base64url or JSON: {exc}") from None
    issuer = claims.get("iss") if isinstance(claims, dict) else None
    if not isinstance(issuer, str) or not issuer:
        raise MalformedToken("claim iss missing or not a string")
    return issuer
