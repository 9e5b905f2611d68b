"""The aiohttp application: factory, and the resources it holds for its lifetime."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Final

import aiohttp
import asyncpg
from aiohttp import web

from app.clients import ClientRegistry
from app.credentials.keys import CredentialKeys
from app.db import UNAVAILABLE_ERRORS, close_pool, create_pool, unavailable_reason
from app.federation.assertion import ASSERTION_TYP
from app.federation.service import Federation
from app.health import DependencyState
from app.http.admission import Admission
from app.http.appkeys import (
    CLIENTS,
    CREDENTIAL_KEYS,
    FEDERATION,
    FRONT_DOOR,
    HANDLES,
    INGEST,
    INGEST_PG,
    LIMITS,
    METRICS,
    PG,
    PG_REPLICA,
    POSTGRES_STATE,
    PUBLISHER,
    RATE_LIMITER,
    REDIS,
    SCAN_WRITER,
    SCANS,
    SETTINGS,
    SIGNER,
    STATUS_CACHE,
    STATUS_LOADER,
)
from app.http.handlers import (
    appeals,
    batches,
    credentials,
    declarations,
    meta,
    metrics,
    peers,
    qr,
    relations,
    samples,
    status,
    status_alert,
    venues,
    verify,
)
from app.http.middleware import FrontDoor
from app.ingest.process import BatchProcessor
from app.keys.signer import SignerState
from app.limits import UPLOADS, Limits
from app.ops.metrics import Metrics
from app.retention import ensure_partitions_of_every_table
from app.rules.ruleset import load_ruleset
from app.scans import ScanRecorder, ScanWriter
from app.settings import Settings
from app.statuses.loader import StatusLoader
from app.statuses.publish import StatusPublisher
from app.stores import status_writer
from app.web import backend as demo_backend
from app.web import operator, pages
from cache.connection import REDIS_ERRORS, open_redis
from cache.rate_limit import Rate, RateLimiter
from cache.scan_stream import ScanStream
from cache.status_cache import StatusCache
from signing.handles import HandleCipher
from signing.jws import TokenSigner

log = logging.getLogger(__name__)


def create_app(settings: Settings, *, background: bool = True) -> web.Application:
    """`background=False` leaves out the periodic refresh and the scan writer (tests drive them)."""
    postgres = DependencyState("postgres", pause_seconds=settings.pg_retry_pause_seconds)
    concurrency = min(settings.admit_concurrency, settings.max_in_flight)
    admission = Admission(
        concurrency=concurrency,
        max_waiting=settings.max_in_flight - concurrency,
        target=settings.queue_target_seconds,
        interval=settings.queue_interval_seconds,
    )
    front_door = FrontDoor(admission, postgres)
    app = web.Application(
        middlewares=[front_door.middleware],
        client_max_size=settings.max_body_bytes,
        # Uploads are gunzipped by the batch reader, which bounds the output and refuses a truncated
        # stream; aiohttp's own decompression would accept a cut-off gzip body as a shorter batch.
        handler_args={"auto_decompress": False},
    )
    app[SETTINGS] = settings
    app[FRONT_DOOR] = front_door
    app[POSTGRES_STATE] = postgres
    app[HANDLES] = HandleCipher(settings.handle_key)
    process_metrics = app[METRICS] = Metrics()
    front_door.observe = process_metrics.observe_request
    app.cleanup_ctx.extend([_admission, _postgres, _redis, _services, _federation])
    if background:
        app.cleanup_ctx.extend([_background, _federation_background])
    for module in _ROUTE_MODULES:
        app.add_routes(module.routes)
    return app


# Every module with routes: the API, then federation, then the screens (app/web/) and what they read.
_ROUTE_MODULES: Final = (
    *(meta, status, verify, qr, batches, samples, appeals, declarations, relations, venues, metrics),
    *(peers, credentials),
    *(status_alert, pages, demo_backend, operator),
)


async def _admission(app: web.Application) -> AsyncIterator[None]:
    watcher = asyncio.create_task(app[FRONT_DOOR].admission.watch_loop(), name="admission-loop-lag")
    yield
    watcher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watcher


async def _postgres(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    app[PG] = await create_pool(
        settings.database_url,
        min_size=settings.pg_pool_min,
        max_size=settings.pg_pool_max,
        query_logger=app[METRICS].observe_logged_query,
    )
    try:
        app[INGEST_PG] = await create_pool(settings.database_url, min_size=0, max_size=settings.ingest_pool_max)
    except BaseException:
        await close_pool(app[PG])
        raise
    if settings.database_replica_url:
        # No connection at start: a replica that is down must not keep the API from starting.
        app[PG_REPLICA] = await create_pool(
            settings.database_replica_url, min_size=0, max_size=settings.pg_pool_max, connect_timeout=1.0
        )
    yield
    try:
        if PG_REPLICA in app:
            await close_pool(app[PG_REPLICA])
        await close_pool(app[INGEST_PG])
    finally:
        await close_pool(app[PG])


async def _redis(app: web.Application) -> AsyncIterator[None]:
    app[REDIS] = open_redis(app[SETTINGS].redis_url)
    yield
    await app[REDIS].aclose()


async def _services(app: web.Application) -> AsyncIterator[None]:
    settings, pool, redis = app[SETTINGS], app[PG], app[REDIS]
    app[CLIENTS] = ClientRegistry()
    await app[CLIENTS].refresh(pool)
    app[SIGNER] = SignerState(settings.keys_dir, settings.issuer, settings.token_ttl_seconds, settings.signing_key_pems)
    # A process that cannot sign still starts: it verifies, publishes keys and takes uploads, while
    # /readyz and /metrics say why it cannot sign and status answers are 503.
    await app[SIGNER].refresh(pool)
    writer = status_writer(redis, settings)
    publisher = app[PUBLISHER] = StatusPublisher(writer, load_ruleset(settings.ruleset))
    loader = app[STATUS_LOADER] = StatusLoader(
        pool,
        publisher,
        postgres=app[POSTGRES_STATE],
        acquire_timeout=settings.pg_acquire_timeout_seconds,
        miss_timeout=settings.pg_miss_timeout_seconds,
        replica=app.get(PG_REPLICA),
        replica_timeout=settings.pg_replica_timeout_seconds,
    )
    app[LIMITS] = limits(settings)
    # One limiter for every route; its takes ride along with the status cache's reads.
    limiter = app[RATE_LIMITER] = RateLimiter(redis)
    app[STATUS_CACHE] = StatusCache(
        redis,
        app[METRICS].timed_load(loader.load),
        writer=writer,
        negative_ttl_seconds=settings.negative_ttl_seconds,
        limiter=limiter,
    )
    app[STATUS_CACHE].on_read = app[METRICS].observe_redis_read
    app[SCANS] = ScanRecorder(ScanStream(redis), pool)
    await ensure_partitions_of_every_table(pool, datetime.now(UTC).date())
    app[INGEST] = BatchProcessor(pool, publisher)
    yield
    await app[INGEST].close()
    await app[STATUS_CACHE].drain()  # pending cache fills finish before the Redis client closes
    try:
        await app[SCANS].refusals.flush(pool)  # the last few seconds of refused-scan counts
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
        log.warning("refused-scan counts lost at shutdown: %d scans (%s)", app[SCANS].refusals.unflushed, exc)
    await limiter.drain()


# At start-up the trust list is read and the peers' keys fetched, for at most this long: a peer that is
# down must not hold this process back (its keys are fetched again in the background).
FEDERATION_START_SECONDS = 2.0


async def _federation(app: web.Application) -> AsyncIterator[None]:
    settings, pool = app[SETTINGS], app[PG]
    # One client session for the peers' JWKS and their vaccination API; its pool is bounded, so a
    # burst of status answers that consult peers cannot open connections without limit.
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=100, limit_per_host=20),
        timeout=aiohttp.ClientTimeout(total=10, connect=2),
        headers={"User-Agent": f"healthcode ({settings.issuer})"},
    )
    signer = app[SIGNER]
    ttl = settings.token_ttl_seconds  # no token may outlive the key ring's publication window

    def assertion_signer(seconds: int) -> TokenSigner:
        return signer.signer_for(ASSERTION_TYP, min(seconds, ttl))

    federation = app[FEDERATION] = Federation(settings, session, assertion_signer)
    app[CREDENTIAL_KEYS] = CredentialKeys(settings.keys_dir)
    try:
        await federation.load(pool)
        await app[CREDENTIAL_KEYS].refresh(pool)
        async with asyncio.timeout(FEDERATION_START_SECONDS):
            await federation.keys.refresh(session)
    except TimeoutError:
        log.warning("peers' keys not all fetched at start-up; fetching them in the background")
    except BaseException:
        await session.close()
        raise
    yield
    await session.close()


async def _federation_background(app: web.Application) -> AsyncIterator[None]:
    federation, credential_keys, pool = app[FEDERATION], app[CREDENTIAL_KEYS], app[PG]

    async def credentials() -> None:
        await credential_keys.refresh(pool)

    tasks = [
        asyncio.create_task(federation.run(pool), name="federation-refresh"),
        asyncio.create_task(
            _every(app[SETTINGS].refresh_seconds, credentials, app[POSTGRES_STATE]), name="credential-keys"
        ),
    ]
    yield
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


def limits(settings: Settings) -> Limits:
    uploads = settings.agency_uploads_per_second
    overrides = {("agency", UPLOADS): Rate(uploads, uploads)}
    overrides.update(((kind, bucket), rate) for kind, bucket, rate in settings.rate_limits)
    return Limits(overrides)


async def _background(app: web.Application) -> AsyncIterator[None]:
    pool, settings = app[PG], app[SETTINGS]
    # The writer blocks on XREADGROUP, so it needs its own connection with a timeout longer than the block.
    writer_redis = open_redis(settings.redis_url, max_connections=2, socket_timeout=10.0)
    # One consumer name per host: a restarted process picks up what its predecessor read but did not
    # acknowledge (inserts are idempotent on the stream id, so sharing the name is safe).
    writer = app[SCAN_WRITER] = ScanWriter(ScanStream(writer_redis), pool, consumer=socket.gethostname())

    async def refresh() -> None:
        await app[CLIENTS].refresh(pool)
        await app[SIGNER].refresh(pool)
        await ensure_partitions_of_every_table(pool, datetime.now(UTC).date())

    async def repay() -> None:
        async with pool.acquire() as conn:
            # While Redis is down the statuses stay owed; the cache and the publisher log the outage once.
            with contextlib.suppress(*REDIS_ERRORS):
                await app[PUBLISHER].repay(conn)

    tasks = [
        asyncio.create_task(writer.run(), name="scan-writer"),
        # With several workers each one's counts reach the shared metric files every second.
        *([asyncio.create_task(_sync_metrics(app), name="metrics-sync")] if app[METRICS].multiprocess else []),
        # Statuses Postgres stored while Redis could not take them, published once it can.
        asyncio.create_task(_every(REPAY_SECONDS, repay, app[POSTGRES_STATE]), name="status-repay"),
        asyncio.create_task(app[SCANS].run(SCAN_GUARD_SECONDS), name="scan-recorder"),
        asyncio.create_task(_every(settings.refresh_seconds, refresh, app[POSTGRES_STATE]), name="refresh"),
    ]
    if settings.embedded_worker:
        # Batches left unfinished by a crash or another process, then statuses past valid_until.
        tasks.append(asyncio.create_task(_ingest_upkeep(app[INGEST]), name="ingest-upkeep"))
    yield
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await writer_redis.aclose()


SWEEP_SECONDS = 60.0
REPAY_SECONDS = 1.0
# How often scans kept by the recorder are checked against Redis, and refused-scan counts flushed.
SCAN_GUARD_SECONDS = 1.0
# How often a worker adds its counts to the shared metric files (multi-process mode only).
METRICS_SYNC_SECONDS = 1.0


async def _sync_metrics(app: web.Application) -> None:
    while True:
        await asyncio.sleep(METRICS_SYNC_SECONDS)
        try:
            metrics.sync(app, app[METRICS])
        except Exception:
            log.exception("metrics sync failed; trying again")


async def _ingest_upkeep(processor: BatchProcessor) -> None:
    """At start-up and then every SWEEP_SECONDS: finish stuck batches, recompute expired statuses."""
    while True:
        try:
            await processor.recover()
            await processor.sweep()
        except Exception:
            log.exception("batch recovery or status sweep failed; retrying later")
        await asyncio.sleep(SWEEP_SECONDS)


async def _every(seconds: float, job: Callable[[], Awaitable[None]], postgres: DependencyState) -> None:
    while True:
        await asyncio.sleep(seconds)
        started = time.monotonic()
        try:
            await job()
        except UNAVAILABLE_ERRORS as exc:
            # Postgres down is one state change in the log, not a traceback every few seconds.
            postgres.failed(unavailable_reason(exc))
        except Exception:
            log.exception("periodic refresh failed; keeping the previous clients and keys")
        else:
            postgres.succeeded()
        log.debug("refresh took %.3f s", time.monotonic() - started)
