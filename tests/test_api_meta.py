"""Probes, the published keys, the API description and the QR images, against the real app."""

from __future__ import annotations

import time
from typing import Any

import jwt
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from app.http.appkeys import HANDLES, SIGNER
from app.http.handlers.meta import JWKS_MAX_AGE
from signing.encoding import b64url_encode
from signing.jws import TokenSigner
from signing.keys import generate_private_key, jwk_thumbprint
from signing.records import KeyRecord
from tests.conftest import AppFactory
from tests.support import bearer

Api = TestClient[web.Request, web.Application]
PROBLEM = "application/problem+json"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def token_for(api: Api, *, now: int | None = None) -> str:
    """A token as /v1/status makes one: a handle for `sub`, a last negative test, a large version."""
    signer = api.app[SIGNER].signer
    assert signer is not None
    now = int(time.time()) if now is None else now
    sub = api.app[HANDLES].seal(bytes(16), now)
    return signer.sign_status(sub, "G", 0, 1, now, ver=9_999_999, negative_test_at=now - 86_400)


# --- probes ----------------------------------------------------------------------------------------------


async def test_healthz(api: Api) -> None:
    r = await api.get("/healthz")
    assert r.status == 200, await r.text()
    assert await r.json() == {"status": "ok"}


async def test_readyz_when_postgres_and_redis_answer(api: Api) -> None:
    r = await api.get("/readyz")
    assert r.status == 200, await r.text()
    assert await r.json() == {"status": "ready"}


async def test_readyz_names_redis_when_it_is_unreachable(make_client: AppFactory) -> None:
    api = await make_client(redis_url="redis://127.0.0.1:1/0")
    r = await api.get("/readyz")
    assert r.status == 503, await r.text()
    assert r.content_type == PROBLEM
    assert r.headers["Retry-After"] == "5"
    assert await r.json(content_type=PROBLEM) == {
        "type": "/problems/not-ready",
        "title": "A dependency is unreachable",
        "status": 503,
        "detail": "unreachable: redis",
        "unreachable": ["redis"],
    }
    # The process itself is up.
    assert (await api.get("/healthz")).status == 200


async def test_probes_refuse_other_methods(api: Api) -> None:
    r = await api.post("/healthz")
    assert r.status == 405, await r.text()
    assert (await r.json(content_type=PROBLEM))["type"] == "/problems/method-not-allowed"
    assert set(r.headers["Allow"].split(",")) == {"GET", "HEAD"}


# --- JWKS ------------------------------------------------------------------------------------------------


async def test_jwks_publishes_the_active_key_with_cache_headers(api: Api, signing_key: str) -> None:
    r = await api.get("/.well-known/jwks.json")
    assert r.status == 200, await r.text()
    assert r.content_type == "application/jwk-set+json"
    assert r.headers["Cache-Control"] == f"public, max-age={JWKS_MAX_AGE}"
    assert r.headers["ETag"].startswith('"') and r.headers["ETag"].endswith('"')
    document = orjson.loads(await r.read())
    [key] = document["keys"]
    assert set(key) == {"kid", "alg", "use", "kty", "crv", "x", "y"}  # public members only, no "d"
    assert (key["kid"], key["alg"], key["use"], key["kty"], key["crv"]) == (
        signing_key[:8],
        "ES256",
        "sig",
        "EC",
        "P-256",
    )
    assert jwk_thumbprint({k: key[k] for k in ("kty", "crv", "x", "y")}) == signing_key
    # The published key verifies our tokens in an independent JOSE implementation.
    claims = jwt.decode(token_for(api), key=jwt.PyJWK(key), algorithms=["ES256"], issuer="healthcode")
    assert claims["st"] == "G"


async def test_jwks_answers_304_to_a_matching_etag(api: Api) -> None:
    first = await api.get("/.well-known/jwks.json")
    etag = first.headers["ETag"]
    again = await api.get("/.well-known/jwks.json", headers={"If-None-Match": etag})
    assert again.status == 304, await again.text()
    assert await again.read() == b""
    assert again.headers["ETag"] == etag
    assert again.headers["Cache-Control"] == f"public, max-age={JWKS_MAX_AGE}"
    stale = await api.get("/.well-known/jwks.json", headers={"If-None-Match": '"something-else"'})
    assert stale.status == 200
    assert await stale.read() == await first.read()


