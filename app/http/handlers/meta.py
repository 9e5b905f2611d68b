"""Probes, published keys and the API description."""

from __future__ import annotations

import asyncio
import hashlib
import time
from functools import cache
from pathlib import Path
from typing import Any, Final

import orjson
from aiohttp import web

from app.db import unavailable_reason
from app.http.appkeys import PG, POSTGRES_STATE, REDIS, SETTINGS, SIGNER
from app.http.handlers.common import json_response
from app.http.problems import NotReadyToSign, problem_response
from app.keys.lifecycle import JWKS_MAX_AGE_SECONDS
from signing.jwks import jwks_document

routes = web.RouteTableDef()
_PROBE_TIMEOUT = 2.0
# Scanners re-fetch keys at least this often; short, so a withdrawn key disappears from the field quickly.
# Key activation waits this long after a key is published (app.keys.lifecycle).
JWKS_MAX_AGE = JWKS_MAX_AGE_SECONDS


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    app = request.app
    failing = []
    try:
        # The pool's own wait is bounded too: a pool held by slow work must not hang the probe.
        async with asyncio.timeout(_PROBE_TIMEOUT):
            async with app[PG].acquire(timeout=app[SETTINGS].pg_acquire_timeout_seconds) as conn:
                await conn.fetchval("SELECT 1")
    except Exception as exc:
        # The probe is often how recovery is noticed first; the state logs only when up/down changes.
        app[POSTGRES_STATE].failed(unavailable_reason(exc))
        failing.append("postgres")
    else:
        app[POSTGRES_STATE].succeeded()
    try:
        await asyncio.wait_for(request.app[REDIS].ping(), _PROBE_TIMEOUT)
    except Exception:
        failing.append("redis")
    problem = request.app[SIGNER].problem
    if not failing and problem is not None:
        return problem_response(NotReadyToSign(problem.reason, f"cannot sign tokens: {problem.detail}"))
    if failing:
        return web.Response(
            status=503,
            content_type="application/problem+json",
            body=orjson.dumps(
                {
                    "type": "/problems/not-ready",
                    "title": "A dependency is unreachable",
                    "status": 503,
                    "detail": f"unreachable: {', '.join(failing)}",
                    "unreachable": failing,
                }
            ),
            headers={"Retry-After": "5"},
        )
    return json_response({"status": "ready"})


# Public keys are public: a scanner page or app served from any origin may fetch them, read the ETag
# and revalidate with If-None-Match (which needs a preflight, answered below).
JWKS_CORS: Final = {"Access-Control-Allow-Origin": "*", "Access-Control-Expose-Headers": "ETag"}


@routes.options("/.well-known/jwks.json")
async def jwks_preflight(request: web.Request) -> web.Response:
    return web.Response(
        status=204,
        headers={
            **JWKS_CORS,
            "Access-Control-Allow-Methods": "GET",
            "Access-Control-Allow-Headers": "If-None-Match",
            "Access-Control-Max-Age": "86400",
        },
    )


@routes.get("/.well-known/jwks.json")
async def jwks(request: web.Request) -> web.Response:
    keyring = request.app[SIGNER].keyring
    assert keyring is not None
    body = orjson.dumps(jwks_document(keyring.published(int(time.time()))))
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    headers = {"Cache-Control": f"public, max-age={JWKS_MAX_AGE}", "ETag": etag, **JWKS_CORS}
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers=headers)
    return web.Response(body=body, content_type="application/jwk-set+json", headers=headers)


@cache
def openapi_document() -> dict[str, Any]:
    loaded: dict[str, Any] = orjson.loads((Path(__file__).resolve().parent.parent / "openapi.json").read_bytes())
    return loaded


@routes.get("/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return json_response(openapi_document(), headers={"Cache-Control": "public, max-age=3600"})
