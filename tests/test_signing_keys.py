"""Keys, key files, JWK thumbprints, key records, base64url and QR images."""

from __future__ import annotations

import os
import stat
import struct
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

import signing.keys
import signing.records
from signing import (
    EDDSA,
    ES256,
    STATUS_TYP,
    KeyRecord,
    KeyRing,
    TokenVerifier,
    generate_private_key,
    load_private_key,
    save_private_key,
)
from signing.encoding import b64url_decode, b64url_encode
from signing.jws import _raw_signer
from signing.keys import jwk_thumbprint, public_jwk, public_key_from_jwk, short_kid
from signing.qr import BORDER, BOX_SIZE, PNG_MAGIC, module_matrix, render_png, render_svg
from tests.support import PKCS8_PEM_HEADER

# RFC 8037 appendix A: an Ed25519 key, its thumbprint and a signature (Ed25519 is deterministic).
RFC8037_D = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"
RFC8037_X = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
RFC8037_THUMBPRINT = "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
RFC8037_SIGNING_INPUT = b"eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc"
RFC8037_SIGNATURE = "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"


def rfc8037_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.from_private_bytes(b64url_decode(RFC8037_D))


def test_rfc8037_vectors() -> None:
    key = rfc8037_key()
    jwk = public_jwk(key)
    assert jwk == {
        "kid": RFC8037_THUMBPRINT[:8],
        "alg": "EdDSA",
        "use": "sig",
        "crv": "Ed25519",
        "kty": "OKP",
        "x": RFC8037_X,
    }
    assert jwk_thumbprint(jwk) == RFC8037_THUMBPRINT
    assert short_kid(RFC8037_THUMBPRINT) == "kPrK_qmx"
    assert b64url_encode(_raw_signer(key)(RFC8037_SIGNING_INPUT)) == RFC8037_SIGNATURE


def test_thumbprint_uses_required_members_only() -> None:
    key = generate_private_key(ES256)
    jwk = public_jwk(key)
    bare = {k: jwk[k] for k in ("kty", "crv", "x", "y")}
    assert jwk_thumbprint(jwk) == jwk_thumbprint(bare) == jwk_thumbprint(dict(reversed(bare.items())))
    assert jwk["kid"] == jwk_thumbprint(bare)[:8]
    with pytest.raises(ValueError, match="'y'"):
        jwk_thumbprint({"kty": "EC", "crv": "P-256", "x": jwk["x"]})
    with pytest.raises(ValueError, match="kty"):
        jwk_thumbprint({"kty": "RSA", "n": "AQAB", "e": "AQAB"})


