"""Typed keys for what the application holds between requests."""

from __future__ import annotations

import asyncpg
from aiohttp import web
from redis.asyncio import Redis

from app.clients import ClientRegistry
from app.credentials.keys import CredentialKeys
from app.federation.service import Federation
from app.health import DependencyState
from app.http.middleware import FrontDoor
from app.ingest.process import BatchProcessor
from app.keys.signer import SignerState
from app.limits import Limits
from app.scans import ScanRecorder, ScanWriter
from app.settings import Settings
from app.statuses.loader import StatusLoader
from app.statuses.publish import StatusPublisher
from cache.rate_limit import RateLimiter
from cache.status_cache import StatusCache
from signing.handles import HandleCipher

SETTINGS = web.AppKey("settings", Settings)
PG = web.AppKey("pg", asyncpg.Pool)
INGEST_PG = web.AppKey("ingest_pg", asyncpg.Pool)  # uploads and rejection downloads only
REDIS = web.AppKey("redis", Redis)
CLIENTS = web.AppKey("clients", ClientRegistry)
STATUS_CACHE = web.AppKey("status_cache", StatusCache)
STATUS_LOADER = web.AppKey("status_loader", StatusLoader)  # its read counter is a metric
SIGNER = web.AppKey("signer", SignerState)
HANDLES = web.AppKey("handles", HandleCipher)  # seals and opens the `sub` of status tokens and test codes
RATE_LIMITER = web.AppKey("rate_limiter", RateLimiter)
LIMITS = web.AppKey("limits", Limits)
SCANS = web.AppKey("scans", ScanRecorder)
SCAN_WRITER = web.AppKey("scan_writer", ScanWriter)  # only with background tasks
FRONT_DOOR = web.AppKey("front_door", FrontDoor)
INGEST = web.AppKey("ingest", BatchProcessor)
POSTGRES_STATE = web.AppKey("postgres_state", DependencyState)  # up or down as last seen, for probes and metrics
PUBLISHER = web.AppKey("publisher", StatusPublisher)  # for writers outside ingestion (appeal decisions)
FEDERATION = web.AppKey("federation", Federation)  # trust list, peers' keys, the peer API client
CREDENTIAL_KEYS = web.AppKey("credential_keys", CredentialKeys)  # SMART Health Card signing keys
