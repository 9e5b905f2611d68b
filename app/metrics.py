"""Counting what the service serves, cheaply enough to stay on the hot path.

Each request costs one dict increment keyed by (method, route, status); the exposition in Prometheus text
format is built only when `/metrics` is scraped. Counts are per process: with several processes behind
one port, scrape (or sum) each of them.
"""

from __future__ import annotations

import time

from aiohttp import web
from aiohttp.typedefs import Handler

# Requests that matched no route share one label, so junk paths cannot grow the table without bound.
UNMATCHED = "unmatched"


class RequestCounter:
    """Requests served per (method, route template, status); outermost, so shed answers count too."""

    __slots__ = ("counts", "started_at")

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, int], int] = {}
        self.started_at = time.time()

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        route = UNMATCHED if resource is None else resource.canonical
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            key = (request.method, route, status)
            self.counts[key] = self.counts.get(key, 0) + 1

    @property
    def total(self) -> int:
        return sum(self.counts.values())


METRICS = web.AppKey("metrics", RequestCounter)
