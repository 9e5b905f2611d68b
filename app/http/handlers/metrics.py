"""GET /metrics: Prometheus text from prometheus_client (app/ops/metrics.py), one process or several.

At each scrape, what this process counts in plain integers is added to its metrics (`sync`), and what
all processes share is read from Redis (the scan backlog) and Postgres (the batch queue), each bounded
by a timeout so that an outage does not hold the scrape, and answered by whichever process is scraped.
"""

from __future__ import annotations

import asyncio
import time
from typing import Final

import asyncpg
from aiohttp import web
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from app.federation.keys import STATES as KEY_STATES
from app.http.appkeys import (
    CLIENTS,
    FEDERATION,
    FRONT_DOOR,
    METRICS,
    PG,
    POSTGRES_STATE,
    RATE_LIMITER,
    SCAN_WRITER,
    SCANS,
    SIGNER,
    STATUS_CACHE,
)
from app.keys.lifecycle import NO_ACTIVE_KEY, PRIVATE_KEY_MISSING, PRIVATE_KEY_UNUSABLE
from app.ops.metrics import CONTENT_TYPE, Metrics
from app.rules.engine import EVALUATION_ERRORS
from cache.connection import REDIS_ERRORS
from cache.scan_stream import Backlog
from signing.records import ACTIVE, PENDING, RETIRED, REVOKED

# Every reason is exported (0 or 1), so an alert on one of them has a series to watch from the start.
_SIGNING_REASONS: Final = (NO_ACTIVE_KEY, PRIVATE_KEY_MISSING, PRIVATE_KEY_UNUSABLE, "not_loaded")
# Shared figures are read at scrape time, bounded so that a Redis or Postgres outage does not hold it.
_READ_TIMEOUT: Final = 1.0

routes = web.RouteTableDef()


async def scan_backlog(app: web.Application) -> Backlog | None:
    recorder = app.get(SCANS)
    if recorder is None:
        return None
    try:
        return await asyncio.wait_for(recorder.stream.backlog(), _READ_TIMEOUT)
    except REDIS_ERRORS:  # TimeoutError (wait_for) is an OSError
        return None


async def batch_queue(app: web.Application) -> tuple[int, float] | None:
    """Batches received or loading, and the age of the oldest (0 when none); None if Postgres did not say."""
    pool = app.get(PG)
    if pool is None:
        return None
    try:
        row = await pool.fetchrow(
            """SELECT count(*) AS depth, coalesce(extract(epoch FROM now() - min(received_at)), 0)::float8 AS age
               FROM batches WHERE state IN ('received', 'loading')""",
            timeout=_READ_TIMEOUT,
        )
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError):
        return None
    assert row is not None
    return int(row["depth"]), float(row["age"])


def sync(app: web.Application, metrics: Metrics) -> None:
    """This process's own counts and states into its metrics (deltas for counters, values for gauges)."""
    tally = metrics.tally
    metrics.latencies.flush()
    front = app.get(FRONT_DOOR)
    if front is not None:
        for (method, route, status), count in list(front.counts.items()):
            tally.sync(metrics.requests, count, method, route, str(status))
        gate = front.admission
        tally.sync(metrics.shed, front.shed)
        tally.sync(metrics.shed_at_door, gate.shed_at_door)
        metrics.in_flight.set(front.in_flight)
        metrics.queued.set(gate.queued)
        metrics.overloaded.set(int(gate.overloaded))
        metrics.loop_lag.set(gate.lag)
        metrics.admit_limit.set(gate.concurrency)
        metrics.started.set(front.started_at)
    cache = app.get(STATUS_CACHE)
    if cache is not None:
        for name, counter in metrics.cache.items():
            tally.sync(counter, getattr(cache, name))
        metrics.dependency_up.labels("redis").set(int(cache.redis_up))
    postgres = app.get(POSTGRES_STATE)
    if postgres is not None:
        metrics.dependency_up.labels("postgres").set(int(postgres.up))
        tally.sync(metrics.dependency_down, postgres.changes, "postgres")
    clients = app.get(CLIENTS)
    if clients is not None:
        for client, calls in list(clients.calls.items()):
            tally.sync(metrics.client_calls, calls, client.name, client.kind)
    limiter = app.get(RATE_LIMITER)
    if limiter is not None:
        for name, counter in metrics.rate_limit.items():
            tally.sync(counter, getattr(limiter, name))
    tally.sync(metrics.rule_errors, EVALUATION_ERRORS.value)
    _sync_signing(app, metrics)
    _sync_scans(app, metrics)


def _sync_signing(app: web.Application, metrics: Metrics) -> None:
    state = app.get(SIGNER)
    if state is None:
        return
    reason = None if state.problem is None else state.problem.reason
    metrics.signing_ready.set(int(reason is None))
    for r in _SIGNING_REASONS:
        metrics.signing_unavailable.labels(r).set(int(r == reason))
    if state.refreshed_at is not None:
        metrics.keys_refreshed.set(state.refreshed_at)


def _sync_scans(app: web.Application, metrics: Metrics) -> None:
    tally = metrics.tally
    recorder = app.get(SCANS)
    if recorder is not None:
        tally.sync(metrics.scans_recorded, recorder.to_stream, "stream")
        tally.sync(metrics.scans_recorded, recorder.to_postgres, "postgres")
        tally.sync(metrics.scans_refused, recorder.refusals.counted)
        metrics.scans_refused_unflushed.set(recorder.refusals.unflushed)
    writer = app.get(SCAN_WRITER)
    if writer is not None:
        for name, counter in metrics.scan_writer.items():
            tally.sync(counter, getattr(writer, name))
        metrics.scan_writer_last.set(writer.last_written_at or 0.0)


