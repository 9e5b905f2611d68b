"""Settings: the pepper file is read the same way on every host, and no secret shows in a repr."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from app.settings import Settings, SettingsError
from cache.rate_limit import Rate

SECRET = b"0123456789abcdef-shared-secret"
# A key made for this run, never one written in the repository.
PEM = (
    ec.generate_private_key(ec.SECP256R1())
    .private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    .decode()
)
PEM_BODY = PEM.splitlines()[1]  # a line of the key's own base64, which a repr must never show


def env(**extra: str) -> dict[str, str]:
    return {
        "DATABASE_URL": "postgresql://healthcode:db-password@db.internal:5432/healthcode",
        "REDIS_URL": "redis://:redis-password@cache.internal:6379/0",
        "HEALTHCODE_KEYS_DIR": "/keys",
        "HEALTHCODE_HANDLE_KEY": "cd" * 32,
        **extra,
    }


@pytest.mark.parametrize("ending", [b"", b"\n", b"\r\n"])
def test_a_pepper_file_with_or_without_a_final_line_ending_gives_the_same_pepper(tmp_path: Path, ending: bytes) -> None:
    path = tmp_path / "pepper"
    path.write_bytes(SECRET + ending)
    assert Settings.from_env(env(HEALTHCODE_PEPPER_FILE=str(path))).pepper == SECRET
    # The same secret given in hex on another host: the same pseudonyms.
    assert Settings.from_env(env(HEALTHCODE_PEPPER=SECRET.hex())).pepper == SECRET


def test_only_one_final_line_ending_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "pepper"
    path.write_bytes(b" " + SECRET + b"\n\n")
    assert Settings.from_env(env(HEALTHCODE_PEPPER_FILE=str(path))).pepper == b" " + SECRET + b"\n"


def test_the_repr_shows_no_pepper_private_key_or_password() -> None:
    settings = Settings.from_env(env(HEALTHCODE_PEPPER=SECRET.hex(), HEALTHCODE_SIGNING_KEYS=PEM))
    assert settings.signing_key_pems  # the key was read...
    for text in (repr(settings), str(settings)):
        for secret in (SECRET.hex(), repr(SECRET), PEM_BODY, "db-password", "redis-password"):
            assert secret not in text
        # ...and the repr still says what is configured.
        assert "pepper" not in text and "handle_key" not in text
        assert "signing_key_pems=<1 private keys>" in text
        assert "'postgresql://healthcode:***@db.internal:5432/healthcode'" in text
        assert "token_ttl_seconds=300" in text


def test_rate_limits_per_kind_come_from_the_environment() -> None:
    settings = Settings.from_env(
        env(HEALTHCODE_PEPPER=SECRET.hex(), HEALTHCODE_RATE_LIMITS="citizen-backend.status=2000/4000, scanner.verify=5")
    )
    assert settings.rate_limits == (("citizen-backend", "status", Rate(2000, 4000)), ("scanner", "verify", Rate(5, 5)))
    for wrong, message in (
        ("scanner.status=5", "KIND.BUCKET one of"),
        ("citizen-backend.status=-1", "per_second > 0"),
        ("citizen-backend.status", "expected KIND.BUCKET=RATE"),
    ):
        with pytest.raises(SettingsError, match=f"HEALTHCODE_RATE_LIMITS: .*{message}"):
            Settings.from_env(env(HEALTHCODE_PEPPER=SECRET.hex(), HEALTHCODE_RATE_LIMITS=wrong))


def test_a_cluster_url_is_taken_with_its_seeds_and_its_password_hidden() -> None:
    url = "redis+cluster://:redis-password@10.0.0.11:6379,10.0.0.12:6379"
    settings = Settings.from_env(env(HEALTHCODE_PEPPER=SECRET.hex(), REDIS_URL=url))
    assert settings.redis_url == url
    assert "redis-password" not in repr(settings)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+cluster://10.0.0.11:6379,10.0.0.12", "is not host:port"),
        ("redis+cluster://10.0.0.11:6379/3", "database 0 only"),
    ],
)
def test_a_wrong_cluster_url_is_named(url: str, message: str) -> None:
    with pytest.raises(SettingsError, match=f"REDIS_URL: .*{message}"):
        Settings.from_env(env(HEALTHCODE_PEPPER=SECRET.hex(), REDIS_URL=url))


def test_cache_layout_settings() -> None:
    pepper = {"HEALTHCODE_PEPPER": SECRET.hex()}
    settings = Settings.from_env(env(HEALTHCODE_CACHE_BUCKET_BITS="19", HEALTHCODE_CACHE_LEGACY_KEYS="1", **pepper))
    assert (settings.cache_bucket_bits, settings.cache_legacy_keys) == (19, True)
    default = Settings.from_env(env(**pepper))
    assert (default.cache_bucket_bits, default.cache_legacy_keys) == (16, False)
    with pytest.raises(SettingsError, match="HEALTHCODE_CACHE_BUCKET_BITS must be between 1 and 24"):
        Settings.from_env(env(HEALTHCODE_CACHE_BUCKET_BITS="25", **pepper))
