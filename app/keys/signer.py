"""The process's view of the signing keys: one signer, every verification key, refreshed from Postgres.

A process signs only with the key Postgres says is active, and only if it holds that key's private half;
otherwise it refuses to sign (503) and says why (`problem`, shown by /readyz and /metrics). Verification
keys and the JWKS always follow Postgres, whatever this host holds, so a revocation applies everywhere.

A scheduled key takes over at its `activate_at` on the process's own clock, without waiting for the next
refresh: every host switches at the same moment, and none signs with a key Postgres has retired.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from app.http.problems import SigningUnavailable
from app.keys.lifecycle import SigningProblem, StoredKey, keys_from_pems, load_keys, promote_due, signing_problem
from signing.jws import STATUS_TYP, TokenSigner, TokenVerifier
from signing.keyring import KeyRing
from signing.records import ACTIVE, RETIRED

log = logging.getLogger(__name__)

# Retry-After of a refusal to sign: about how long an operator needs to notice and activate a key.
RETRY_AFTER_SECONDS = 30


class SignerState:
    def __init__(
        self,
        keys_dir: Path,
        issuer: str,
        token_ttl_seconds: int,
        env_pems: Sequence[bytes] = (),
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.keys_dir = keys_dir
        self.env_keys = keys_from_pems(env_pems)
        self.issuer = issuer
        self.token_ttl_seconds = token_ttl_seconds
        self._clock = clock
        self.keyring: KeyRing | None = None
        self.signer: TokenSigner | None = None
        self.verifier: TokenVerifier | None = None
        # Why this process cannot sign (None: it can), and when its keys were last read from Postgres.
        self.problem: SigningProblem | None = SigningProblem("not_loaded", "keys not read from Postgres yet")
        self.refreshed_at: float | None = None
        self._keys: list[StoredKey] = []
        self._switch_at = float("inf")  # the next scheduled activation this process knows of

    async def refresh(self, conn: asyncpg.Connection | asyncpg.Pool) -> None:
        """Re-read keys, promoting scheduled keys whose time has come. Verification keys always follow
        Postgres, so a revoked key is refused at once even when it was the only active one."""
        now = self._clock()
        keys = await load_keys(conn, self.keys_dir, self.env_keys)
        if any(k.activate_at is not None and k.activate_at <= now for k in keys):
            moment = datetime.fromtimestamp(now, UTC)
            if isinstance(conn, asyncpg.Pool):
                async with conn.acquire() as held:
                    await promote_due(held, moment)
            else:
                await promote_due(conn, moment)
            keys = await load_keys(conn, self.keys_dir, self.env_keys)
        self._keys = keys
        self.refreshed_at = now
        self._install(_as_of(keys, now))

    def scheduled_activations(self) -> list[float]:
        """When scheduled keys start signing (epoch seconds), for metrics."""
        return [k.activate_at for k in self._keys if k.activate_at is not None]

    def status_signer(self) -> TokenSigner:
        if self._clock() >= self._switch_at:
            self._install(_as_of(self._keys, self._clock()))
        if self.signer is None:
            raise self._refusal()
        return self.signer

    def signer_for(self, typ: str, ttl_seconds: int) -> TokenSigner:
        """A signer of another token type with the active key."""
        self.status_signer()
        assert self.keyring is not None
        return self.keyring.signer_for(typ, ttl_seconds)

    def _install(self, keys: list[StoredKey]) -> None:
        keyring = KeyRing([k.record for k in keys], self.token_ttl_seconds, issuer=self.issuer, now=self._clock)
        problem = signing_problem(keys)
        self.keyring = keyring
        self.verifier = TokenVerifier(keyring, self.issuer, typ=STATUS_TYP)
        self.signer = None if problem is not None else keyring.signer
        self._switch_at = min((k.activate_at for k in keys if k.activate_at is not None), default=float("inf"))
        if problem != self.problem:  # logged once per change, not at every refresh
            if problem is None:
                log.info("signing with key %s", keyring.active.kid)
            else:
                log.error("cannot sign tokens (%s): %s", problem.reason, problem.detail)
        self.problem = problem

    def _refusal(self) -> SigningUnavailable:
        assert self.problem is not None
        return SigningUnavailable(self.problem.reason, self.problem.detail, retry_after=RETRY_AFTER_SECONDS)


def _as_of(keys: list[StoredKey], now: float) -> list[StoredKey]:
    """The keys as they stand at `now`: a scheduled key whose time has come is active and the key it
    replaces retired as of that moment, exactly as `promote_due` will record it in Postgres."""
    due = sorted((k for k in keys if k.activate_at is not None and k.activate_at <= now), key=_activate_at)
    if not due:
        return keys
    successor = due[-1]
    switched = _activate_at(successor)
    result = []
    for key in keys:
        if key is successor:
            result.append(replace(key, record=replace(key.record, state=ACTIVE), activate_at=None))
        elif key.record.state == ACTIVE or key in due:
            # Replaced (or a scheduled key overtaken by a later one): retired when the successor took over.
            retired = replace(key.record, state=RETIRED, retired_at=int(switched), private_key=None)
            result.append(StoredKey(retired, None, None))
        else:
            result.append(key)
    return result


def _activate_at(key: StoredKey) -> float:
    assert key.activate_at is not None
    return key.activate_at
