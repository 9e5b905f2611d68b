"""An unexpected failure is a problem a client and an operator can act on: a stable type and title, a
reference that finds the traceback in the log, none of it in the body; and every route documents it."""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import replace

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from app.http.app import create_app
from app.http.middleware import UNSHED_PATHS
from app.settings import Settings
from tests.test_openapi import DOCUMENT, operations, resolve, validator_at

Api = TestClient[web.Request, web.Application]
PROBLEM = "application/problem+json"
SECRET_DETAIL = "connection string postgresql://app:hunter2@db"


async def _fails(request: web.Request) -> web.Response:
    raise RuntimeError(SECRET_DETAIL)


async def test_an_unexpected_error_is_a_documented_problem_with_a_reference_to_the_log(
    aiohttp_client: Callable[..., Awaitable[Api]],
    settings: Settings,
    signing_key: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A handler with a bug, added beside the real routes: the middleware is what is under test.
    app = create_app(replace(settings), background=False)
    app.router.add_get("/v1/fails", _fails)
    api = await aiohttp_client(app)

    r = await api.get("/v1/fails")
    assert r.status == 500
    assert r.content_type == PROBLEM
    text = await r.text()
    assert "Traceback" not in text and "hunter2" not in text and "RuntimeError" not in text
    body = await r.json(content_type=PROBLEM)
    reference = body["reference"]
    assert re.fullmatch(r"[0-9a-f]{16}", reference)
    assert body == {
        "type": "/problems/internal-error",
        "title": "The service failed to answer this request",
        "status": 500,
        "detail": f"an unexpected error occurred; it was logged under reference {reference}. Retrying may not "
        "help; if it persists, quote the reference to the operators",
        "instance": "/v1/fails",
        "reference": reference,
    }
    errors = [e.message for e in validator_at("components", "schemas", "InternalErrorProblem").iter_errors(body)]
    assert not errors
    # The log has it all, under the same reference.
    (record,) = [r for r in caplog.records if reference in r.getMessage()]
    assert record.levelno == logging.ERROR and record.exc_info is not None
    assert SECRET_DETAIL in str(record.exc_info[1])


def test_every_operation_documents_its_500_and_every_sheddable_one_its_503() -> None:
    for path, method, operation in operations():
        responses = operation["responses"]
        assert responses.get("500") == {"$ref": "#/components/responses/InternalError"}, (method, path)
        if path in UNSHED_PATHS:
            continue
        assert "503" in responses, (method, path)
        assert "Retry-After" in resolve(responses["503"])["headers"], (method, path)
    assert DOCUMENT["components"]["responses"]["InternalError"]["content"][PROBLEM]["schema"] == {
        "$ref": "#/components/schemas/InternalErrorProblem"
    }


def test_a_postgres_outage_behind_another_error_is_still_the_outage() -> None:
    """A connection lost mid-COPY surfaces as an InterfaceError raised while leaving the transaction:
    the answer is the outage's 503, not a 500."""
    from app.http.middleware import _postgres_unavailable

    lost = asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation")
    try:
        try:
            raise lost
        except asyncpg.PostgresError:
            raise asyncpg.InterfaceError("cannot call Transaction.__aexit__(): the connection is closed") from None
    except asyncpg.InterfaceError as surfaced:
        assert surfaced.__cause__ is None
        assert _postgres_unavailable(surfaced) is lost
    assert _postgres_unavailable(ValueError("a bug")) is None
