"""SMART Health Card keys: apart from the status-token keys, with a rotation of their own.

A card is kept for months or years, a status token for minutes, so their keys live differently: a card
key is ES256 (the only algorithm SMART Health Cards allow), its kid is the full RFC 7638 thumbprint (as
the specification requires), and a retired card key stays published until it is revoked, so that cards
it signed keep verifying. `healthcode credentials new | activate | retire | revoke | list`.
Private halves are files under `<HEALTHCODE_KEYS_DIR>/credentials/`, never in Postgres.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import asyncpg

from app.db import Conn
from signing.keys import (
    ES256,
    PrivateKey,
    generate_private_key,
    jwk_thumbprint,
    load_private_key,
    public_jwk,
    save_private_key,
)

log = logging.getLogger(__name__)

SUBDIR: Final = "credentials"
_PUBLIC: Final = ("kty", "crv", "x", "y")


class CredentialKeyError(ValueError):
    pass


def key_path(keys_dir: Path, thumbprint: str) -> Path:
    return keys_dir / SUBDIR / f"{thumbprint}.pem"


def shc_jwk(jwk: dict[str, Any], thumbprint: str) -> dict[str, str]:
    """The JWK as a SMART Health Card verifier wants it: kid = full thumbprint, use sig, alg ES256."""
    return {
        "kty": jwk["kty"],
        "kid": thumbprint,
        "use": "sig",
        "alg": ES256,
        "crv": jwk["crv"],
        "x": jwk["x"],
        "y": jwk["y"],
    }


async def new_key(conn: Conn, keys_dir: Path) -> str:
    private = generate_private_key(ES256)
    jwk = {k: public_jwk(private)[k] for k in _PUBLIC}
    thumbprint = jwk_thumbprint(jwk)
    (keys_dir / SUBDIR).mkdir(mode=0o700, parents=True, exist_ok=True)
    save_private_key(private, key_path(keys_dir, thumbprint))
    await conn.execute(
        "INSERT INTO credential_keys (thumbprint, public_jwk, state) VALUES ($1, $2, 'pending')", thumbprint, jwk
    )
    return thumbprint


async def _resolve(conn: Conn, ref: str) -> str:
    rows = await conn.fetch("SELECT thumbprint FROM credential_keys WHERE thumbprint LIKE $1 || '%'", ref)
    if len(rows) != 1:
        raise CredentialKeyError(f"{len(rows)} credential keys match {ref!r}; give more of the thumbprint")
    return str(rows[0]["thumbprint"])


async def activate(conn: Conn, ref: str) -> str:
    """Make a pending key the signer; the one it replaces is retired (still published)."""
    thumbprint = await _resolve(conn, ref)
    async with conn.transaction():
        state = await conn.fetchval("SELECT state FROM credential_keys WHERE thumbprint = $1 FOR UPDATE", thumbprint)
        if state not in ("pending", "active"):
            raise CredentialKeyError(f"key {thumbprint[:12]} is {state}; only a pending key can be activated")
        await conn.execute(
            """UPDATE credential_keys SET state = 'retired', retired_at = now()
               WHERE state = 'active' AND thumbprint <> $1""",
            thumbprint,
        )
        await conn.execute(
            "UPDATE credential_keys SET state = 'active', activated_at = now() WHERE thumbprint = $1", thumbprint
        )
    return thumbprint


async def set_state(conn: Conn, ref: str, state: str) -> str:
    """Retire (keeps verifying: cards it signed stay valid) or revoke (withdrawn from the JWKS at once)."""
    if state not in ("retired", "revoked"):
        raise ValueError(state)
    thumbprint = await _resolve(conn, ref)
    column = "retired_at" if state == "retired" else "revoked_at"
    await conn.execute(
        f"UPDATE credential_keys SET state = $2, {column} = now() WHERE thumbprint = $1", thumbprint, state
    )
    return thumbprint


async def list_keys(conn: Conn) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT thumbprint, state, created_at, activated_at FROM credential_keys ORDER BY created_at"
    )


@dataclass(frozen=True, slots=True)
class Signer:
    kid: str  # the full thumbprint
    private_key: PrivateKey


class CredentialKeys:
    """A process's view: the published card keys and, if this host holds it, the active private key."""

    def __init__(self, keys_dir: Path) -> None:
        self.keys_dir = keys_dir
        self.published: list[dict[str, str]] = []
        self.signer: Signer | None = None
        self.problem: str | None = "credential keys not read yet"

    async def refresh(self, pool: asyncpg.Pool | Conn) -> None:
        rows = await pool.fetch("SELECT thumbprint, public_jwk, state FROM credential_keys WHERE state <> 'revoked'")
        self.published = [shc_jwk(dict(r["public_jwk"]), r["thumbprint"]) for r in rows]
        active = [r["thumbprint"] for r in rows if r["state"] == "active"]
        signer, problem = None, None
        if not active:
            problem = "no active credential key (healthcode credentials new, then activate)"
        elif self.signer is not None and self.signer.kid == active[0]:
            signer = self.signer
        else:
            try:
                signer = Signer(active[0], load_private_key(key_path(self.keys_dir, active[0])))
            except (OSError, ValueError) as exc:
                problem = f"the active credential key {active[0][:12]} cannot be loaded here: {exc}"
        if problem != self.problem and problem is not None:
            log.info("cannot sign health cards: %s", problem)
        self.signer, self.problem = signer, problem