def _gauge(name: str, text: str, value: float, labels: dict[str, str] | None = None) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, text, labels=list(labels or ()))
    family.add_metric(list((labels or {}).values()), value)
    return family


def scraped(app: web.Application, backlog: Backlog | None, queue: tuple[int, float] | None, now: float) -> list[Metric]:
    """The figures every process shares, as read at this scrape."""
    found: list[Metric] = []
    if app.get(SCANS) is not None:
        found.append(
            _gauge(
                "healthcode_scan_backlog_up",
                "1 if the scan backlog could be read from Redis at this scrape.",
                int(backlog is not None),
            )
        )
    if backlog is not None:
        entries = GaugeMetricFamily(
            "healthcode_scan_backlog_entries",
            "Scans in Redis not yet stored in Postgres (pending in the group, or never read).",
            labels=["state"],
        )
        entries.add_metric(["pending"], backlog.pending)
        entries.add_metric(["undelivered"], backlog.undelivered)
        found.append(entries)
        found.append(
            _gauge(
                "healthcode_scan_backlog_oldest_seconds",
                "Age of the oldest scan not yet stored in Postgres: the scan writers' lag; growing means stuck.",
                backlog.oldest_age_seconds(int(now * 1000)),
            )
        )
        found.append(
            CounterMetricFamily(
                "healthcode_scan_dead_letters",
                "Scan entries in the dead-letter stream since Redis last started (every writer's).",
                value=backlog.dead_letters,
            )
        )
    if app.get(PG) is not None:
        found.append(
            _gauge(
                "healthcode_batch_queue_up",
                "1 if the batch queue could be read from Postgres at this scrape.",
                int(queue is not None),
            )
        )
    if queue is not None:
        found.append(_gauge("healthcode_batch_queue_depth", "Batches received or loading, not yet done.", queue[0]))
        found.append(
            _gauge(
                "healthcode_batch_queue_oldest_seconds", "Age of the oldest batch not yet done (0 when none).", queue[1]
            )
        )
    found += _key_horizon(app, now)
    found += _federation(app)
    return found


def _federation(app: web.Application) -> list[Metric]:
    """Peers' keys and look-ups, as this process counted them (each process asks peers itself)."""
    federation = app.get(FEDERATION)
    if federation is None:
        return []
    keys = federation.keys
    states = GaugeMetricFamily(
        "healthcode_peer_keys_state",
        "1 for the state of each trusted peer's keys: fresh, stale (fetch failing, last good keys used), "
        "expired (its tokens refused), missing (never fetched).",
        labels=["issuer", "state"],
    )
    for issuer in sorted(keys.peers):
        for state in KEY_STATES:
            states.add_metric([issuer, state], int(keys.state(issuer) == state))
    fetches = CounterMetricFamily(
        "healthcode_peer_jwks_fetches",
        "Fetches of peers' JWKS, by outcome (ok includes 304 Not Modified).",
        labels=["issuer", "outcome"],
    )
    for (issuer, outcome), n in sorted(keys.fetches.items()):
        fetches.add_metric([issuer, outcome], n)
    requests = CounterMetricFamily(
        "healthcode_peer_requests",
        "Vaccination look-ups sent to peers, by outcome (ok, timeout, unavailable, refused, bad_answer, skipped).",
        labels=["issuer", "outcome"],
    )
    for (issuer, outcome), n in sorted(federation.client.outcomes.items()):
        requests.add_metric([issuer, outcome], n)
    lookups = CounterMetricFamily(
        "healthcode_peer_lookups",
        "Status answers that consulted peers: asked, answered from the remembered look-up, records stored.",
        labels=["kind"],
    )
    for kind, n in sorted(federation.lookups.items()):
        lookups.add_metric([kind], n)
    return [states, fetches, requests, lookups]


def _key_horizon(app: web.Application, now: float) -> list[Metric]:
    """How the signing keys stand: counts by state, when a scheduled key starts signing, and how long the
    last retired key keeps verifying (its tokens' horizon)."""
    state = app.get(SIGNER)
    if state is None or state.keyring is None:
        return []
    ring = state.keyring
    counts = GaugeMetricFamily(
        "healthcode_signing_keys", "Signing keys this process knows, by state.", labels=["state"]
    )
    for name in (PENDING, ACTIVE, RETIRED, REVOKED):
        counts.add_metric([name], sum(1 for r in ring.records if r.state == name))
    horizon = max(
        (r.retired_at + ring.token_ttl_seconds - now for r in ring.records if r.state == RETIRED and r.retired_at),
        default=0.0,
    )
    found: list[Metric] = [
        counts,
        _gauge(
            "healthcode_signing_retired_horizon_seconds",
            "Seconds until the last retired key stops verifying and leaves the JWKS (0: none pending).",
            max(horizon, 0.0),
        ),
    ]
    scheduled = [at for at in state.scheduled_activations() if at > now]
    found.append(
        _gauge(
            "healthcode_signing_next_activation_seconds",
            "Seconds until a scheduled key starts signing (-1: none scheduled).",
            min(scheduled) - now if scheduled else -1.0,
        )
    )
    return found


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    app = request.app
    backlog, queue = await asyncio.gather(scan_backlog(app), batch_queue(app))
    registry = app[METRICS]
    sync(app, registry)
    # No await from here to the rendering: no other scrape can swap the figures in between.
    registry.scraped.families = scraped(app, backlog, queue, time.time())
    return web.Response(body=registry.render(), headers={"Content-Type": CONTENT_TYPE})
