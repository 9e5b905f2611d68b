"""Helpers shared by handlers: JSON bodies in, JSON out."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import orjson
from aiohttp import web

from app.db import UNAVAILABLE_ERRORS, DatabaseUnavailable, unavailable_reason
from app.health import DependencyState
from app.http.problems import InvalidField, InvalidIdentityProblem, MalformedRequest, UnsupportedMediaType
from app.identity import Identity, InvalidIdentity, parse_identity

JSON_HEADERS = {"Content-Type": "application/json"}


# JSON can carry U+0000 only as this escape; Postgres text cannot store it. (Lone surrogates, the other
# code points UTF-8 cannot encode, are already refused by the JSON parser: 400.)
_NUL_ESCAPE = b"\\u0000"


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object; its size is capped by the application's client_max_size (413).

    A string anywhere in it holding NUL is a 422 naming the field, for every route at once: such a value
    would be accepted here and then refused by Postgres, after the caller had its answer (a lost scan).
    """
    if request.content_type != "application/json":
        raise UnsupportedMediaType(f"send the body as application/json, not {request.content_type or 'nothing'}")
    raw = await request.read()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedRequest(f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise MalformedRequest("the body must be a JSON object")
    if _NUL_ESCAPE in raw:  # a byte search on every request; the walk only when it may be needed
        _refuse_nul(body)
    return body


def _refuse_nul(body: dict[str, Any]) -> None:
    """Raise for the first string or member name holding NUL, naming it (`a`, `a.b`, `a[2]`).

    A loop, not recursion: the parser accepts nesting deeper than Python's recursion limit."""
    stack: list[tuple[str, object]] = [("", body)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            if "\x00" in value:
                name = path or "body"
                raise InvalidField(name, "nul_character", f"{name} must not contain the NUL character (U+0000)")
        elif isinstance(value, dict):
            members = []
            for key, item in value.items():
                member = f"{path}.{key}" if path else key
                if "\x00" in key:
                    raise InvalidField(
                        member.replace("\x00", "\\u0000"),
                        "nul_character",
                        "a member name must not contain the NUL character (U+0000)",
                    )
                members.append((member, item))
            stack.extend(reversed(members))  # popped in document order
        elif isinstance(value, list):
            stack.extend((f"{path}[{index}]", item) for index, item in reversed(list(enumerate(value))))


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


def postgres_unavailable(state: DependencyState, exc: BaseException) -> DatabaseUnavailable:
    """The 503 for Postgres failing to answer (down, refusing connections, too slow); the state logs
    the outage once, not once per request."""
    reason = unavailable_reason(exc)
    state.failed(reason)
    return DatabaseUnavailable(reason)


@contextlib.contextmanager
def postgres_answers(state: DependencyState) -> Iterator[None]:
    """Postgres failing to answer inside the block is a 503 with Retry-After, never a 500."""
    try:
        yield
    except DatabaseUnavailable:
        raise
    except UNAVAILABLE_ERRORS as exc:
        raise postgres_unavailable(state, exc) from exc
