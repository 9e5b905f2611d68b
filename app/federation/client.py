"""Asking the vaccination-source peers for a person's records, all at once, within a budget.

Each peer gets one POST of the federation pseudonym with a fresh assertion; its answer is a JWS signed
with its published key, checked like its tokens (its keys from the trust list) and bound to us (`aud`)
and to the person asked about (`fp`). A peer that fails (refused connection, error, bad signature) is
skipped for BREAKER_SECONDS, so a peer that is down costs one attempt per window, not one per status.
Whatever has not answered when the budget ends is cancelled and reported as not reached.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

import aiohttp
import orjson

from app.federation import identity
from app.federation.assertion import RECORDS_TYP, make_assertion
from app.federation.peers import Peer
from app.federation.records import PeerVaccination
from app.federation.trust import TrustedVerifier
from cache.breaker import Breaker
from signing.errors import BadToken
from signing.jws import TokenSigner, TokenVerifier

log = logging.getLogger(__name__)

PEER_VACCINATIONS_PATH: Final = "/v1/peer/vaccinations"
BREAKER_SECONDS: Final = 10.0
MAX_ANSWER_BYTES: Final = 256 * 1024
MAX_RECORDS_TOKEN: Final = 64 * 1024

TIMEOUT: Final = "timeout"
UNAVAILABLE: Final = "unavailable"  # connection refused or reset, or a 5xx
REFUSED: Final = "refused"  # the peer answered 4xx: it does not accept our request
BAD_ANSWER: Final = "bad_answer"  # unsigned, badly signed or not about this person
SKIPPED: Final = "skipped"  # failed recently; not asked again yet


class PeerFailure(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass(slots=True)
class Outcome:
    asked: list[str] = field(default_factory=list)
    reached: list[str] = field(default_factory=list)
    not_reached: dict[str, str] = field(default_factory=dict)  # issuer -> reason
    vaccinations: dict[str, list[PeerVaccination]] = field(default_factory=dict)  # issuer -> its records


class PeerClient:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        trust: TrustedVerifier,
        assertion_signer: Callable[[], TokenSigner],
    ) -> None:
        self.session = session
        self.trust = trust
        self._signer = assertion_signer
        self._breakers: dict[str, Breaker] = {}
        self.outcomes: Counter[tuple[str, str]] = Counter()  # (issuer, ok or reason), for /metrics

    async def vaccinations(self, peers: Sequence[Peer], federation_pseudonym: bytes, budget: float) -> Outcome:
        """Ask every peer at once; whatever has not answered within `budget` seconds is not reached."""
        outcome = Outcome(asked=[p.issuer for p in peers])
        tasks: dict[asyncio.Task[list[PeerVaccination]], Peer] = {}
        for peer in peers:
            breaker = self._breakers.setdefault(peer.issuer, Breaker(BREAKER_SECONDS))
            if not breaker.closed:
                outcome.not_reached[peer.issuer] = SKIPPED
                continue
            tasks[asyncio.create_task(self._ask(peer, federation_pseudonym))] = peer
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=budget)
            for task in pending:
                task.cancel()
            for task, peer in tasks.items():
                if task in pending:
                    self._failed(peer, outcome, TIMEOUT, f"no answer within {budget * 1000:.0f} ms")
                    continue
                try:
                    outcome.vaccinations[peer.issuer] = task.result()
                except PeerFailure as exc:
                    self._failed(peer, outcome, exc.reason, str(exc))
                else:
                    outcome.reached.append(peer.issuer)
                    self._breakers[peer.issuer].reset()
                    self.outcomes[peer.issuer, "ok"] += 1
            if pending:
                await asyncio.wait(pending)  # cancelled: returns at once, nothing left running
        return outcome

    def _failed(self, peer: Peer, outcome: Outcome, reason: str, detail: str) -> None:
        breaker = self._breakers[peer.issuer]
        if breaker.closed:  # one line per outage window, not per status answer
            log.warning(
                "peer %s not reached (%s): %s; not asked for %.0f s", peer.issuer, reason, detail, BREAKER_SECONDS
            )
        breaker.trip()
        outcome.not_reached[peer.issuer] = reason
        self.outcomes[peer.issuer, reason] += 1

    async def _ask(self, peer: Peer, federation_pseudonym: bytes) -> list[PeerVaccination]:
        assert peer.api_base_url is not None
        now = int(time.time())
        wire = identity.encode(federation_pseudonym)
        headers = {
            "Authorization": f"Bearer {make_assertion(self._signer(), peer.issuer, now)}",
            "Content-Type": "application/json",
        }
        url = peer.api_base_url.rstrip("/") + PEER_VACCINATIONS_PATH
        try:
            async with self.session.post(
                url, data=orjson.dumps({"federation_pseudonym": wire}), headers=headers, allow_redirects=False
            ) as response:
                body = await response.content.read(MAX_ANSWER_BYTES + 1)
                status = response.status
        except (aiohttp.ClientError, OSError) as exc:
            raise PeerFailure(UNAVAILABLE, f"{type(exc).__name__}: {exc}") from None
        if status >= 500:
            raise PeerFailure(UNAVAILABLE, f"HTTP {status}")
        if status != 200:
            raise PeerFailure(REFUSED, f"HTTP {status}: {body[:300]!r}")
        return await self._records(peer, body, wire)

    async def _records(self, peer: Peer, body: bytes, wire: str) -> list[PeerVaccination]:
        try:
            token = orjson.loads(body)["records"]
            if not isinstance(token, str):
                raise TypeError("records is not a string")
        except (ValueError, KeyError, TypeError) as exc:
            raise PeerFailure(BAD_ANSWER, f"not a records answer: {exc}") from None
        never = TokenVerifier(lambda kid: (), self.trust.own_issuer, RECORDS_TYP)
        try:
            verified = await self.trust.verify(
                token, RECORDS_TYP, never, int(time.time()), max_length=MAX_RECORDS_TOKEN
            )
        except BadToken as exc:
            raise PeerFailure(BAD_ANSWER, f"records refused ({exc.reason}): {exc}") from None
        claims = verified.claims
        if verified.issuer != peer.issuer or claims.get("aud") != self.trust.own_issuer or claims.get("fp") != wire:
            raise PeerFailure(BAD_ANSWER, "records signed for another peer, another audience or another person")
        raw = claims.get("vaccinations")
        if not isinstance(raw, list):
            raise PeerFailure(BAD_ANSWER, "vaccinations is not a list")
        try:
            return [PeerVaccination.from_claim(item) for item in raw]
        except ValueError as exc:
            raise PeerFailure(BAD_ANSWER, f"a vaccination is malformed: {exc}") from None
