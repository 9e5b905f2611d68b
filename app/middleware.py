"""Middlewares: problem+json rendering and load shedding."""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.typedefs import Handler

from app.errors import (
    MethodNotAllowed,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    ProblemError,
    bare_problem,
    problem_response,
)

log = logging.getLogger(__name__)

# Probes must answer even when the service is shedding load, or an orchestrator would kill a busy process.
_UNSHED_PATHS = frozenset({"/healthz", "/readyz"})


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ProblemError as problem:
        return problem_response(problem, request.path)
    except web.HTTPRequestEntityTooLarge as exc:
        return problem_response(PayloadTooLarge(exc.text or "request body too large"), request.path)
    except web.HTTPNotFound:
        return problem_response(NotFound(f"no route for {request.path}"), request.path)
    except web.HTTPMethodNotAllowed as exc:
        not_allowed = MethodNotAllowed(f"{request.method} is not allowed on {request.path}")
        not_allowed.headers["Allow"] = ",".join(sorted(exc.allowed_methods))
        return problem_response(not_allowed, request.path)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return bare_problem(exc.status, exc.reason)
    except Exception:
        # Full context goes to the log; the caller gets no traceback.
        log.exception("unhandled error in %s %s", request.method, request.path)
        return bare_problem(500, "Internal Server Error")


class LoadShedder:
    """Answer 503 at once when more than `limit` requests are in flight, instead of queueing without bound."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0
        self.shed = 0

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.in_flight >= self.limit and request.path not in _UNSHED_PATHS:
            self.shed += 1
            return problem_response(Overloaded(retry_after=1), request.path)
        self.in_flight += 1
        try:
            return await handler(request)
        finally:
            self.in_flight -= 1
