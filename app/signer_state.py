"""The process's view of the signing keys: one signer, every verification key, refreshed from Postgres."""

from __future__ import annotations

from pathlib import Path

import asyncpg

from app.keys import load_keyring
from signing.jws import STATUS_TYP, TokenSigner, TokenVerifier
from signing.keyring import KeyRing


class SignerState:
    def __init__(self, keys_dir: Path, issuer: str, token_ttl_seconds: int) -> None:
        self.keys_dir = keys_dir
        self.issuer = issuer
        self.token_ttl_seconds = token_ttl_seconds
        self.keyring: KeyRing | None = None
        self.signer: TokenSigner | None = None
        self.verifier: TokenVerifier | None = None

    async def refresh(self, conn: asyncpg.Connection | asyncpg.Pool) -> None:
        """Re-read keys; raises NoSigningKey when there is no usable active key, keeping the old state."""
        keyring = await load_keyring(conn, self.keys_dir, self.token_ttl_seconds, self.issuer)
        signer = keyring.signer
        self.verifier = TokenVerifier(keyring, self.issuer, typ=STATUS_TYP)
        self.keyring, self.signer = keyring, signer
