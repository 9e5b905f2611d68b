"""Keys stay consistent across hosts: two apps on one database, each with a key folder of its own.

A host signs only with the key Postgres says is active and only if it holds its private half; otherwise
it refuses to sign (503 with Retry-After) and says why in /readyz and /metrics, while its JWKS and its
verification keys keep following Postgres (new keys published, revocations applied).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import asyncpg
from aiohttp import web
from aiohttp.test_utils import TestClient

from app.http.appkeys import HANDLES, PG, SIGNER
from app.keys import lifecycle as keys
from app.settings import Settings
from tests.conftest import AppFactory
from tests.support import bearer
from tests.test_openapi import assert_documented

Api = TestClient[web.Request, web.Application]
PROBLEM = "application/problem+json"
NUMBER = "11010519491231002X"


async def refresh(*apis: Api) -> None:
    for api in apis:
        await api.app[SIGNER].refresh(api.app[PG])


async def jwks_kids(api: Api) -> set[str]:
    r = await api.get("/.well-known/jwks.json")
    assert r.status == 200, await r.text()
    return {k["kid"] for k in (await r.json(content_type="application/jwk-set+json"))["keys"]}


async def metric(api: Api, line_start: str) -> str:
    text = await (await api.get("/metrics")).text()
    (line,) = [line for line in text.splitlines() if line.startswith(line_start + " ")]
    return line.rsplit(" ", 1)[1]


def copy_key(thumbprint: str, source: Path, target: Path) -> None:
    target.mkdir(mode=0o700, exist_ok=True)
    shutil.copy2(keys.private_key_path(source, thumbprint), keys.private_key_path(target, thumbprint))


async def test_a_host_without_the_active_private_key_refuses_to_sign_and_still_follows_postgres(
    make_client: AppFactory,
    db: asyncpg.Connection,
    settings: Settings,
    signing_key: str,
    client_keys: dict[str, str],
    tmp_path: Path,
) -> None:
    folder_b = tmp_path / "host-b-keys"
    copy_key(signing_key, settings.keys_dir, folder_b)
    host_a = await make_client()
    host_b = await make_client(keys_dir=folder_b)
    citizen, scanner = bearer(client_keys["citizen-backend"]), bearer(client_keys["scanner"])
    now = int(time.time())
    handle = host_b.app[HANDLES].seal(bytes(16), now)
    old_token = host_b.app[SIGNER].status_signer().sign_status(handle, "G", 0, 1, now, ver=1)

    # Host A makes a key only its own folder holds and activates it.
    new = await keys.activate(db, await keys.new_key(db, settings.keys_dir))
    await refresh(host_a, host_b)

    assert host_a.app[SIGNER].status_signer().kid == new[:8]
    # Host B does not keep signing with the retired key: it refuses, and says why.
    r = await host_b.post("/v1/status", json={"id_number": NUMBER}, headers=citizen)
    assert r.status == 503, await r.text()
    assert r.headers["Retry-After"] == "30"
    body = await r.json(content_type=PROBLEM)
    assert (body["type"], body["reason"]) == ("/problems/signing-unavailable", "private_key_missing")
    assert f"key {new[:8]} is not held by this host" in body["detail"]
    await assert_documented(r, "/v1/status", "post")
    r = await host_b.get("/readyz")
    assert r.status == 503, await r.text()
    assert r.headers["Retry-After"] == "5"
    ready = await r.json(content_type=PROBLEM)
    assert (ready["type"], ready["reason"]) == ("/problems/not-ready-to-sign", "private_key_missing")
    await assert_documented(r, "/readyz", "get")
    assert await metric(host_b, "healthcode_signing_ready") == "0.0"
    assert await metric(host_b, 'healthcode_signing_unavailable{reason="private_key_missing"}') == "1.0"
    assert await metric(host_a, "healthcode_signing_ready") == "1.0"
    assert (await host_a.get("/readyz")).status == 200

    # Its JWKS publishes the new key, and a later revocation applies there at once.
    assert await jwks_kids(host_b) == {signing_key[:8], new[:8]}
    r = await host_b.post("/v1/verify", json={"token": old_token, "checkpoint": "gate"}, headers=scanner)
    assert (await r.json())["valid"] is True
    await keys.revoke(db, signing_key)
    await refresh(host_a, host_b)
    assert await jwks_kids(host_b) == {new[:8]}
    r = await host_b.post("/v1/verify", json={"token": old_token, "checkpoint": "gate"}, headers=scanner)
    assert ((await r.json())["valid"], (await r.json())["reason"]) == (False, "unknown_key")

    # Once the private key is copied over, host B signs with it.
    copy_key(new, settings.keys_dir, folder_b)
    await refresh(host_b)
    assert host_b.app[SIGNER].status_signer().kid == new[:8]
    assert (await host_b.get("/readyz")).status == 200
    assert await metric(host_b, "healthcode_signing_ready") == "1.0"


async def test_a_private_key_file_of_another_key_is_refused_not_used(
    make_client: AppFactory, db: asyncpg.Connection, settings: Settings, signing_key: str, tmp_path: Path
) -> None:
    folder_b = tmp_path / "host-b-keys"
    folder_b.mkdir()
    other = await keys.new_key(db, settings.keys_dir)  # pending; its file under the active key's name
    shutil.copy2(keys.private_key_path(settings.keys_dir, other), keys.private_key_path(folder_b, signing_key))
    host_b = await make_client(keys_dir=folder_b)

    problem = host_b.app[SIGNER].problem
    assert problem is not None and problem.reason == "private_key_unusable"
    assert await jwks_kids(host_b) == {signing_key[:8], other[:8]}


async def test_a_host_that_cannot_sign_at_start_up_still_starts_but_is_not_ready(
    make_client: AppFactory, db: asyncpg.Connection, client_keys: dict[str, str], tmp_path: Path
) -> None:
    host_b = await make_client(keys_dir=tmp_path / "empty")
    assert (await host_b.get("/healthz")).status == 200
    assert (await host_b.get("/readyz")).status == 503
    r = await host_b.post("/v1/test-code", json={"id_number": NUMBER}, headers=bearer(client_keys["citizen-backend"]))
    assert r.status == 503, await r.text()
    assert (await r.json(content_type=PROBLEM))["reason"] == "private_key_missing"