@pytest.mark.parametrize("alg", [ES256, EDDSA])
def test_save_and_load(tmp_path: Path, alg: str) -> None:
    key = generate_private_key(alg)
    path = tmp_path / "signing.pem"
    save_private_key(key, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(PKCS8_PEM_HEADER)  # PKCS#8, unencrypted
    loaded = load_private_key(path)
    assert public_jwk(loaded) == public_jwk(key)
    assert os.listdir(tmp_path) == ["signing.pem"]  # no temporary file left behind


def test_save_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "signing.pem"
    save_private_key(generate_private_key(), path)
    before = path.read_bytes()
    with pytest.raises(FileExistsError):
        save_private_key(generate_private_key(), path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["signing.pem"]


def test_load_refuses_other_key_types(tmp_path: Path) -> None:
    encoding, fmt = serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8
    others = {
        "rsa.pem": rsa.generate_private_key(65537, 2048).private_bytes(encoding, fmt, serialization.NoEncryption()),
        "p384.pem": ec.generate_private_key(ec.SECP384R1()).private_bytes(encoding, fmt, serialization.NoEncryption()),
    }
    for name, pem in others.items():
        (tmp_path / name).write_bytes(pem)
        with pytest.raises(ValueError, match="unsupported"):
            load_private_key(tmp_path / name)
    with pytest.raises(ValueError, match="unsupported algorithm"):
        generate_private_key("RS256")


def test_public_key_from_jwk_checks_the_point() -> None:
    jwk = public_jwk(generate_private_key(ES256))
    public = public_key_from_jwk(jwk)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert public.public_numbers().x == int.from_bytes(b64url_decode(jwk["x"]), "big")
    y = bytearray(b64url_decode(jwk["y"]))
    y[-1] ^= 1
    with pytest.raises(ValueError):
        public_key_from_jwk({**jwk, "y": b64url_encode(bytes(y))})  # not on the curve
    with pytest.raises(ValueError):
        public_key_from_jwk({**jwk, "x": jwk["x"][:-2]})
    with pytest.raises(ValueError):
        public_key_from_jwk({"kty": "OKP", "crv": "Ed448", "x": RFC8037_X})


def test_key_record_checks_its_metadata() -> None:
    key = generate_private_key(ES256)
    good = KeyRecord.from_private_key(key)
    other = KeyRecord.from_private_key(generate_private_key(EDDSA))
    fields = {
        "kid": good.kid,
        "thumbprint": good.thumbprint,
        "alg": good.alg,
        "public_jwk": good.public_jwk,
        "state": "active",
    }
    cases: list[tuple[dict[str, object], str]] = [
        ({"thumbprint": other.thumbprint}, "thumbprint"),
        ({"alg": "EdDSA"}, "JWK is a ES256 key"),
        ({"alg": "HS256"}, "unsupported algorithm"),
        ({"state": "retired"}, "retired_at"),
        ({"state": "deleted"}, "unknown state"),
        ({"public_jwk": {**good.public_jwk, "d": "secret"}}, "unexpected JWK members"),
        ({"public_jwk": {**good.public_jwk, "use": "enc"}}, "JWK use"),
        ({"kid": "other"}, "JWK kid"),
        ({"private_key": generate_private_key(ES256)}, "does not match"),
    ]
    for change, message in cases:
        with pytest.raises(ValueError, match=message):
            KeyRecord(**{**fields, **change})  # type: ignore[arg-type]
    assert KeyRecord(**fields).public_jwk == good.public_jwk  # type: ignore[arg-type]
    assert "private_key" not in repr(good)


def test_public_key_is_built_once(monkeypatch: pytest.MonkeyPatch) -> None:
    record = KeyRecord.from_private_key(generate_private_key(ES256))
    ring = KeyRing([record], 60, issuer="iss")
    token = ring.signer.sign_status("c3Vi", "G", 0, 0, 1000, ver=1)

    def refuse(jwk: dict[str, str]) -> None:
        raise AssertionError("public key rebuilt")

    monkeypatch.setattr(signing.records, "public_key_from_jwk", refuse)
    monkeypatch.setattr(signing.keys, "public_key_from_jwk", refuse)
    verifier = TokenVerifier(ring, "iss", STATUS_TYP)
    for _ in range(3):
        assert verifier.verify(token, 1000)["st"] == "G"


def test_base64url_is_strict() -> None:
    assert b64url_encode(b"\xfb\xff") == "-_8"
    assert b64url_decode("-_8") == b"\xfb\xff"
    for bad in ["-_8=", "+/8", "A", "ab cd", "-_9", "é"]:
        with pytest.raises(ValueError):
            b64url_decode(bad)


TOKEN = (
    "eyJhbGciOiJFUzI1NiIsImtpZCI6ImNpZWNiTXpqIiwidHlwIjoiaGNzK2p3dCJ9."
    "eyJpc3MiOiJodHRwczovL2hlYWx0aGNvZGUuZXhhbXBsZSIsInN1YiI6IkFBRUNBd1FGQmdjSUNRb0xEQTBPRHciLCJzdCI6IlkiLCJwb3Ai"
    "OjEsInZhYyI6MCwiaWF0IjoxNzAwMDAwMDAwLCJleHAiOjE3MDAwMDAzMDB9."
    "6SYP-BWZXl4TC9LEzcuR5Z38eU6QEO-SsRzRkeMFNw7dJCmNVwVD8mzhQ7y34S6-gjwm4by6hS7DCR0P0N_wWg"
)


def read_png(data: bytes) -> tuple[int, int, bytes]:
    """Parse the chunks, check every CRC, return width, height and the decompressed scanlines."""
    assert data.startswith(PNG_MAGIC)
    pos, chunks = len(PNG_MAGIC), []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, kind
        chunks.append((kind, body))
        pos += 12 + length
    assert [k for k, _ in chunks] == [b"IHDR", b"IDAT", b"IEND"]
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, colour, interlace) == (1, 0, 0)
    return width, height, zlib.decompress(chunks[1][1])


def test_png_holds_the_code() -> None:
    matrix = module_matrix(TOKEN)
    width, height, raw = read_png(render_png(TOKEN))
    assert width == height == len(matrix) * BOX_SIZE
    assert not any(matrix[0]) and not any(row[BORDER - 1] for row in matrix)  # quiet zone
    stride = 1 + (width + 7) // 8
    assert len(raw) == stride * height
    for y in range(height):
        line = raw[y * stride : (y + 1) * stride]
        assert line[0] == 0
        for x in range(width):
            white = (line[1 + x // 8] >> (7 - x % 8)) & 1
            assert white != matrix[y // BOX_SIZE][x // BOX_SIZE], (x, y)


def test_svg_is_xml() -> None:
    svg = render_svg(TOKEN)
    assert svg.startswith(b"<?xml")
    root = ET.fromstring(svg)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    paths = root.findall("{http://www.w3.org/2000/svg}path")
    assert len(paths) == 1 and len(paths[0].get("d", "")) > 1000
    side = len(module_matrix(TOKEN)) * BOX_SIZE / 10
    assert root.get("viewBox") == f"0 0 {side:g} {side:g}"