# --- OpenAPI ---------------------------------------------------------------------------------------------


async def test_openapi_document_is_served(api: Api) -> None:
    r = await api.get("/openapi.json")
    assert r.status == 200, await r.text()
    assert r.content_type == "application/json"
    assert r.headers["Cache-Control"] == "public, max-age=3600"
    document = await r.json()
    assert document["openapi"].startswith("3.1")
    assert "/v1/status" in document["paths"]


# --- QR images -------------------------------------------------------------------------------------------


async def test_qr_png(api: Api, client_keys: dict[str, str], settings: Any) -> None:
    token = token_for(api)
    r = await api.get("/v1/qr.png", params={"token": token}, headers=bearer(client_keys["citizen-backend"]))
    assert r.status == 200, await r.text()
    assert r.content_type == "image/png"
    image = await r.read()
    assert image.startswith(PNG_MAGIC)
    # Version 15 at most: 17 + 4 * 15 modules plus the quiet zone of 4 a side, 4 pixels a module.
    width = int.from_bytes(image[16:20], "big")
    assert width <= (17 + 4 * 15 + 8) * 4, width
    max_age = int(r.headers["Cache-Control"].removeprefix("private, max-age="))
    assert settings.token_ttl_seconds - 5 <= max_age <= settings.token_ttl_seconds
    again = await api.get("/v1/qr.png", params={"token": token}, headers=bearer(client_keys["citizen-backend"]))
    assert await again.read() == image


async def test_qr_svg(api: Api, client_keys: dict[str, str]) -> None:
    r = await api.get("/v1/qr.svg", params={"token": token_for(api)}, headers=bearer(client_keys["citizen-backend"]))
    assert r.status == 200, await r.text()
    assert r.content_type == "image/svg+xml"
    image = await r.read()
    assert image.startswith(b"<?xml")
    assert b"<svg" in image
    assert r.headers["Cache-Control"].startswith("private, max-age=")


def qr_refusal(path: str, code: str, detail: str) -> dict[str, Any]:
    return {
        "type": "/problems/invalid-field",
        "title": "A field of the request is invalid",
        "status": 422,
        "detail": detail,
        "instance": path,
        "field": "token",
        "code": code,
    }


@pytest.mark.parametrize("path", ["/v1/qr.png", "/v1/qr.svg"])
async def test_qr_refuses_tokens_that_do_not_verify(api: Api, client_keys: dict[str, str], path: str) -> None:
    headers = bearer(client_keys["citizen-backend"])
    stranger = TokenSigner(KeyRecord.from_private_key(generate_private_key()), "healthcode", 300)
    cases = {
        "malformed": "not-a-token",
        "expired": token_for(api, now=int(time.time()) - 1000),
        "unknown_key": stranger.sign_status(b64url_encode(bytes(16)), "G", 0, 1, int(time.time()), ver=1),
    }
    for reason, token in cases.items():
        r = await api.get(path, params={"token": token}, headers=headers)
        assert r.status == 422, await r.text()
        assert r.content_type == PROBLEM
        assert await r.json(content_type=PROBLEM) == qr_refusal(path, reason, f"the token cannot be rendered: {reason}")
    missing = await api.get(path, headers=headers)
    assert await missing.json(content_type=PROBLEM) == qr_refusal(
        path, "missing", "pass the token as ?token=, at most 2048 characters"
    )


async def test_qr_needs_a_citizen_backend_key(api: Api, client_keys: dict[str, str]) -> None:
    token = token_for(api)
    anonymous = await api.get("/v1/qr.png", params={"token": token})
    assert anonymous.status == 401, await anonymous.text()
    assert anonymous.headers["WWW-Authenticate"] == 'Bearer realm="healthcode"'
    scanner = await api.get("/v1/qr.svg", params={"token": token}, headers=bearer(client_keys["scanner"]))
    assert scanner.status == 403, await scanner.text()
    assert (await scanner.json(content_type=PROBLEM))["type"] == "/problems/forbidden"
