"""Signing-key life cycle through app.keys.lifecycle, observed through the running app: JWKS, /v1/verify and PyJWT."""

from __future__ import annotations

import stat
import time
from pathlib import Path
from typing import Any

import asyncpg
import jwt
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from app.http.appkeys import HANDLES, PG, SIGNER
from app.keys import lifecycle as keys
from app.keys.signer import SignerState
from app.settings import Settings, SettingsError
from signing.encoding import b64url_encode
from tests.support import PKCS8_PEM_HEADER, bearer

Api = TestClient[web.Request, web.Application]
SUB = b64url_encode(bytes(range(16)))


async def refresh(api: Api) -> None:
    await api.app[SIGNER].refresh(api.app[PG])


def signing_kid(api: Api) -> str:
    signer = api.app[SIGNER].signer
    assert signer is not None
    return signer.kid


def sign(api: Api, st: str = "G") -> str:
    signer = api.app[SIGNER].signer
    assert signer is not None
    now = int(time.time())
    return signer.sign_status(api.app[HANDLES].seal(bytes(range(16)), now), st, 0, 1, now, ver=1)


async def published(api: Api) -> dict[str, dict[str, Any]]:
    r = await api.get("/.well-known/jwks.json")
    assert r.status == 200, await r.text()
    return {k["kid"]: k for k in orjson.loads(await r.read())["keys"]}


async def verify(api: Api, scanner: str, token: str) -> tuple[bool, str]:
    r = await api.post("/v1/verify", json={"token": token, "checkpoint": "gate"}, headers=bearer(scanner))
    assert r.status == 200, await r.text()
    body = await r.json()
    return body["valid"], body["reason"]


async def pyjwt_accepts(api: Api, token: str) -> bool:
    """Whether an independent JOSE library verifies the token with what the JWKS publishes now."""
    key = (await published(api)).get(jwt.get_unverified_header(token)["kid"])
    if key is None:
        return False
    jwt.decode(token, key=jwt.PyJWK(key), algorithms=["ES256", "EdDSA"], issuer="healthcode")
    return True


def kid(thumbprint: str) -> str:
    return thumbprint[:8]


async def age_retirement(db: asyncpg.Connection, thumbprint: str, seconds: int) -> None:
    """Move a key's retirement into the past, as if `seconds` had gone by."""
    await db.execute(
        "UPDATE signing_keys SET retired_at = retired_at - make_interval(secs => $2) WHERE thumbprint = $1",
        thumbprint,
        float(seconds),
    )


async def test_rotation_keeps_old_tokens_valid_until_they_expire(
    api: Api, db: asyncpg.Connection, settings: Settings, signing_key: str, client_keys: dict[str, str]
) -> None:
    scanner = client_keys["scanner"]
    old_token = sign(api)

    # A new key is published before it signs, so scanners have it in time.
    new = await keys.new_key(db, settings.keys_dir)
    await refresh(api)
    assert set(await published(api)) == {kid(signing_key), kid(new)}
    assert signing_kid(api) == kid(signing_key)

    await keys.activate(db, new)
    await refresh(api)
    assert signing_kid(api) == kid(new)
    new_token = sign(api)
    assert jwt.get_unverified_header(new_token)["kid"] == kid(new)
    states = {r["thumbprint"]: r["state"] for r in await keys.list_keys(db)}
    assert states == {signing_key: "retired", new: "active"}

    # The retired key still verifies, here and in PyJWT, and stays published.
    assert await verify(api, scanner, old_token) == (True, "ok")
    assert await verify(api, scanner, new_token) == (True, "ok")
    assert set(await published(api)) == {kid(signing_key), kid(new)}
    assert await pyjwt_accepts(api, old_token)
    assert await pyjwt_accepts(api, new_token)

    # Just inside the window (retired ttl - 5 s ago) it still does...
    await age_retirement(db, signing_key, settings.token_ttl_seconds - 5)
    await refresh(api)
    assert await verify(api, scanner, old_token) == (True, "ok")
    assert kid(signing_key) in await published(api)

    # ...and once every token it signed has expired, it neither verifies nor is published.
    await age_retirement(db, signing_key, 10)
    await refresh(api)
    assert await verify(api, scanner, old_token) == (False, "unknown_key")
    assert set(await published(api)) == {kid(new)}
    assert not await pyjwt_accepts(api, old_token)
    assert await verify(api, scanner, new_token) == (True, "ok")


async def test_a_revoked_key_is_refused_at_once_and_unpublished(
    api: Api, db: asyncpg.Connection, settings: Settings, signing_key: str, client_keys: dict[str, str]
) -> None:
    scanner = client_keys["scanner"]
    compromised_token = sign(api, "R")
    replacement = await keys.activate(db, await keys.new_key(db, settings.keys_dir))
    await refresh(api)
    assert await verify(api, scanner, compromised_token) == (True, "ok")  # retired, still in its window

    first = await api.get("/.well-known/jwks.json")
    await keys.revoke(db, kid(signing_key))
    await refresh(api)
    assert await verify(api, scanner, compromised_token) == (False, "unknown_key")
    assert set(await published(api)) == {kid(replacement)}
    assert not await pyjwt_accepts(api, compromised_token)
    # The document changed, so a cached ETag no longer matches.
    again = await api.get("/.well-known/jwks.json", headers={"If-None-Match": first.headers["ETag"]})
    assert again.status == 200
    assert [r["state"] for r in await keys.list_keys(db)] == ["revoked", "active"]


