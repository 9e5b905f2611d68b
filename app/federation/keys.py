"""Peers' published keys: each peer's JWKS fetched, cached by its Cache-Control and ETag, refreshed before
it goes stale, and kept through a peer's outage until it expires.

A key set is fresh for the peer's `max-age` (bounded to [MIN_FRESH, MAX_FRESH]), then re-fetched with
`If-None-Match`; a 304 renews it. A failed fetch keeps the last good keys, usable until `max_stale`
seconds past their freshness, and is retried after a pause that doubles up to MAX_RETRY. One log line
per change of a peer's state (fresh → failing → expired and back), and counters for /metrics.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

import aiohttp
import orjson

from app.federation.peers import Peer
from signing.keys import jwk_thumbprint, key_alg, public_key_from_jwk
from signing.records import ACTIVE, KeyRecord

log = logging.getLogger(__name__)

DEFAULT_FRESH: Final = 300.0  # when a peer sends no max-age
MIN_FRESH: Final = 5.0  # a peer answering no-cache is not fetched on every verification
MAX_FRESH: Final = 3600.0  # nor trusted for a day on its word: a revocation must reach us
FIRST_RETRY: Final = 1.0
MAX_RETRY: Final = 60.0
FETCH_TIMEOUT: Final = 5.0
MAX_JWKS_BYTES: Final = 256 * 1024
# A kid we do not hold may be a key the peer has just added: fetch again, but not more often than this.
UNKNOWN_KID_REFETCH: Final = 10.0
_MAX_AGE = re.compile(r"max-age\s*=\s*(\d+)")
_MEMBERS: Final = ("kid", "alg", "use", "kty", "crv", "x", "y")

# States a peer's keys can be in (the `healthcode_peer_keys_state` metric).
FRESH: Final = "fresh"  # fetched within max-age
STALE: Final = "stale"  # the last fetch failed; the last good keys are still used
EXPIRED: Final = "expired"  # failing for longer than max_stale: the peer's tokens are refused
MISSING: Final = "missing"  # never fetched successfully
STATES: Final = (FRESH, STALE, EXPIRED, MISSING)


class JwksError(Exception):
    """A JWKS could not be fetched or used; the message says why (for the log line)."""


@dataclass(slots=True)
class KeySet:
    """One peer's keys as last fetched, and when to fetch again."""

    by_kid: dict[str, tuple[KeyRecord, ...]] = field(default_factory=dict)
    etag: str | None = None
    fresh_until: float = 0.0  # re-fetch from then on
    usable_until: float = 0.0  # the keys verify until then, whatever happens to fetches
    next_attempt: float = 0.0
    retry: float = FIRST_RETRY
    fetched: bool = False  # a good fetch ever happened
    failing: bool = False
    last_kid_refetch: float = float("-inf")
    state: str = ""  # none yet: the first outcome, good or bad, is logged


def max_age(cache_control: str | None) -> float:
    """Seconds a JWKS may be used without asking again, from its Cache-Control (bounded)."""
    if not cache_control:
        return DEFAULT_FRESH
    lowered = cache_control.lower()
    if "no-store" in lowered or "no-cache" in lowered:
        return MIN_FRESH
    found = _MAX_AGE.search(lowered)
    seconds = float(found.group(1)) if found else DEFAULT_FRESH
    return min(max(seconds, MIN_FRESH), MAX_FRESH)


