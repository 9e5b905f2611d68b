"""The process's view of the signing keys: one signer, every verification key, refreshed from Postgres."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import asyncpg

from app.http.problems import DependencyUnavailable
from app.keys.lifecycle import keys_from_pems, load_keyring
from signing.jws import STATUS_TYP, TokenSigner, TokenVerifier
from signing.keyring import KeyRing, NoSigningKey

log = logging.getLogger(__name__)


class SignerState:
    def __init__(self, keys_dir: Path, issuer: str, token_ttl_seconds: int, env_pems: Sequence[bytes] = ()) -> None:
        self.keys_dir = keys_dir
        self.env_keys = keys_from_pems(env_pems)
        self.issuer = issuer
        self.token_ttl_seconds = token_ttl_seconds
        self.keyring: KeyRing | None = None
        self.signer: TokenSigner | None = None
        self.verifier: TokenVerifier | None = None

    async def refresh(self, conn: asyncpg.Connection | asyncpg.Pool) -> None:
        """Re-read keys. Verification keys always follow Postgres, so a revoked key is refused at once even
        when it was the only active one; signing then stops (503) until a key is activated."""
        keyring = await load_keyring(conn, self.keys_dir, self.token_ttl_seconds, self.issuer, self.env_keys)
        self.keyring = keyring
        self.verifier = TokenVerifier(keyring, self.issuer, typ=STATUS_TYP)
        try:
            self.signer = keyring.signer
        except NoSigningKey as exc:
            self.signer = None
            log.error("cannot sign tokens: %s; run `healthcode keys new --activate`", exc)

    def status_signer(self) -> TokenSigner:
        if self.signer is None:
            raise _no_signing_key()
        return self.signer

    def signer_for(self, typ: str, ttl_seconds: int) -> TokenSigner:
        """A signer of another token type with the active key."""
        if self.keyring is None or self.signer is None:
            raise _no_signing_key()
        return self.keyring.signer_for(typ, ttl_seconds)


def _no_signing_key() -> DependencyUnavailable:
    return DependencyUnavailable("no signing key is active; an operator must activate one", retry_after=30)
