"""GET /metrics: requests served, cache hits and misses, shed requests, in Prometheus text format."""

from __future__ import annotations

from collections.abc import Iterable

from aiohttp import web

from app.http.appkeys import CLIENTS, FRONT_DOOR, STATUS_CACHE

routes = web.RouteTableDef()

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _family(name: str, kind: str, text: str, samples: Iterable[tuple[str, float]]) -> list[str]:
    lines = [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
    lines += [
        f"{name}{labels} {value:.3f}" if isinstance(value, float) else f"{name}{labels} {value}"
        for labels, value in samples
    ]
    return lines


def render(app: web.Application) -> str:
    counter = app[FRONT_DOOR]
    requests = [
        (f'{{method="{method}",route="{_label(route)}",status="{status}"}}', count)
        for (method, route, status), count in sorted(counter.counts.items())
    ]
    lines = _family("healthcode_http_requests_total", "counter", "Requests served, by route and status.", requests)
    cache = app.get(STATUS_CACHE)
    if cache is not None:
        for name, value, text in (
            ("hits", cache.hits, "Status look-ups answered from Redis."),
            ("misses", cache.misses, "Status look-ups that went to the loader."),
            ("negative_hits", cache.negative_hits, "Look-ups answered by a cached unknown-subject tombstone."),
            ("loads", cache.loads, "Loader calls (Postgres reads) after misses, single-flighted."),
            ("redis_errors", cache.redis_errors, "Redis errors seen by the status cache."),
        ):
            lines += _family(f"healthcode_status_cache_{name}_total", "counter", text, [("", value)])
    clients = app.get(CLIENTS)
    if clients is not None:
        calls = [
            (f'{{client="{_label(c.name)}",kind="{c.kind}"}}', n)
            for c, n in sorted(clients.calls.items(), key=lambda item: item[0].id)
        ]
        lines += _family("healthcode_client_calls_total", "counter", "Authorised calls, by client.", calls)
    lines += _family(
        "healthcode_shed_total", "counter", "Requests answered 503 by load shedding.", [("", counter.shed)]
    )
    lines += _family("healthcode_in_flight", "gauge", "Requests being served now.", [("", counter.in_flight)])
    lines += _family(
        "healthcode_process_start_time_seconds",
        "gauge",
        "When this process started counting.",
        [("", counter.started_at)],
    )
    return "\n".join(lines) + "\n"


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=render(request.app).encode(), headers={"Content-Type": CONTENT_TYPE})
