"""Status tokens: round trips, independent verification with PyJWT, refusals, rotation, JWKS."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from signing import (
    EDDSA,
    ES256,
    MAX_TOKEN_LENGTH,
    STATUS_TYP,
    BadSignature,
    BadToken,
    KeyRecord,
    KeyRing,
    MalformedToken,
    NoSigningKey,
    TokenExpired,
    TokenNotYetValid,
    TokenSigner,
    TokenVerifier,
    UnknownKey,
    WrongIssuer,
    WrongTokenType,
    generate_private_key,
    jwks_bytes,
    jwks_document,
)
from signing.encoding import b64url_decode, b64url_encode
from signing.keys import PrivateKey

ISS = "https://healthcode.example"
TTL = 300
NOW = 1_700_000_000
SUB = b64url_encode(bytes(range(16)))
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def b64(obj: object) -> str:
    return b64url_encode(orjson.dumps(obj))


def segments(token: str) -> tuple[dict[str, object], dict[str, object], bytes]:
    h, p, s = token.split(".")
    return orjson.loads(b64url_decode(h)), orjson.loads(b64url_decode(p)), b64url_decode(s)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module", params=[ES256, EDDSA])
def alg(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


@pytest.fixture(scope="module")
def es_key() -> PrivateKey:
    return generate_private_key(ES256)


@pytest.fixture(scope="module")
def ed_key() -> PrivateKey:
    return generate_private_key(EDDSA)


@pytest.fixture
def key(alg: str, es_key: PrivateKey, ed_key: PrivateKey) -> PrivateKey:
    return es_key if alg == ES256 else ed_key


@pytest.fixture
def record(key: PrivateKey) -> KeyRecord:
    return KeyRecord.from_private_key(key)


@pytest.fixture
def ring(record: KeyRecord) -> KeyRing:
    return KeyRing([record], TTL, issuer=ISS)


@pytest.fixture
def verifier(ring: KeyRing) -> TokenVerifier:
    return TokenVerifier(ring, ISS, STATUS_TYP)


@pytest.fixture
def token(ring: KeyRing) -> str:
    return ring.signer.sign_status(SUB, "Y", 1, 0, NOW, ver=1)


def status_claims(st: str = "Y", pop: int = 1, vac: int = 0, now: int = NOW) -> dict[str, object]:
    return {"iss": ISS, "sub": SUB, "st": st, "pop": pop, "vac": vac, "ver": 1, "iat": now, "exp": now + TTL}


def s_of(token: str) -> int:
    return int.from_bytes(segments(token)[2][32:], "big")


def with_s(token: str, s: int) -> str:
    """The same token with the S half of its ES256 signature replaced."""
    head, _, sig = token.rpartition(".")
    raw = b64url_decode(sig)
    return f"{head}.{b64url_encode(raw[:32] + s.to_bytes(32, 'big'))}"


def pyjwt_token(claims: dict[str, object], key: PrivateKey, record: KeyRecord, alg: str) -> str:
    """A token made by PyJWT, its ES256 S made low as ours are (PyJWT leaves it as OpenSSL made it)."""
    token = jwt.encode(claims, key, algorithm=alg, headers={"kid": record.kid, "typ": STATUS_TYP})
    if alg == ES256 and s_of(token) > P256_ORDER // 2:
        token = with_s(token, P256_ORDER - s_of(token))
    return token


# --- round trips ---------------------------------------------------------------------------------------


def test_round_trip(token: str, verifier: TokenVerifier, record: KeyRecord, alg: str) -> None:
    assert verifier.verify(token, NOW) == status_claims()
    header, payload, signature = segments(token)
    assert header == {"alg": alg, "kid": record.kid, "typ": "hcs+jwt"}
    assert list(payload) == ["iss", "sub", "st", "pop", "vac", "ver", "iat", "exp"]
    assert len(signature) == 64
    assert len(token) <= 340, token  # the QR must stay small


@pytest.mark.parametrize(("st", "pop", "vac"), [("G", 0, 1), ("R", 0, 0), ("Y", 1, 1)])
def test_every_status_round_trips(ring: KeyRing, verifier: TokenVerifier, st: str, pop: int, vac: int) -> None:
    token = ring.signer.sign_status(SUB, st, pop, vac, NOW, ver=1)
    assert verifier.verify(token, NOW + TTL - 1) == status_claims(st, pop, vac)


def test_sign_status_matches_generic_sign(ring: KeyRing) -> None:
    fast = ring.signer.sign_status(SUB, "R", 0, 1, NOW, ver=1)
    generic = ring.signer.sign({"sub": SUB, "st": "R", "pop": 0, "vac": 1, "ver": 1}, NOW)
    assert fast.split(".")[:2] == generic.split(".")[:2]


def test_es256_signature_is_raw_r_s(es_key: PrivateKey) -> None:
    assert isinstance(es_key, ec.EllipticCurvePrivateKey)
    signer = TokenSigner(KeyRecord.from_private_key(es_key), ISS, TTL)
    token = signer.sign_status(SUB, "G", 0, 0, NOW, ver=1)
    signing_input, _, sig_b64 = token.rpartition(".")
    signature = b64url_decode(sig_b64)
    assert len(signature) == 64
    der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
    es_key.public_key().verify(der, signing_input.encode(), ec.ECDSA(hashes.SHA256()))


def test_last_negative_test_rides_beside_vac_and_ver(ring: KeyRing, verifier: TokenVerifier) -> None:
    tested = NOW - 30 * 3600
    token = ring.signer.sign_status(SUB, "G", 0, 1, NOW, ver=4, negative_test_at=tested)
    claims = verifier.verify(token, NOW)
    assert list(segments(token)[1]) == ["iss", "sub", "st", "pop", "vac", "nt", "ver", "iat", "exp"]
    assert claims == {**status_claims("G", 0, 1), "nt": tested, "ver": 4}
    generic = ring.signer.sign({"sub": SUB, "st": "G", "pop": 0, "vac": 1, "nt": tested, "ver": 4}, NOW)
    assert generic.split(".")[:2] == token.split(".")[:2]
    # No test (or a last test that was not negative): the claim is left out, not sent as null.
    assert "nt" not in verifier.verify(ring.signer.sign_status(SUB, "G", 0, 1, NOW, ver=4), NOW)


# --- one valid spelling: low-S ES256 ----------------------------------------------------------------------


def test_es256_signatures_are_made_low_s(es_key: PrivateKey) -> None:
    signer = TokenSigner(KeyRecord.from_private_key(es_key), ISS, TTL)
    # OpenSSL makes a high S about every other time; 64 tokens all low has odds of 2^-64 by chance.
    assert max(s_of(signer.sign_status(SUB, "G", 0, 0, NOW + n, ver=1)) for n in range(64)) <= P256_ORDER // 2


def test_high_s_signature_is_refused(es_key: PrivateKey) -> None:
    assert isinstance(es_key, ec.EllipticCurvePrivateKey)
    record = KeyRecord.from_private_key(es_key)
    verifier = TokenVerifier(KeyRing([record], TTL, issuer=ISS), ISS, STATUS_TYP)
    token = TokenSigner(record, ISS, TTL).sign_status(SUB, "G", 0, 0, NOW, ver=1)
    flipped = with_s(token, P256_ORDER - s_of(token))
    # n - s is a mathematically valid ECDSA signature of the same input: only the low-S rule refuses it.
    signing_input, _, sig = flipped.rpartition(".")
    r_s = b64url_decode(sig)
    der = encode_dss_signature(int.from_bytes(r_s[:32], "big"), int.from_bytes(r_s[32:], "big"))
    es_key.public_key().verify(der, signing_input.encode(), ec.ECDSA(hashes.SHA256()))
    assert verifier.verify(token, NOW)["st"] == "G"
    with pytest.raises(BadSignature, match="high S"):
        verifier.verify(flipped, NOW)


# --- an independent implementation: PyJWT ------------------------------------------------------------------


def test_pyjwt_verifies_our_tokens(ring: KeyRing, record: KeyRecord, alg: str) -> None:
    now = int(time.time())
    token = ring.signer.sign_status(SUB, "G", 0, 1, now, ver=1)
    key = jwt.PyJWK(record.public_jwk)
    assert jwt.get_unverified_header(token) == {"alg": alg, "kid": record.kid, "typ": "hcs+jwt"}
    claims = jwt.decode(token, key=key, algorithms=[alg], issuer=ISS, options={"require": ["exp", "iat"]})
    assert claims == status_claims("G", 0, 1, now)
    tested = ring.signer.sign_status(SUB, "G", 0, 1, now, ver=1, negative_test_at=now - 3600)
    assert jwt.decode(tested, key=key, algorithms=[alg], issuer=ISS)["nt"] == now - 3600
    tampered = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(tampered, key=key, algorithms=[alg])


def test_pyjwt_reads_our_jwks(ring: KeyRing, record: KeyRecord, alg: str) -> None:
    keyset = jwt.PyJWKSet.from_dict(jwks_document(ring.published(NOW)))
    now = int(time.time())
    token = ring.signer.sign_status(SUB, "R", 1, 1, now, ver=1)
    key = keyset[record.kid]
    assert jwt.decode(token, key=key, algorithms=[alg], issuer=ISS) == status_claims("R", 1, 1, now)


def test_we_verify_pyjwt_tokens(key: PrivateKey, record: KeyRecord, verifier: TokenVerifier, alg: str) -> None:
    token = pyjwt_token(status_claims(), key, record, alg)
    assert verifier.verify(token, NOW) == status_claims()


# --- refusals --------------------------------------------------------------------------------------------


def reason(verifier: TokenVerifier, token: str, now: int = NOW) -> str:
    with pytest.raises(BadToken) as info:
        verifier.verify(token, now)
    return info.value.reason


def test_tampered_payload(token: str, verifier: TokenVerifier) -> None:
    h, _, s = token.split(".")
    forged = f"{h}.{b64(status_claims(st='G'))}.{s}"
    with pytest.raises(BadSignature):
        verifier.verify(forged, NOW)
    assert reason(verifier, forged) == "bad_signature"


def test_tampered_signature(token: str, verifier: TokenVerifier) -> None:
    h, p, s = token.split(".")
    sig = bytearray(b64url_decode(s))
    sig[10] ^= 1
    assert reason(verifier, f"{h}.{p}.{b64url_encode(bytes(sig))}") == "bad_signature"


def test_header_from_another_key(es_key: PrivateKey, ed_key: PrivateKey) -> None:
    es, ed = KeyRecord.from_private_key(es_key), KeyRecord.from_private_key(ed_key, state="pending")
    ring = KeyRing([es, ed], TTL, issuer=ISS)
    verifier = TokenVerifier(ring, ISS, STATUS_TYP)
    es_token = ring.signer.sign_status(SUB, "R", 0, 0, NOW, ver=1)
    ed_token = TokenSigner(KeyRecord.from_private_key(ed_key), ISS, TTL).sign_status(SUB, "G", 0, 0, NOW, ver=1)
    assert verifier.verify(ed_token, NOW)["st"] == "G"  # a pending key already verifies
    _, es_p, es_s = es_token.split(".")
    ed_h, ed_p, ed_s = ed_token.split(".")
    assert reason(verifier, f"{ed_h}.{es_p}.{es_s}") == "bad_signature"
    assert reason(verifier, f"{es_token.split('.')[0]}.{ed_p}.{ed_s}") == "bad_signature"


def test_header_claiming_the_other_algorithm(token: str, verifier: TokenVerifier, record: KeyRecord) -> None:
    _, p, s = token.split(".")
    other = EDDSA if record.alg == ES256 else ES256
    header = b64({"alg": other, "kid": record.kid, "typ": STATUS_TYP})
    assert reason(verifier, f"{header}.{p}.{s}") == "bad_signature"


def test_unknown_kid(token: str) -> None:
    other = KeyRecord.from_private_key(generate_private_key(ES256))
    verifier = TokenVerifier(KeyRing([other], TTL, issuer=ISS), ISS, STATUS_TYP)
    with pytest.raises(UnknownKey):
        verifier.verify(token, NOW)
    assert reason(verifier, token) == "unknown_key"


def test_revoked_key(token: str, record: KeyRecord, key: PrivateKey) -> None:
    revoked = KeyRecord.from_public_jwk(record.public_jwk, state="revoked")
    successor = KeyRecord.from_private_key(generate_private_key(ES256))
    ring = KeyRing([revoked, successor], TTL, issuer=ISS)
    assert reason(TokenVerifier(ring, ISS, STATUS_TYP), token) == "unknown_key"
    assert ring.published(NOW) == [successor]
    # Even a lookup that hands back a revoked key does not get it used.
    assert reason(TokenVerifier(lambda kid: [revoked], ISS, STATUS_TYP), token) == "unknown_key"


def test_expired(token: str, verifier: TokenVerifier) -> None:
    assert verifier.verify(token, NOW + TTL - 1)["exp"] == NOW + TTL
    with pytest.raises(TokenExpired):
        verifier.verify(token, NOW + TTL)
    assert reason(verifier, token, NOW + 10 * TTL) == "expired"


def test_not_yet_valid(token: str, ring: KeyRing) -> None:
    strict = TokenVerifier(ring, ISS, STATUS_TYP)
    with pytest.raises(TokenNotYetValid):
        strict.verify(token, NOW - 1)
    assert strict.verify(token, NOW)["iat"] == NOW
    lenient = TokenVerifier(ring, ISS, STATUS_TYP, leeway_seconds=30)
    assert lenient.verify(token, NOW - 30)["iat"] == NOW
    assert reason(lenient, token, NOW - 31) == "not_yet_valid"


def test_alg_none(token: str, verifier: TokenVerifier, record: KeyRecord) -> None:
    _, p, s = token.split(".")
    for alg in ("none", "None", "NONE"):
        header = b64({"alg": alg, "kid": record.kid, "typ": STATUS_TYP})
        assert reason(verifier, f"{header}.{p}.") == "bad_signature"
        assert reason(verifier, f"{header}.{p}.{s}") == "bad_signature"


def test_hs256_with_public_key_as_secret(token: str, verifier: TokenVerifier, record: KeyRecord) -> None:
    _, p, _ = token.split(".")
    header = b64({"alg": "HS256", "kid": record.kid, "typ": STATUS_TYP})
    pem = record.public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    for secret in (pem, orjson.dumps(record.public_jwk), record.public_jwk["x"].encode()):
        mac = hmac.new(secret, f"{header}.{p}".encode(), hashlib.sha256).digest()
        forged = f"{header}.{p}.{b64url_encode(mac)}"
        assert reason(verifier, forged) == "bad_signature"


def test_wrong_type(ring: KeyRing, verifier: TokenVerifier) -> None:
    other = ring.signer_for("hct+jwt", TTL).sign({"sub": SUB, "code": "X7"}, NOW)
    with pytest.raises(WrongTokenType):
        verifier.verify(other, NOW)
    claims = TokenVerifier(ring, ISS, "hct+jwt").verify(other, NOW)
    assert claims == {"iss": ISS, "sub": SUB, "code": "X7", "iat": NOW, "exp": NOW + TTL}
    status = ring.signer.sign_status(SUB, "G", 0, 0, NOW, ver=1)
    assert reason(TokenVerifier(ring, ISS, "hct+jwt"), status) == "wrong_type"


def test_wrong_issuer(ring: KeyRing, token: str) -> None:
    with pytest.raises(WrongIssuer):
        TokenVerifier(ring, "https://elsewhere.example", STATUS_TYP).verify(token, NOW)


@pytest.mark.parametrize(
    "drop_or_change",
    [
        {"st": None},
        {"sub": None},
        {"pop": None},
        {"exp": None},
        {"iat": None},
        {"iss": None},
        {"st": "B"},
        {"pop": 2},
        {"vac": True},
        {"nt": -1},
        {"nt": "1699990000"},
        {"nt": True},
        {"nt": 1.5},
        {"ver": -1},
        {"ver": "7"},
        {"exp": "soon"},
        {"iat": 1.5},
    ],
)
def test_missing_or_bad_claims(
    key: PrivateKey, record: KeyRecord, verifier: TokenVerifier, alg: str, drop_or_change: dict[str, object]
) -> None:
    claims = status_claims()
    for name, value in drop_or_change.items():
        if value is None:
            del claims[name]
        else:
            claims[name] = value
    assert reason(verifier, pyjwt_token(claims, key, record, alg)) in {"malformed", "wrong_issuer"}


def test_malformed(token: str, verifier: TokenVerifier, record: KeyRecord) -> None:
    h, p, s = token.split(".")
    kid = record.kid
    bad = [
        "",
        "garbage",
        "a.b",
        f"{h}.{p}.{s}.{s}",
        f"{h}.{p}.{s}=",
        f"{h}=.{p}.{s}",
        f"{h}.{p}+.{s}",
        f"{h}.{p}.{s[:-1]}",  # a length no base64 has
        f"é{h}.{p}.{s}",
        f"{b64url_encode(b'not json')}.{p}.{s}",
        f"{b64([1, 2])}.{p}.{s}",
        f"{b64({'alg': record.alg, 'kid': kid})}.{p}.{s}",
        f"{b64({'alg': record.alg, 'kid': kid, 'typ': STATUS_TYP, 'jku': 'https://x'})}.{p}.{s}",
        f"{b64({'alg': record.alg, 'kid': 7, 'typ': STATUS_TYP})}.{p}.{s}",
        f"{h}.{p}.{s}" + "A" * (MAX_TOKEN_LENGTH - len(token) + 1),
        "A" * 5000,
    ]
    for candidate in bad:
        with pytest.raises(MalformedToken):
            verifier.verify(candidate, NOW)
    assert reason(verifier, bytes(token, "ascii")) == "malformed"  # type: ignore[arg-type]


def test_non_canonical_signature_encoding(token: str, verifier: TokenVerifier) -> None:
    h, p, s = token.split(".")
    # 64 bytes leave 4 spare bits in the last character; setting one must not give a second valid token.
    last = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".index(s[-1])
    alias = s[:-1] + "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"[last | 1]
    assert base64.urlsafe_b64decode(alias + "==") == b64url_decode(s)
    assert reason(verifier, f"{h}.{p}.{alias}") == "malformed"


def test_signer_refuses_bad_input(ring: KeyRing) -> None:
    signer = ring.signer
    for args in [("B", 0, 0), ("G", 2, 0), ("G", 0, True), ("", 0, 0)]:
        with pytest.raises(ValueError):
            signer.sign_status(SUB, *args, NOW, ver=1)
    for ver in (-1, True):
        with pytest.raises(ValueError, match="ver"):
            signer.sign_status(SUB, "G", 0, 0, NOW, ver=ver)
    for nt in (-1, True, "1699990000"):
        with pytest.raises(ValueError, match="negative_test_at"):
            signer.sign_status(SUB, "G", 0, 0, NOW, ver=1, negative_test_at=nt)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="exp"):
        signer.sign({"sub": SUB, "exp": NOW + 10**9}, NOW)


def test_signer_needs_an_active_private_key(record: KeyRecord) -> None:
    with pytest.raises(ValueError, match="no private key"):
        TokenSigner(KeyRecord.from_public_jwk(record.public_jwk, "active"), ISS, TTL)
    with pytest.raises(ValueError, match="retired"):
        TokenSigner(KeyRecord.from_private_key(record.private_key, "retired", NOW), ISS, TTL)  # type: ignore[arg-type]


# --- key ring ------------------------------------------------------------------------------------------


def colliding(key: PrivateKey, kid: str, state: str = "active", retired_at: int | None = None) -> KeyRecord:
    base = KeyRecord.from_private_key(key)
    jwk = {k: v for k, v in base.public_jwk.items() if k != "kid"}
    return KeyRecord(kid, base.thumbprint, base.alg, jwk, state, retired_at, key)


def test_two_keys_sharing_a_kid(es_key: PrivateKey, ed_key: PrivateKey) -> None:
    third = generate_private_key(ES256)
    a, b, c = colliding(es_key, "samekid"), colliding(ed_key, "samekid"), colliding(third, "samekid")
    ring = KeyRing([colliding(es_key, "samekid", "retired", NOW), b, c], TTL, issuer=ISS, now=Clock(NOW))
    assert len(ring.candidates("samekid")) == 3
    verifier = TokenVerifier(ring, ISS, STATUS_TYP)
    for record in (a, b, c):
        token = TokenSigner(record, ISS, TTL).sign_status(SUB, "G", 0, 0, NOW, ver=1)
        assert segments(token)[0]["kid"] == "samekid"
        assert verifier.verify(token, NOW)["sub"] == SUB
    stranger = colliding(generate_private_key(ES256), "samekid")
    assert reason(verifier, TokenSigner(stranger, ISS, TTL).sign_status(SUB, "G", 0, 0, NOW, ver=1)) == "bad_signature"


def test_rotation(es_key: PrivateKey, ed_key: PrivateKey) -> None:
    retired_at = NOW + 100
    old_active = KeyRecord.from_private_key(es_key)
    token = TokenSigner(old_active, ISS, TTL).sign_status(SUB, "Y", 0, 0, retired_at - 1, ver=1)

    clock = Clock(retired_at)
    old = KeyRecord.from_public_jwk(old_active.public_jwk, "retired", retired_at)
    new = KeyRecord.from_private_key(ed_key)
    ring = KeyRing([old, new], TTL, issuer=ISS, now=clock)
    verifier = TokenVerifier(ring, ISS, STATUS_TYP)
    assert ring.signer.kid == new.kid
    assert verifier.verify(token, retired_at)["st"] == "Y"
    assert verifier.verify(token, retired_at + TTL - 2)["st"] == "Y"
    assert ring.published(retired_at + TTL) == [old, new]
    assert ring.published(retired_at + TTL + 1) == [new]
    assert [k["kid"] for k in jwks_document(ring.published(retired_at + TTL + 1))["keys"]] == [new.kid]

    # Past the window the old key no longer verifies: if it leaks later, what it signs is refused.
    clock.now = retired_at + TTL
    leaked = TokenSigner(old_active, ISS, TTL).sign_status(SUB, "G", 0, 0, int(clock.now), ver=1)
    assert verifier.verify(leaked, int(clock.now))["st"] == "G"
    clock.now += 1
    assert reason(verifier, leaked, int(clock.now)) == "unknown_key"
    clock.now -= 1
    assert ring.published() == [old, new]


@pytest.mark.parametrize(
    ("states", "message"),
    [
        ([], "found 0"),
        (["pending", "retired"], "found 0"),
        (["active", "active"], "found 2"),
    ],
)
def test_ring_without_a_single_signer(states: list[str], message: str) -> None:
    records = [KeyRecord.from_private_key(generate_private_key(), s, NOW) for s in states]
    ring = KeyRing(records, TTL, issuer=ISS)
    with pytest.raises(NoSigningKey, match=message):
        _ = ring.signer


def test_ring_with_active_public_key_only_verifies(record: KeyRecord, token: str) -> None:
    ring = KeyRing([KeyRecord.from_public_jwk(record.public_jwk, "active")], TTL, issuer=ISS)
    with pytest.raises(NoSigningKey, match="no private key"):
        _ = ring.signer
    assert TokenVerifier(ring, ISS, STATUS_TYP).verify(token, NOW)["st"] == "Y"


def test_ring_refuses_the_same_key_twice(record: KeyRecord) -> None:
    with pytest.raises(ValueError, match="twice"):
        KeyRing([record, KeyRecord.from_public_jwk(record.public_jwk, "retired", NOW)], TTL, issuer=ISS)


def test_signer_for_other_tokens_cannot_outlive_publication(ring: KeyRing) -> None:
    with pytest.raises(ValueError, match="outlive"):
        ring.signer_for("hct+jwt", TTL + 1)


# --- JWKS ----------------------------------------------------------------------------------------------


def test_jwks_document(es_key: PrivateKey, ed_key: PrivateKey) -> None:
    assert isinstance(es_key, ec.EllipticCurvePrivateKey)
    es = KeyRecord.from_private_key(es_key)
    ed = KeyRecord.from_private_key(ed_key, "pending")
    revoked = KeyRecord.from_private_key(generate_private_key(), "revoked")
    numbers = es_key.public_key().public_numbers()
    ed_raw = ed_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    expected = {
        "keys": [
            {
                "kid": es.thumbprint[:8],
                "alg": "ES256",
                "use": "sig",
                "kty": "EC",
                "crv": "P-256",
                "x": b64url_encode(numbers.x.to_bytes(32, "big")),
                "y": b64url_encode(numbers.y.to_bytes(32, "big")),
            },
            {
                "kid": ed.thumbprint[:8],
                "alg": "EdDSA",
                "use": "sig",
                "kty": "OKP",
                "crv": "Ed25519",
                "x": b64url_encode(ed_raw),
            },
        ]
    }
    assert jwks_document([es, ed, revoked]) == expected
    assert orjson.loads(jwks_bytes([es, ed])) == expected
    assert list(expected["keys"][0]) == list(jwks_document([es])["keys"][0])


def test_public_jwk_cannot_be_changed_through_the_callers_dict(record: KeyRecord) -> None:
    jwk = dict(record.public_jwk)
    copy = KeyRecord.from_public_jwk(jwk, "active")
    jwk["x"] = "tampered"
    assert copy.public_jwk == record.public_jwk
