"""Helpers shared by handlers: JSON bodies in, JSON out."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from app.http.problems import InvalidField, InvalidIdentityProblem, MalformedRequest, UnsupportedMediaType
from app.identity import Identity, InvalidIdentity, parse_identity

JSON_HEADERS = {"Content-Type": "application/json"}


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object; its size is capped by the application's client_max_size (413)."""
    if request.content_type != "application/json":
        raise UnsupportedMediaType(f"send the body as application/json, not {request.content_type or 'nothing'}")
    raw = await request.read()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedRequest(f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise MalformedRequest("the body must be a JSON object")
    return body


def required_string(body: dict[str, Any], field: str, *, max_length: int) -> str:
    value = body.get(field)
    if value is None:
        raise InvalidField(field, "missing", f"{field} is required")
    if not isinstance(value, str) or not value.strip():
        raise InvalidField(field, "wrong_type", f"{field} must be a non-empty string")
    if len(value) > max_length:
        raise InvalidField(field, "too_long", f"{field} must be at most {max_length} characters")
    return value


def json_response(payload: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps(payload),
        headers={**JSON_HEADERS, **headers} if headers else JSON_HEADERS,
    )


def identity_from_body(body: dict[str, Any]) -> Identity:
    """The identity document of a request body (`id_type`, default resident, and `id_number`), or 422."""
    try:
        return parse_identity(body.get("id_type", "resident"), body.get("id_number"))
    except InvalidIdentity as exc:
        raise InvalidIdentityProblem(exc.field, exc.code, exc.message) from None
