"""The aiohttp application: factory, and the resources it holds for its lifetime."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

import asyncpg
from aiohttp import web
from redis.asyncio import Redis

from app.clients import ClientRegistry
from app.db import UNAVAILABLE_ERRORS, close_pool, create_pool, unavailable_reason
from app.health import DependencyState
from app.http.admission import Admission
from app.http.appkeys import (
    CLIENTS,
    FRONT_DOOR,
    HANDLES,
    INGEST,
    INGEST_PG,
    LIMITS,
    PG,
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
from app.http.handlers import appeals, batches, declarations, meta, metrics, qr, samples, status, verify
from app.http.middleware import FrontDoor
from app.ingest.process import BatchProcessor
from app.keys.signer import SignerState
from app.limits import UPLOADS, Limits
from app.rules.ruleset import load_ruleset
from app.scans import ScanRecorder, ScanWriter, ensure_scan_partitions
from app.settings import Settings
from app.statuses.loader import StatusLoader
from app.statuses.publish import StatusPublisher
from app.stores import status_writer
from cache.connection import REDIS_ERRORS, open_redis
from cache.rate_limit import Rate, RateLimiter
from cache.scan_stream import ScanStream
from cache.status_cache import StatusCache
from signing.handles import HandleCipher

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
    app.cleanup_ctx.extend([_admission, _postgres, _redis, _services])
    if background:
        app.cleanup_ctx.append(_background)
    for module in (meta, status, verify, qr, batches, samples, appeals, declarations, metrics):
        app.add_routes(module.routes)
    return app


async def _admission(app: web.Application) -> AsyncIterator[None]:
    watcher = asyncio.create_task(app[FRONT_DOOR].admission.watch_loop(), name="admission-loop-lag")
    yield
    watcher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watcher


async def _postgres(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    app[PG] = await create_pool(settings.database_url, min_size=settings.pg_pool_min, max_size=settings.pg_pool_max)
    try:
        app[INGEST_PG] = await create_pool(settings.database_url, min_size=0, max_size=settings.ingest_pool_max)
    except BaseException:
        await close_pool(app[PG])
        raise
    yield
    try:
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
    )
    app[LIMITS] = limits(settings)
    # One limiter for every route; its takes ride along with the status cache's reads.
    limiter = app[RATE_LIMITER] = RateLimiter(redis)
    app[STATUS_CACHE] = StatusCache(
        redis, loader.load, writer=writer, negative_ttl_seconds=settings.negative_ttl_seconds, limiter=limiter
    )
    app[SCANS] = ScanRecorder(ScanStream(redis), pool)
    await ensure_scan_partitions(pool, datetime.now(UTC).date())
    app[INGEST] = BatchProcessor(pool, publisher)
    yield
    await app[INGEST].close()
    await app[STATUS_CACHE].drain()  # pending cache fills finish before the Redis client closes
    try:
        await app[SCANS].refusals.flush(pool)  # the last few seconds of refused-scan counts
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
        log.warning("refused-scan counts lost at shutdown: %d scans (%s)", app[SCANS].refusals.unflushed, exc)
    await limiter.drain()


def limits(settings: Settings) -> Limits:
    uploads = settings.agency_uploads_per_second
    overrides = {("agency", UPLOADS): Rate(uploads, uploads)}
    overrides.update(((kind, bucket), rate) for kind, bucket, rate in settings.rate_limits)
    return Limits(overrides)


async def _background(app: web.Application) -> AsyncIterator[None]:
    pool, settings = app[PG], app[SETTINGS]
    # The writer blocks on XREADGROUP, so it needs its own connection with a timeout longer than the block.
    writer_redis: Redis = open_redis(settings.redis_url, max_connections=2, socket_timeout=10.0)
    # One consumer name per host: a restarted process picks up what its predecessor read but did not
    # acknowledge (inserts are idempotent on the stream id, so sharing the name is safe).
    writer = app[SCAN_WRITER] = ScanWriter(ScanStream(writer_redis), pool, consumer=socket.gethostname())

    async def refresh() -> None:
        await app[CLIENTS].refresh(pool)
        await app[SIGNER].refresh(pool)
        await ensure_scan_partitions(pool, datetime.now(UTC).date())

    async def repay() -> None:
        async with pool.acquire() as conn:
            # While Redis is down the statuses stay owed; the cache and the publisher log the outage once.
            with contextlib.suppress(*REDIS_ERRORS):
                await app[PUBLISHER].repay(conn)

    tasks = [
        asyncio.create_task(writer.run(), name="scan-writer"),
        # Statuses Postgres stored while Redis could not take them, published once it can.
        asyncio.create_task(_every(REPAY_SECONDS, repay, app[POSTGRES_STATE]), name="status-repay"),
        asyncio.create_task(app[SCANS].run(SCAN_GUARD_SECONDS), name="scan-recorder"),
        asyncio.create_task(_every(settings.refresh_seconds, refresh, app[POSTGRES_STATE]), name="refresh"),
        # Batches left unfinished by a crash or another process, then statuses past valid_until.
        asyncio.create_task(_ingest_upkeep(app[INGEST]), name="ingest-upkeep"),
    ]
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
