"""The service's Prometheus metrics, kept by prometheus_client, in one process or several.

Counters the hot path already keeps as plain integers (cache hits, rate-limit takes, requests per
route and status, scans) stay plain integers and are added to prometheus_client's counters as deltas
(`Tally.sync`), at every scrape and, with several worker processes, every second in each process. An
increment on the hot path thus stays ~0.2 µs instead of ~3 µs for `Counter.labels(...).inc()` (5 µs
in multi-process mode, where every increment writes a memory-mapped file); measured with timeit on
this machine. Latencies are observed directly into histograms (their label children cached: 1.3 µs
an observation in one process).

What it costs on the status path, measured with `python -m loadtests.bench.ab` (the code before this
module and with it, served side by side on one pinned core, `POST /v1/status` on Redis hits, wrk with
64 connections, 10 alternating 8 s rounds, on this 2-core machine shared with other work at a load of
6-8): median server CPU per request 106.7 µs before, 112.6 µs with it; median of the paired rounds'
differences +3.1 µs (about 3 %), rounds varying by ±10 µs. The first version, observing through
prometheus_client on every request and setting the request id from a response-prepare signal,
measured +10.8 µs the same way (111.3 against 119.4); hence `Latencies` and the middleware's header.
Cheap enough to keep prometheus_client.

Multi-process mode (`serve --workers N`): set PROMETHEUS_MULTIPROC_DIR to an empty folder before the
workers start (prometheus_client reads it at import). Every worker writes its values there; whichever
worker answers GET /metrics reads them all (`MultiProcessCollector`): counters and histograms summed,
each gauge by its `multiprocess_mode`. The parent calls `process_exited(pid)` when a worker exits, so
its live gauges stop counting.
"""

from __future__ import annotations

import os
import time
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterable
from typing import Final, Literal

from asyncpg.connection import LoggedQuery
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from cache.entry import StatusEntry

Load = Callable[[bytes], Awaitable[StatusEntry | None]]

# A `_created` sample beside every counter doubles the page for nothing an alert uses.
disable_created_metrics()  # type: ignore[no-untyped-call]

MULTIPROCESS_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
# Seconds: a status hit takes ~0.2-5 ms, a miss 2-20 ms, uploads seconds to minutes.
LATENCY_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
CALL_BUCKETS: Final = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
_STATUS_CLASS: Final = {n: f"{n}xx" for n in range(1, 6)}


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROCESS_ENV) or None


def process_exited(pid: int) -> None:
    """For the parent of worker processes: a worker's live gauges stop counting once it has gone."""
    if multiprocess_dir() is not None:
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


class Tally:
    """Adds what a plain counter gained since the last sync to a prometheus_client counter."""

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: dict[tuple[object, ...], float] = {}

    def sync(self, counter: Counter, value: float, *labels: str) -> None:
        key = (id(counter), *labels)
        last = self._last.get(key)
        child = counter.labels(*labels) if labels else counter
        if last is None:
            last = 0.0
            child.inc(0)  # a labelled series shows from its first sync, at 0, so an alert has it to watch
        if value > last:
            child.inc(value - last)
        self._last[key] = value


class Latencies:
    """Request latencies counted into buckets in plain Python, added to the histogram at each sync.

    A prometheus_client observation takes two locks and a Python loop over the buckets: 1.3 µs with
    the label child cached (timeit), and 3-5 µs of server CPU per request in an in-process A/B of the
    served app. Counting here (a dict look-up and a C bisect) costs ~0.4 µs; `flush` adds each
    bucket's count and the sum to the label child's values, which is what `observe` itself updates
    (its `_buckets` and `_sum`; prometheus_client is pinned below 1, and tests read the result).
    """

    __slots__ = ("_bounds", "_histogram", "_pending", "_width")

    def __init__(self, histogram: Histogram, buckets: tuple[float, ...]) -> None:
        self._histogram = histogram
        self._bounds = (*buckets, float("inf"))
        self._width = len(self._bounds) + 1
        self._pending: dict[tuple[str, str, str], list[float]] = {}

    def observe(self, key: tuple[str, str, str], seconds: float) -> None:
        row = self._pending.get(key)
        if row is None:
            row = self._pending[key] = [0.0] * self._width
        row[0] += seconds
        row[1 + bisect_left(self._bounds, seconds)] += 1  # the first bucket with le >= seconds

    def flush(self) -> None:
        pending, self._pending = self._pending, {}
        for labels, row in pending.items():
            child = self._histogram.labels(*labels)
            child._sum.inc(row[0])
            for bucket, count in zip(child._buckets, row[1:], strict=True):
                if count:
                    bucket.inc(count)


