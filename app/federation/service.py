"""What a process holds for the federation, and the status answer's consultation of peers.

`Federation` keeps the trust list and the peers' keys (re-read and re-fetched in the background), the
HTTP client session used for both, the verifier of any trusted issuer's tokens and the client of the
peers' vaccination API.

`consult` is the status answer's part: when asked (`include_peer_vaccinations`) or when the person has
no vaccination here, the vaccination-source peers are asked within the peer budget; what they answer is
stored (app/federation/records.py says why) and the person recomputed through the write path, and the
look-up is remembered in Redis for `peer_cache_seconds`, so the next status answer does not ask again.
A peer that is slow or down never holds the answer past the budget: the answer then comes from local
data and says which peers were not reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
import asyncpg
import orjson
from redis.asyncio import Redis

from app.db import UNAVAILABLE_ERRORS
from app.federation.assertion import ASSERTION_SECONDS
from app.federation.client import Outcome, PeerClient
from app.federation.identity import federation_pseudonym
from app.federation.keys import PeerKeys
from app.federation.peers import Peer, list_peers
from app.federation.records import keep_peer_vaccinations
from app.federation.trust import TrustedVerifier
from app.identity import Identity
from app.settings import Settings
from app.statuses.publish import StatusPublisher
from cache.connection import REDIS_ERRORS
from cache.entry import StatusEntry
from cache.federation import recent_lookup, remember_lookup
from signing.jws import TokenSigner

log = logging.getLogger(__name__)

# How often the background task looks for key sets that are due (each is fetched only when due).
KEYS_TICK_SECONDS: Final = 1.0
# A store and recompute after a peer answered: bounded like a cache miss, but apart from the peer budget.
STORE_TIMEOUT_SECONDS: Final = 1.0


class Federation:
    def __init__(
        self, settings: Settings, session: aiohttp.ClientSession, signer: Callable[[int], TokenSigner]
    ) -> None:
        self.settings = settings
        self.session = session
        self.keys = PeerKeys(settings.peer_keys_max_stale_seconds)
        self.trust = TrustedVerifier(settings.issuer, self.keys, session)
        self.client = PeerClient(session, self.trust, lambda: signer(ASSERTION_SECONDS))
        self.lookups: dict[str, int] = {"asked": 0, "cached": 0, "stored": 0}

    @property
    def vaccination_sources(self) -> list[Peer]:
        return [p for p in self.keys.peers.values() if p.vaccination_source]

    async def load(self, pool: asyncpg.Pool) -> None:
        """Re-read the trust list (peers added or removed by `healthcode peers`)."""
        async with pool.acquire() as conn:
            self.keys.set_peers(await list_peers(conn))

    async def run(self, pool: asyncpg.Pool) -> None:
        """The background task: the trust list every peer_refresh_seconds, due key sets every tick."""
        last_load = time.monotonic()
        while True:
            await asyncio.sleep(KEYS_TICK_SECONDS)
            try:
                if time.monotonic() - last_load >= self.settings.peer_refresh_seconds:
                    await self.load(pool)
                    last_load = time.monotonic()
                await self.keys.refresh(self.session)
            except UNAVAILABLE_ERRORS:
                pass  # Postgres down: the other background tasks log it; the trust list stays as it was
            except Exception:
                log.exception("federation refresh failed; keeping the trust list and keys as they were")


@dataclass(frozen=True, slots=True)
class Consulted:
    entry: StatusEntry
    report: dict[str, Any] | None  # the answer's `peer_vaccinations`; None when peers were not consulted


async def consult(
    federation: Federation,
    *,
    identity: Identity,
    subject: bytes,
    entry: StatusEntry,
    requested: bool,
    redis: Redis,
    pool: asyncpg.Pool,
    publisher: StatusPublisher,
) -> Consulted:
    settings = federation.settings
    sources = federation.vaccination_sources
    if not requested and (entry.vaccine_doses > 0 or not sources or settings.federation_key is None):
        return Consulted(entry, None)  # the hot path: nothing to ask, no round trip
    if settings.federation_key is None or not sources:
        reason = "no federation key configured" if settings.federation_key is None else "no vaccination-source peers"
        return Consulted(entry, {"consulted": False, "reason": reason, "reached": [], "not_reached": []})
    remembered = None
    # Without the memo the peers are asked again: bounded by the budget all the same.
    with contextlib.suppress(*REDIS_ERRORS):
        remembered = await recent_lookup(redis, subject)
    if remembered is not None:
        federation.lookups["cached"] += 1
        return Consulted(entry, {**orjson.loads(remembered), "consulted": True, "cached": True})

    federation.lookups["asked"] += 1
    outcome = await federation.client.vaccinations(
        sources, federation_pseudonym(identity, settings.federation_key), settings.peer_timeout_seconds
    )
    report: dict[str, Any] = {
        "reached": sorted(outcome.reached),
        "not_reached": [{"issuer": i, "reason": r} for i, r in sorted(outcome.not_reached.items())],
        "asked_at": int(time.time()),
    }
    if outcome.vaccinations:
        stored, entry_now = await _keep(federation, publisher, pool, subject, outcome)
        report["stored"] = stored
        if entry_now is not None:
            entry = entry_now
    if not outcome.not_reached and report.get("stored", True):  # what was missed is asked again next time
        with contextlib.suppress(*REDIS_ERRORS):
            await remember_lookup(redis, subject, orjson.dumps(report), settings.peer_cache_seconds)
    return Consulted(entry, {**report, "consulted": True, "cached": False})


async def _keep(
    federation: Federation, publisher: StatusPublisher, pool: asyncpg.Pool, subject: bytes, outcome: Outcome
) -> tuple[bool, StatusEntry | None]:
    """Store the peers' records and recompute: (stored, the new status if it changed)."""
    products = frozenset(publisher.ruleset.vaccine_courses)
    try:
        async with asyncio.timeout(STORE_TIMEOUT_SECONDS), pool.acquire() as conn:
            changed = False
            for issuer, records in outcome.vaccinations.items():
                changed |= await keep_peer_vaccinations(conn, subject, issuer, records, products)
            if not changed:
                return True, None  # the status already counts what the peers said
            federation.lookups["stored"] += 1
            entries = await publisher.recompute(conn, [subject], int(time.time()))
            return True, entries.get(subject)
    except UNAVAILABLE_ERRORS as exc:  # TimeoutError among them
        log.warning("peer vaccinations not stored (%s); answering from local data", type(exc).__name__)
        return False, None
