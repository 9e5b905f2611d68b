"""Signing-key life cycle: private halves in files, public halves and states in Postgres."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import asyncpg

from signing.keyring import KeyRecord, KeyRing
from signing.keys import (
    ES256,
    PrivateKey,
    generate_private_key,
    jwk_thumbprint,
    load_private_key,
    private_key_from_pem,
    public_jwk,
    save_private_key,
    short_kid,
)


class KeyError_(LookupError):
    """A key reference matched no key, or more than one."""


def private_key_path(keys_dir: Path, thumbprint: str) -> Path:
    return keys_dir / f"{thumbprint}.pem"


async def new_key(conn: asyncpg.Connection, keys_dir: Path, alg: str = ES256, *, actor: str = "cli") -> str:
    """Generate a key, write its private half to a file, record it as `pending`; return its thumbprint."""
    private = generate_private_key(alg)
    jwk = public_jwk(private)
    thumbprint = jwk_thumbprint(jwk)
    kid = short_kid(thumbprint)
    keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    save_private_key(private, private_key_path(keys_dir, thumbprint))
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO signing_keys (thumbprint, kid, alg, public_jwk, state) VALUES ($1, $2, $3, $4, 'pending')",
            thumbprint,
            kid,
            alg,
            {**jwk, "kid": kid, "alg": alg, "use": "sig"},
        )
        await _audit(conn, actor, "key.new", thumbprint)
    return thumbprint


async def resolve(conn: asyncpg.Connection, ref: str) -> str:
    """The thumbprint of the one key whose thumbprint or kid starts with `ref`."""
    rows = await conn.fetch("SELECT thumbprint FROM signing_keys WHERE thumbprint LIKE $1 || '%' OR kid = $1", ref)
    if len(rows) != 1:
        raise KeyError_(f"{ref!r} matches {len(rows)} keys; give more of the thumbprint")
    return str(rows[0]["thumbprint"])


async def activate(conn: asyncpg.Connection, ref: str, *, actor: str = "cli") -> str:
    """Make a key the signing key; the previous one is retired (still published until its tokens expire)."""
    async with conn.transaction():
        thumbprint = await resolve(conn, ref)
        state = await conn.fetchval("SELECT state FROM signing_keys WHERE thumbprint = $1 FOR UPDATE", thumbprint)
        if state == "revoked":
            raise KeyError_("a revoked key cannot be activated")
        await conn.execute(
            "UPDATE signing_keys SET state = 'retired', retired_at = now() WHERE state = 'active' AND thumbprint <> $1",
            thumbprint,
        )
        await conn.execute(
            "UPDATE signing_keys SET state = 'active', activated_at = now(), retired_at = NULL WHERE thumbprint = $1",
            thumbprint,
        )
        await _audit(conn, actor, "key.activate", thumbprint)
    return thumbprint


async def retire(conn: asyncpg.Connection, ref: str, *, actor: str = "cli") -> str:
    async with conn.transaction():
        thumbprint = await resolve(conn, ref)
        updated = await conn.fetchval(
            """UPDATE signing_keys SET state = 'retired', retired_at = now()
               WHERE thumbprint = $1 AND state IN ('pending', 'active') RETURNING thumbprint""",
            thumbprint,
        )
        if updated is None:
            raise KeyError_("only a pending or active key can be retired")
        await _audit(conn, actor, "key.retire", thumbprint)
    return thumbprint


async def revoke(conn: asyncpg.Connection, ref: str, *, actor: str = "cli") -> str:
    """Withdraw a key at once: it is no longer published and its tokens no longer verify."""
    async with conn.transaction():
        thumbprint = await resolve(conn, ref)
        await conn.execute(
            "UPDATE signing_keys SET state = 'revoked', revoked_at = now() WHERE thumbprint = $1", thumbprint
        )
        await _audit(conn, actor, "key.revoke", thumbprint)
    return thumbprint


async def list_keys(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT thumbprint, kid, alg, state, created_at, activated_at, retired_at, revoked_at
           FROM signing_keys ORDER BY created_at"""
    )


def keys_from_pems(pems: Sequence[bytes]) -> dict[str, PrivateKey]:
    """Private keys given in the environment, by thumbprint."""
    found = {}
    for pem in pems:
        key = private_key_from_pem(pem)
        found[jwk_thumbprint(public_jwk(key))] = key
    return found


async def load_keyring(
    conn: asyncpg.Connection | asyncpg.Pool,
    keys_dir: Path,
    token_ttl_seconds: int,
    issuer: str,
    env_keys: Mapping[str, PrivateKey] | None = None,
) -> KeyRing:
    """Every key from Postgres; the private half only of the active key, from the environment
    (`env_keys`, by thumbprint) or else from its file in `keys_dir`."""
    rows = await conn.fetch(
        """SELECT thumbprint, kid, alg, public_jwk, state, extract(epoch FROM retired_at)::bigint AS retired_at
           FROM signing_keys"""
    )
    records = []
    for r in rows:
        private = None
        if r["state"] == "active":
            private = (env_keys or {}).get(r["thumbprint"]) or _key_file(keys_dir, r["thumbprint"], r["kid"])
        records.append(
            KeyRecord(
                kid=r["kid"],
                thumbprint=r["thumbprint"],
                alg=r["alg"],
                public_jwk=dict(r["public_jwk"]),
                state=r["state"],
                retired_at=r["retired_at"],
                private_key=private,
            )
        )
    return KeyRing(records, token_ttl_seconds, issuer=issuer)


def _key_file(keys_dir: Path, thumbprint: str, kid: str) -> PrivateKey:
    path = private_key_path(keys_dir, thumbprint)
    try:
        return load_private_key(path)
    except FileNotFoundError:
        raise KeyError_(
            f"the active key {kid} has no private key file {path} and is not in HEALTHCODE_SIGNING_KEYS; "
            "point HEALTHCODE_KEYS_DIR at it, or activate a key made here (`healthcode keys new --activate`)"
        ) from None


async def _audit(conn: asyncpg.Connection, actor: str, action: str, thumbprint: str) -> None:
    await conn.execute(
        "INSERT INTO audit_log (actor, action, detail) VALUES ($1, $2, $3)",
        actor,
        action,
        {"thumbprint": thumbprint},
    )