def key_records(document: object, algorithms: Iterable[str]) -> dict[str, tuple[KeyRecord, ...]]:
    """The usable signature keys of a JWKS document: of an allowed algorithm, with a kid; others skipped."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise JwksError("not a JWKS document (no keys array)")
    allowed = frozenset(algorithms)
    found: dict[str, list[KeyRecord]] = {}
    for jwk in document["keys"]:
        if not isinstance(jwk, dict) or not all(isinstance(jwk.get(m, ""), str) for m in _MEMBERS):
            continue
        if jwk.get("use", "sig") != "sig" or not jwk.get("kid"):
            continue
        members = {m: jwk[m] for m in _MEMBERS if m in jwk}
        try:
            alg = key_alg(public_key_from_jwk(members))
            if members.get("alg", alg) != alg or alg not in allowed:
                continue
            record = KeyRecord(members["kid"], jwk_thumbprint(members), alg, {**members, "alg": alg}, ACTIVE)
        except ValueError:
            continue  # a key of a kind we do not speak is not an error of the whole set
        found.setdefault(record.kid, []).append(record)
    return {kid: tuple(records) for kid, records in found.items()}


class PeerKeys:
    """Every trusted peer's keys. `candidates(issuer, kid)` is what a token verifier asks."""

    def __init__(self, max_stale_seconds: float, *, clock: Callable[[], float] = time.time) -> None:
        self.max_stale = max_stale_seconds
        self._clock = clock
        self.peers: dict[str, Peer] = {}
        self.sets: dict[str, KeySet] = {}
        self.fetches: Counter[tuple[str, str]] = Counter()  # (issuer, outcome) -> count, for /metrics

    def set_peers(self, peers: Iterable[Peer]) -> None:
        """The trust list as last read; keys of a peer no longer on it are dropped at once."""
        self.peers = {p.issuer: p for p in peers}
        for issuer in list(self.sets):
            previous = self.sets[issuer]
            peer = self.peers.get(issuer)
            if peer is None:
                del self.sets[issuer]
            elif previous.by_kid and any(r.alg not in peer.algorithms for rs in previous.by_kid.values() for r in rs):
                previous.by_kid = {
                    kid: kept
                    for kid, rs in previous.by_kid.items()
                    if (kept := tuple(r for r in rs if r.alg in peer.algorithms))
                }
        for issuer in self.peers:
            self.sets.setdefault(issuer, KeySet())

    def trusted(self, issuer: str) -> Peer | None:
        return self.peers.get(issuer)

    def candidates(self, issuer: str, kid: str) -> Sequence[KeyRecord]:
        keys = self.sets.get(issuer)
        if keys is None or self._clock() > keys.usable_until:
            return ()
        return keys.by_kid.get(kid, ())

    def state(self, issuer: str) -> str:
        keys = self.sets.get(issuer)
        return MISSING if keys is None or not keys.state else keys.state

    def wants_refetch(self, issuer: str, kid: str) -> bool:
        """True (once per UNKNOWN_KID_REFETCH) when a token names a kid the peer's set lacks."""
        keys = self.sets.get(issuer)
        now = self._clock()
        if keys is None or kid in keys.by_kid or now - keys.last_kid_refetch < UNKNOWN_KID_REFETCH:
            return False
        keys.last_kid_refetch = now
        return True

    async def refresh(self, session: aiohttp.ClientSession, *, force: bool = False) -> None:
        """Fetch every peer's keys that are due (all of them with `force`), concurrently."""
        now = self._clock()
        due = [
            p
            for p in self.peers.values()
            if force or now >= max(self.sets[p.issuer].fresh_until, self.sets[p.issuer].next_attempt)
        ]
        if due:
            await asyncio.gather(*(self.fetch(session, peer) for peer in due))
        self._expire()

    async def fetch(self, session: aiohttp.ClientSession, peer: Peer) -> None:
        keys = self.sets.setdefault(peer.issuer, KeySet())
        headers = {"Accept": "application/jwk-set+json, application/json"}
        if keys.etag and keys.fetched:
            headers["If-None-Match"] = keys.etag
        try:
            async with session.get(
                peer.jwks_url,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=FETCH_TIMEOUT),
                allow_redirects=False,
            ) as response:
                if response.status == 304 and keys.fetched:
                    by_kid = keys.by_kid
                elif response.status == 200:
                    body = await response.content.read(MAX_JWKS_BYTES + 1)
                    if len(body) > MAX_JWKS_BYTES:
                        raise JwksError(f"JWKS larger than {MAX_JWKS_BYTES} bytes")
                    by_kid = key_records(orjson.loads(body), peer.algorithms)
                    keys.etag = response.headers.get("ETag")
                else:
                    raise JwksError(f"HTTP {response.status}")
                fresh = max_age(response.headers.get("Cache-Control"))
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError, JwksError) as exc:
            self._failed(peer, keys, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
            return
        now = self._clock()
        keys.by_kid = by_kid
        keys.fresh_until = now + fresh
        keys.usable_until = keys.fresh_until + self.max_stale
        keys.next_attempt = 0.0
        keys.retry = FIRST_RETRY
        keys.fetched = True
        keys.failing = False
        self.fetches[peer.issuer, "ok"] += 1
        self._set_state(peer.issuer, keys, FRESH, f"{sum(map(len, by_kid.values()))} keys")

    def _failed(self, peer: Peer, keys: KeySet, reason: str) -> None:
        now = self._clock()
        self.fetches[peer.issuer, "failed"] += 1
        keys.failing = True
        keys.next_attempt = now + keys.retry
        keys.retry = min(keys.retry * 2, MAX_RETRY)
        if not keys.fetched:
            self._set_state(peer.issuer, keys, MISSING, f"cannot fetch {peer.jwks_url}: {reason}")
        elif now > keys.usable_until:
            self._set_state(peer.issuer, keys, EXPIRED, f"cannot fetch {peer.jwks_url}: {reason}")
        else:
            until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(keys.usable_until))
            self._set_state(
                peer.issuer, keys, STALE, f"cannot fetch {peer.jwks_url}: {reason}; last good keys kept until {until}"
            )

    def _expire(self) -> None:
        now = self._clock()
        for issuer, keys in self.sets.items():
            if keys.fetched and keys.state != EXPIRED and now > keys.usable_until:
                self._set_state(
                    issuer, keys, EXPIRED, "last good keys expired; its tokens are refused until a fetch succeeds"
                )

    @staticmethod
    def _set_state(issuer: str, keys: KeySet, state: str, detail: str) -> None:
        if state == keys.state:
            return
        level = logging.INFO if state == FRESH else logging.WARNING
        log.log(level, "peer %s keys %s: %s", issuer, state, detail)
        keys.state = state
