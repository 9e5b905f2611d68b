"""The set of keys a process knows: the one that signs, the ones that verify, the ones to publish.

Rotation: a new key is added as ``pending`` (published, so scanners fetch it before it signs), then made
``active`` while the old one becomes ``retired`` with ``retired_at``. A retired key keeps verifying, and
stays published, until ``retired_at + token_ttl_seconds``, when every token it signed has expired; after
that it is dropped, so a retired key that leaks later cannot mint tokens that verify. A ``revoked`` key is
dropped at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence

from signing.jws import STATUS_TYP, TokenSigner
from signing.records import ACTIVE, RETIRED, REVOKED, KeyRecord

__all__ = ["KeyRecord", "KeyRing", "NoSigningKey"]


class NoSigningKey(RuntimeError):
    """The ring cannot sign: no active key, several, or the active key's private key is not loaded."""


class KeyRing:
    """Immutable view of the keys; build a new ring when key metadata changes.

    ``token_ttl_seconds`` must be the longest lifetime of any token signed with these keys. ``now`` is
    the clock used to drop retired keys from verification.
    """

    __slots__ = ("_by_kid", "_issuer", "_now", "_records", "_signer", "_signer_error", "token_ttl_seconds")

    def __init__(
        self,
        records: Iterable[KeyRecord],
        token_ttl_seconds: int,
        *,
        issuer: str,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._records = tuple(records)
        self.token_ttl_seconds = token_ttl_seconds
        self._issuer = issuer
        self._now = now
        thumbprints = [r.thumbprint for r in self._records]
        if len(set(thumbprints)) != len(thumbprints):
            raise ValueError("the same key appears twice in the key ring")
        by_kid: dict[str, list[KeyRecord]] = {}
        for record in self._records:
            if record.state != REVOKED:
                by_kid.setdefault(record.kid, []).append(record)
        self._by_kid = {kid: tuple(found) for kid, found in by_kid.items()}

        active = [r for r in self._records if r.state == ACTIVE]
        self._signer: TokenSigner | None = None
        self._signer_error = ""
        if len(active) != 1:
            kids = ", ".join(r.kid for r in active) or "none"
            self._signer_error = f"expected exactly one active key, found {len(active)} ({kids})"
        elif active[0].private_key is None:
            self._signer_error = f"active key {active[0].kid} has no private key loaded"
        else:
            self._signer = TokenSigner(active[0], issuer, token_ttl_seconds, STATUS_TYP)

    @property
    def records(self) -> tuple[KeyRecord, ...]:
        return self._records

    @property
    def active(self) -> KeyRecord:
        if self._signer is None:
            raise NoSigningKey(self._signer_error)
        return next(r for r in self._records if r.state == ACTIVE)

    @property
    def signer(self) -> TokenSigner:
        """The status-token signer of the active key, built once."""
        if self._signer is None:
            raise NoSigningKey(self._signer_error)
        return self._signer

    def signer_for(self, typ: str, ttl_seconds: int) -> TokenSigner:
        """A signer for another kind of token with the active key; ``ttl_seconds`` <= the ring's TTL."""
        if ttl_seconds > self.token_ttl_seconds:
            raise ValueError("a token must not outlive the key ring's publication window")
        return TokenSigner(self.active, self._issuer, ttl_seconds, typ)

    def _live(self, record: KeyRecord, now: float) -> bool:
        return record.state != RETIRED or (
            record.retired_at is not None and now <= record.retired_at + self.token_ttl_seconds
        )

    def published(self, now: float | None = None) -> list[KeyRecord]:
        """Keys to publish in the JWKS: every non-revoked key until its last token has expired."""
        at = self._now() if now is None else now
        return [r for r in self._records if r.state != REVOKED and self._live(r, at)]

    def candidates(self, kid: str) -> Sequence[KeyRecord]:
        """Every key that may have signed a token with this kid; the verifier tries each."""
        found = self._by_kid.get(kid, ())
        if any(r.state == RETIRED for r in found):
            at = self._now()
            return [r for r in found if self._live(r, at)]
        return found