class Scraped(Collector):
    """Figures read at scrape time from shared stores (Redis, Postgres): the same for every process, so
    they are produced by the process that answers the scrape, never summed over workers."""

    def __init__(self) -> None:
        self.families: list[Metric] = []

    def collect(self) -> Iterable[Metric]:
        return list(self.families)


GaugeMode = Literal["livesum", "livemin", "livemax", "mostrecent"]


def _gauge(name: str, text: str, labels: Iterable[str] = (), *, mode: GaugeMode, registry: CollectorRegistry) -> Gauge:
    return Gauge(name, text, list(labels), multiprocess_mode=mode, registry=registry)


class Metrics:
    """Every metric of one process (one application), in a registry of its own, so that several
    applications in one process (tests) do not add into each other."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.tally = Tally()
        self.scraped = Scraped()
        self.multiprocess = multiprocess_dir() is not None
        if self.multiprocess:
            # Rendered from every process's files, plus this process's scrape-time figures.
            self.render_registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(self.render_registry)  # type: ignore[no-untyped-call]
            self.render_registry.register(self.scraped)
        else:
            self.render_registry = r
            r.register(self.scraped)
            # CPU and memory of the process (not summed over workers, so only in one-process mode).
            ProcessCollector(registry=r)

        def counter(name: str, text: str, labels: Iterable[str] = ()) -> Counter:
            return Counter(name, text, list(labels), registry=r)

        # -- the edge
        self.requests = counter(
            "healthcode_http_requests", "Requests served, by route and status.", ("method", "route", "status")
        )
        self.latency = Histogram(
            "healthcode_http_request_duration_seconds",
            "Time from the middleware taking a request to its answer (admission queueing included), "
            "by route and status class.",
            ["method", "route", "status_class"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.shed = counter("healthcode_shed", "Requests answered 503 by load shedding.")
        self.shed_at_door = counter(
            "healthcode_shed_at_door", "Of the requests shed, those refused before they were parsed (app/http/door.py)."
        )
        self.in_flight = _gauge("healthcode_in_flight", "Requests being served now.", mode="livesum", registry=r)
        self.queued = _gauge("healthcode_queued", "Requests waiting for admission now.", mode="livesum", registry=r)
        self.overloaded = _gauge(
            "healthcode_queue_overloaded",
            "1 while the admission queue has stood above its delay target for a whole interval (shedding).",
            mode="livemax",
            registry=r,
        )
        self.loop_lag = _gauge(
            "healthcode_event_loop_lag_seconds", "The event loop's last measured lag.", mode="livemax", registry=r
        )
        self.admit_limit = _gauge(
            "healthcode_admit_limit",
            "Requests handled at once at most (admission control's slots).",
            mode="livesum",
            registry=r,
        )
        self.started = _gauge(
            "healthcode_process_start_time_seconds", "When this process started counting.", mode="livemin", registry=r
        )
        self.client_calls = counter("healthcode_client_calls", "Authorised calls, by client.", ("client", "kind"))
        # -- the status cache and its dependencies
        self.cache = {
            name: counter(f"healthcode_status_cache_{name}", text)
            for name, text in (
                ("hits", "Status look-ups answered from Redis."),
                ("misses", "Status look-ups that went to the loader."),
                ("negative_hits", "Look-ups answered by a cached unknown-subject tombstone."),
                ("loads", "Loader calls (Postgres reads) after misses, single-flighted."),
                ("redis_errors", "Redis errors seen by the status cache."),
            )
        }
        self.redis_seconds = Histogram(
            "healthcode_redis_call_duration_seconds",
            "Redis round trips, by call (status_read: one read shared by the look-ups of a loop turn).",
            ["call"],
            buckets=CALL_BUCKETS,
            registry=r,
        )
        self.postgres_seconds = Histogram(
            "healthcode_postgres_query_duration_seconds",
            "Postgres statements of the main pool (misses, scans, probes, refreshes), by leading SQL verb.",
            ["verb"],
            buckets=CALL_BUCKETS,
            registry=r,
        )
        self.status_load_seconds = Histogram(
            "healthcode_status_load_duration_seconds",
            "A cache miss's load from Postgres (connection, read and any recompute), by outcome.",
            ["outcome"],
            buckets=CALL_BUCKETS,
            registry=r,
        )
        self.dependency_up = _gauge(
            "healthcode_dependency_up",
            "1 if the dependency answered its last use.",
            ("dependency",),
            mode="livemin",
            registry=r,
        )
        self.dependency_down = counter(
            "healthcode_dependency_down", "Times the dependency went from answering to not answering.", ("dependency",)
        )
        self.rate_limit = {
            name: counter(f"healthcode_rate_limit_{name}", text)
            for name, text in (
                ("allowed", "Requests that took a token from their client's bucket."),
                ("denied", "Requests refused 429: their client's bucket was empty."),
                ("failed_open", "Requests let through unchecked while Redis was unavailable."),
            )
        }
        self.rule_errors = counter(
            "healthcode_rule_evaluation_errors", "Rule evaluations that failed and gave the conservative outcome."
        )
        # -- signing keys
        self.signing_ready = _gauge(
            "healthcode_signing_ready",
            "1 when this process signs with the key Postgres says is active; 0 when it refuses to sign.",
            mode="livemin",
            registry=r,
        )
        self.signing_unavailable = _gauge(
            "healthcode_signing_unavailable",
            "1 for the reason this process cannot sign (see /readyz for the detail).",
            ("reason",),
            mode="livemax",
            registry=r,
        )
        self.keys_refreshed = _gauge(
            "healthcode_keys_refreshed_time_seconds",
            "When this process last read the signing keys from Postgres.",
            mode="livemin",
            registry=r,
        )
        # -- scans
        self.scans_recorded = counter(
            "healthcode_scans_recorded",
            "Scans of verified tokens recorded, by where to: the stream, or Postgres directly when Redis failed.",
            ("to",),
        )
        self.scans_refused = counter(
            "healthcode_scans_refused",
            "Scans of tokens that failed verification, counted per checkpoint and reason, not stored one by one.",
        )
        self.scans_refused_unflushed = _gauge(
            "healthcode_scans_refused_unflushed",
            "Refused scans counted but not yet added to Postgres.",
            mode="livesum",
            registry=r,
        )
        self.scan_writer = {
            name: counter(f"healthcode_scan_writer_{name}", text)
            for name, text in (
                ("written", "Scan entries this process's writer stored in Postgres."),
                ("dead_lettered", "Scan entries it moved to the dead-letter stream."),
                ("claimed", "Idle scan entries it took over from other consumers."),
                ("failures", "Writer rounds that failed on a dependency and backed off."),
            )
        }
        self.scan_writer_last = _gauge(
            "healthcode_scan_writer_last_write_time_seconds",
            "When this process's writer last stored scans (0: not yet).",
            mode="livemax",
            registry=r,
        )
        self.latencies = Latencies(self.latency, LATENCY_BUCKETS)
        self._latency_keys: dict[tuple[str, str, int], tuple[str, str, str]] = {}
        self._redis_read = self.redis_seconds.labels("status_read").observe
        self._verbs: dict[str, Callable[[float], None]] = {}

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """The middleware's hook: one observation a request, counted until the next sync."""
        key = self._latency_keys.get((method, route, status))
        if key is None:
            key = self._latency_keys[(method, route, status)] = (
                method,
                route,
                _STATUS_CLASS.get(status // 100, "other"),
            )
        self.latencies.observe(key, seconds)

    def observe_redis_read(self, seconds: float) -> None:
        self._redis_read(seconds)

    def observe_query(self, query: str, seconds: float) -> None:
        verb = query.lstrip()[:6].upper()
        observe = self._verbs.get(verb)
        if observe is None:
            label = verb.lower() if verb in ("SELECT", "INSERT", "UPDATE", "DELETE") else "other"
            observe = self._verbs[verb] = self.postgres_seconds.labels(label).observe
        observe(seconds)

    def observe_logged_query(self, query: LoggedQuery) -> None:
        """asyncpg's query logger: every statement of the main pool, timed by asyncpg itself."""
        self.observe_query(query.query, query.elapsed)

    def timed_load(self, load: Load) -> Load:
        """A cache miss's loader, timed by outcome (found, unknown, failed)."""
        found, unknown, failed = (self.status_load_seconds.labels(o).observe for o in ("found", "unknown", "failed"))

        async def timed(subject: bytes) -> StatusEntry | None:
            started = time.perf_counter()
            try:
                entry = await load(subject)
            except BaseException:
                failed(time.perf_counter() - started)
                raise
            (unknown if entry is None else found)(time.perf_counter() - started)
            return entry

        return timed

    def render(self) -> bytes:
        return generate_latest(self.render_registry)
