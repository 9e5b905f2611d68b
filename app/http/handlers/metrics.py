"""GET /metrics: requests served, cache hits and misses, shed requests, scans, in Prometheus text format."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

from aiohttp import web
from redis.exceptions import RedisError

from app.federation.keys import STATES as KEY_STATES
from app.http.appkeys import (
    CLIENTS,
    FEDERATION,
    FRONT_DOOR,
    POSTGRES_STATE,
    RATE_LIMITER,
    SCAN_WRITER,
    SCANS,
    SIGNER,
    STATUS_CACHE,
)
from app.keys.lifecycle import NO_ACTIVE_KEY, PRIVATE_KEY_MISSING, PRIVATE_KEY_UNUSABLE
from cache.scan_stream import Backlog

# Every reason is exported (0 or 1), so an alert on one of them has a series to watch from the start.
_SIGNING_REASONS = (NO_ACTIVE_KEY, PRIVATE_KEY_MISSING, PRIVATE_KEY_UNUSABLE, "not_loaded")

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
    limiter = app.get(RATE_LIMITER)
    if limiter is not None:
        for name, value, text in (
            ("allowed", limiter.allowed, "Requests that took a token from their client's bucket."),
            ("denied", limiter.denied, "Requests refused 429: their client's bucket was empty."),
            ("failed_open", limiter.failed_open, "Requests let through unchecked while Redis was unavailable."),
        ):
            lines += _family(f"healthcode_rate_limit_{name}_total", "counter", text, [("", value)])
    lines += _signing(app)
    lines += _federation(app)
    lines += _family(
        "healthcode_shed_total", "counter", "Requests answered 503 by load shedding.", [("", counter.shed)]
    )
    lines += _family(
        "healthcode_shed_at_door_total",
        "counter",
        "Of the requests shed, those refused before they were parsed (app/http/door.py).",
        [("", counter.admission.shed_at_door)],
    )
    lines += _family("healthcode_in_flight", "gauge", "Requests being served now.", [("", counter.in_flight)])
    gate = counter.admission
    lines += _family("healthcode_queued", "gauge", "Requests waiting for admission now.", [("", gate.queued)])
    lines += _family(
        "healthcode_queue_overloaded",
        "gauge",
        "1 while the admission queue has stood above its delay target for a whole interval (shedding).",
        [("", int(gate.overloaded))],
    )
    postgres = app[POSTGRES_STATE]
    up = [('{dependency="postgres"}', int(postgres.up))]
    if cache is not None:
        up.append(('{dependency="redis"}', int(cache.redis_up)))
    lines += _family("healthcode_dependency_up", "gauge", "1 if the dependency answered its last use.", up)
    lines += _family(
        "healthcode_dependency_down_total",
        "counter",
        "Times the dependency went from answering to not answering.",
        [('{dependency="postgres"}', postgres.changes)],
    )
    lines += _family(
        "healthcode_process_start_time_seconds",
        "gauge",
        "When this process started counting.",
        [("", counter.started_at)],
    )
    return "\n".join(lines) + "\n"


# The scan backlog is read from Redis at scrape time, so a writer that died shows too; bounded, so a
# Redis outage does not hold the scrape.
_BACKLOG_TIMEOUT = 1.0


async def scan_backlog(app: web.Application) -> Backlog | None:
    recorder = app.get(SCANS)
    if recorder is None:
        return None
    try:
        return await asyncio.wait_for(recorder.stream.backlog(), _BACKLOG_TIMEOUT)
    except (RedisError, OSError, TimeoutError):
        return None


def render_scans(app: web.Application, backlog: Backlog | None, now: float) -> list[str]:
    """Scans recorded and refused by this process, written by its writer, and the shared backlog."""
    lines: list[str] = []
    recorder = app.get(SCANS)
    if recorder is not None:
        lines += _family(
            "healthcode_scans_recorded_total",
            "counter",
            "Scans of verified tokens recorded, by where to: the stream, or Postgres directly when Redis failed.",
            [('{to="stream"}', recorder.to_stream), ('{to="postgres"}', recorder.to_postgres)],
        )
        refusals = recorder.refusals
        lines += _family(
            "healthcode_scans_refused_total",
            "counter",
            "Scans of tokens that failed verification, counted per checkpoint and reason, not stored one by one.",
            [("", refusals.counted)],
        )
        lines += _family(
            "healthcode_scans_refused_unflushed",
            "gauge",
            "Refused scans counted but not yet added to Postgres.",
            [("", refusals.unflushed)],
        )
    writer = app.get(SCAN_WRITER)
    if writer is not None:
        for name, value, text in (
            ("written", writer.written, "Scan entries this process's writer stored in Postgres."),
            ("dead_lettered", writer.dead_lettered, "Scan entries it moved to the dead-letter stream."),
            ("claimed", writer.claimed, "Idle scan entries it took over from other consumers."),
            ("failures", writer.failures, "Writer rounds that failed on a dependency and backed off."),
        ):
            lines += _family(f"healthcode_scan_writer_{name}_total", "counter", text, [("", value)])
        lines += _family(
            "healthcode_scan_writer_last_write_time_seconds",
            "gauge",
            "When this process's writer last stored scans (0: not yet).",
            [("", writer.last_written_at or 0.0)],
        )
    if recorder is not None:
        lines += _family(
            "healthcode_scan_backlog_up",
            "gauge",
            "1 if the scan backlog below could be read from Redis at this scrape.",
            [("", int(backlog is not None))],
        )
    if backlog is not None:
        lines += _family(
            "healthcode_scan_backlog_entries",
            "gauge",
            "Scans in Redis not yet stored in Postgres (pending in the group, or never read).",
            [('{state="pending"}', backlog.pending), ('{state="undelivered"}', backlog.undelivered)],
        )
        lines += _family(
            "healthcode_scan_backlog_oldest_seconds",
            "gauge",
            "Age of the oldest scan not yet stored in Postgres; growing means the writers are stuck.",
            [("", backlog.oldest_age_seconds(int(now * 1000)))],
        )
        lines += _family(
            "healthcode_scan_dead_letters_total",
            "counter",
            "Scan entries in the dead-letter stream since Redis last started (every writer's).",
            [("", backlog.dead_letters)],
        )
    return lines


def _signing(app: web.Application) -> list[str]:
    state = app.get(SIGNER)
    if state is None:
        return []
    reason = None if state.problem is None else state.problem.reason
    lines = _family(
        "healthcode_signing_ready",
        "gauge",
        "1 when this process signs with the key Postgres says is active; 0 when it refuses to sign.",
        [("", int(reason is None))],
    )
    lines += _family(
        "healthcode_signing_unavailable",
        "gauge",
        "1 for the reason this process cannot sign (see /readyz for the detail).",
        [(f'{{reason="{r}"}}', int(r == reason)) for r in _SIGNING_REASONS],
    )
    if state.refreshed_at is not None:
        lines += _family(
            "healthcode_keys_refreshed_time_seconds",
            "gauge",
            "When this process last read the signing keys from Postgres.",
            [("", state.refreshed_at)],
        )
    return lines


def _federation(app: web.Application) -> list[str]:
    federation = app.get(FEDERATION)
    if federation is None:
        return []
    keys = federation.keys
    states = [
        (f'{{issuer="{_label(issuer)}",state="{state}"}}', int(keys.state(issuer) == state))
        for issuer in sorted(keys.peers)
        for state in KEY_STATES
    ]
    lines = _family(
        "healthcode_peer_keys_state",
        "gauge",
        "1 for the state of each trusted peer's keys: fresh, stale (fetch failing, last good keys used), "
        "expired (its tokens refused), missing (never fetched).",
        states,
    )
    lines += _family(
        "healthcode_peer_jwks_fetches_total",
        "counter",
        "Fetches of peers' JWKS, by outcome (ok includes 304 Not Modified).",
        [(f'{{issuer="{_label(i)}",outcome="{o}"}}', n) for (i, o), n in sorted(keys.fetches.items())],
    )
    lines += _family(
        "healthcode_peer_requests_total",
        "counter",
        "Vaccination look-ups sent to peers, by outcome (ok, timeout, unavailable, refused, bad_answer, skipped).",
        [(f'{{issuer="{_label(i)}",outcome="{o}"}}', n) for (i, o), n in sorted(federation.client.outcomes.items())],
    )
    lines += _family(
        "healthcode_peer_lookups_total",
        "counter",
        "Status answers that consulted peers: asked, answered from the remembered look-up, records stored.",
        [(f'{{kind="{k}"}}', n) for k, n in sorted(federation.lookups.items())],
    )
    return lines


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    backlog = await scan_backlog(request.app)
    scans = render_scans(request.app, backlog, time.time())
    text = render(request.app) + "".join(line + "\n" for line in scans)
    return web.Response(body=text.encode(), headers={"Content-Type": CONTENT_TYPE})
