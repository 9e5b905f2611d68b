"""Token handles: a different `sub` in every token, opened only with the service's key and the token's iat."""

from __future__ import annotations

import os

import pytest

from signing import ES256, BadHandle, KeyRecord, TokenSigner, generate_private_key
from signing.encoding import b64url_decode, b64url_encode
from signing.handles import HandleCipher
from signing.qr import module_matrix

NOW = 1_700_000_000
PSEUDONYM = bytes(range(16))


@pytest.fixture(scope="module")
def cipher() -> HandleCipher:
    return HandleCipher(os.urandom(32))


def test_round_trip(cipher: HandleCipher) -> None:
    handle = cipher.seal(PSEUDONYM, NOW)
    assert len(handle) == 59
    assert cipher.open(handle, NOW) == PSEUDONYM


def test_handles_of_one_person_share_nothing(cipher: HandleCipher) -> None:
    handles = [b64url_decode(cipher.seal(PSEUDONYM, NOW)) for _ in range(1000)]
    # Nonce, ciphertext and tag all differ from token to token: nothing for a scanner to link.
    for start, end in ((0, 12), (12, 28), (28, 44)):
        assert len({h[start:end] for h in handles}) == len(handles)
    assert all(PSEUDONYM not in h for h in handles)


@pytest.mark.parametrize("key_bytes", [16, 24, 32])
def test_aes_key_sizes(key_bytes: int) -> None:
    cipher = HandleCipher(os.urandom(key_bytes))
    assert cipher.open(cipher.seal(PSEUDONYM, NOW), NOW) == PSEUDONYM


@pytest.mark.parametrize("key_bytes", [0, 15, 20, 33, 64])
def test_other_key_sizes_are_refused(key_bytes: int) -> None:
    with pytest.raises(ValueError, match="16, 24 or 32 bytes"):
        HandleCipher(bytes(key_bytes))


def test_repr_shows_no_key() -> None:
    key = bytes(range(32))
    assert key.hex() not in repr(HandleCipher(key)) and "\\x00\\x01" not in repr(HandleCipher(key))


def opens(cipher: HandleCipher, handle: str, iat: int = NOW) -> str:
    with pytest.raises(BadHandle) as info:
        cipher.open(handle, iat)
    assert info.value.reason == "bad_handle"
    return str(info.value)


def test_refused_handles(cipher: HandleCipher) -> None:
    handle = cipher.seal(PSEUDONYM, NOW)
    raw = b64url_decode(handle)
    assert "this service's key" in opens(HandleCipher(os.urandom(32)), handle)  # another deployment's key
    assert "this service's key" in opens(cipher, handle, NOW + 1)  # moved into a token of another time
    for at in (0, 12, 30, 43):  # nonce, ciphertext, tag
        damaged = bytearray(raw)
        damaged[at] ^= 0x01
        assert "this service's key" in opens(cipher, b64url_encode(bytes(damaged)))
    assert "this service's key" in opens(cipher, b64url_encode(raw[:12] + raw[13:]))
    assert "this service's key" in opens(cipher, handle, 2**70)  # an iat no handle was made for
    assert "too short" in opens(cipher, b64url_encode(raw[:28]))
    assert "too short" in opens(cipher, b64url_encode(PSEUDONYM))  # the old `sub`: a bare pseudonym
    assert "base64url" in opens(cipher, handle[:-1] + "+")
    assert "too long" in opens(cipher, "A" * 200)


def qr_version(token: str) -> int:
    side = len(module_matrix(token)) - 8  # without the quiet zone of 4 modules each side
    return (side - 17) // 4


def test_a_status_token_with_a_handle_fits_qr_version_15_at_m(cipher: HandleCipher) -> None:
    signer = TokenSigner(KeyRecord.from_private_key(generate_private_key(ES256)), "healthcode", 300)
    # The largest claims the service makes for years to come: ten-digit times, a seven-digit version.
    sub = cipher.seal(PSEUDONYM, 4_000_000_000)
    token = signer.sign_status(sub, "Y", 1, 1, 4_000_000_000, ver=9_999_999, negative_test_at=3_999_999_999)
    assert len(token) <= 390, len(token)
    assert qr_version(token) <= 15