async def test_revoking_the_only_active_key_refuses_its_tokens_and_stops_signing(
    api: Api, db: asyncpg.Connection, signing_key: str, client_keys: dict[str, str]
) -> None:
    token = sign(api)
    await keys.revoke(db, kid(signing_key))
    await refresh(api)

    assert await verify(api, client_keys["scanner"], token) == (False, "unknown_key")
    assert await published(api) == {}
    r = await api.post(
        "/v1/status",
        json={"id_type": "resident", "id_number": "11010519491231002X"},
        headers=bearer(client_keys["citizen-backend"]),
    )
    assert r.status == 503, await r.text()
    assert r.headers["Retry-After"] == "30"
    body = await r.json(content_type="application/problem+json")
    assert (body["type"], body["reason"]) == ("/problems/signing-unavailable", "no_active_key")


async def test_an_eddsa_key_signs_tokens_pyjwt_verifies(
    api: Api, db: asyncpg.Connection, settings: Settings, client_keys: dict[str, str]
) -> None:
    ed = await keys.activate(db, await keys.new_key(db, settings.keys_dir, "EdDSA"))
    await refresh(api)
    token = sign(api, "Y")
    assert jwt.get_unverified_header(token) == {"alg": "EdDSA", "kid": kid(ed), "typ": "hcs+jwt"}
    jwk = (await published(api))[kid(ed)]
    assert (jwk["kty"], jwk["crv"], jwk["alg"], jwk["use"]) == ("OKP", "Ed25519", "EdDSA", "sig")
    assert await pyjwt_accepts(api, token)
    assert await verify(api, client_keys["scanner"], token) == (True, "ok")


async def test_new_key_writes_only_the_private_half_to_a_private_file(
    db: asyncpg.Connection, settings: Settings
) -> None:
    thumbprint = await keys.new_key(db, settings.keys_dir)
    path = keys.private_key_path(settings.keys_dir, thumbprint)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(PKCS8_PEM_HEADER)
    row = await db.fetchrow("SELECT kid, alg, state, public_jwk FROM signing_keys WHERE thumbprint = $1", thumbprint)
    assert row is not None
    assert (row["kid"], row["alg"], row["state"]) == (kid(thumbprint), "ES256", "pending")
    assert "d" not in row["public_jwk"]
    assert (
        await db.fetchval(
            "SELECT count(*) FROM audit_log WHERE action = 'key.new' AND detail->>'thumbprint' = $1", thumbprint
        )
        == 1
    )


async def test_life_cycle_rules(db: asyncpg.Connection, settings: Settings, signing_key: str) -> None:
    pending = await keys.new_key(db, settings.keys_dir)
    assert await keys.resolve(db, kid(pending)) == pending
    assert await keys.resolve(db, pending[:12]) == pending
    with pytest.raises(keys.KeyError_, match="matches 0 keys"):
        await keys.resolve(db, "no-such-key")
    with pytest.raises(keys.KeyError_, match="matches 2 keys"):
        await keys.resolve(db, "")

    assert await keys.retire(db, pending) == pending
    with pytest.raises(keys.KeyError_, match="only a pending or active key can be retired"):
        await keys.retire(db, pending)
    await keys.revoke(db, pending)
    with pytest.raises(keys.KeyError_, match="a revoked key cannot be activated"):
        await keys.activate(db, pending)
    # Still exactly one active key: the one the fixture made.
    states = {r["thumbprint"]: r["state"] for r in await keys.list_keys(db)}
    assert states == {signing_key: "active", pending: "revoked"}
    actions = await db.fetch("SELECT action FROM audit_log WHERE detail->>'thumbprint' = $1 ORDER BY id", pending)
    assert [r["action"] for r in actions] == ["key.new", "key.retire", "key.revoke"]


async def test_activating_again_keeps_one_active_key(
    db: asyncpg.Connection, settings: Settings, signing_key: str
) -> None:
    second = await keys.activate(db, await keys.new_key(db, settings.keys_dir))
    await keys.activate(db, signing_key)  # back to the first: the second is retired, the first un-retired
    rows = {r["thumbprint"]: (r["state"], r["retired_at"]) for r in await keys.list_keys(db)}
    assert rows[signing_key] == ("active", None)
    assert rows[second][0] == "retired" and rows[second][1] is not None


async def test_the_active_private_key_can_come_from_the_environment(
    db: asyncpg.Connection, settings: Settings, tmp_path: Path
) -> None:
    thumbprint = await keys.activate(db, await keys.new_key(db, tmp_path / "made-elsewhere"))
    key_file = keys.private_key_path(tmp_path / "made-elsewhere", thumbprint)
    pem = key_file.read_bytes()
    key_file.unlink()  # only the environment holds it now
    env = {
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "HEALTHCODE_PEPPER": settings.pepper.hex(),
        "HEALTHCODE_HANDLE_KEY": settings.handle_key.hex(),
        "HEALTHCODE_KEYS_DIR": str(settings.keys_dir),
        "HEALTHCODE_SIGNING_KEYS": "\n" + pem.decode() + "\n",
    }

    state = SignerState(settings.keys_dir, "healthcode", 300, Settings.from_env(env).signing_key_pems)
    await state.refresh(db)

    token = state.status_signer().sign_status(SUB, "G", 0, 1, int(time.time()), ver=1)
    assert jwt.get_unverified_header(token)["kid"] == kid(thumbprint)
    assert state.verifier is not None
    assert state.verifier.verify(token, int(time.time()))["st"] == "G"


def test_signing_keys_in_the_environment_must_be_pem() -> None:
    env = {
        "DATABASE_URL": "x",
        "REDIS_URL": "x",
        "HEALTHCODE_PEPPER": "00" * 16,
        "HEALTHCODE_KEYS_DIR": "k",
        "HEALTHCODE_HANDLE_KEY": "00" * 16,
    }
    with pytest.raises(SettingsError, match="HEALTHCODE_SIGNING_KEYS must hold PEM private keys"):
        Settings.from_env({**env, "HEALTHCODE_SIGNING_KEYS": "not a key"})
