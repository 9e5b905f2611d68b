"""Signing-key life cycle: private halves in files, public halves and states in Postgres.

Activation can be scheduled: a pending key with `activate_at` becomes the signing key at that moment
(`promote_due`, run by every process as it refreshes its keys). By default (`schedule_activation`) a
new key is published for at least JWKS_MAX_AGE_SECONDS plus one refresh interval before it signs, so
every scanner's cached key set holds it before the first token it signed reaches a gate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Final

import asyncpg

from app.db import Conn
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

# How long scanners may cache /.well-known/jwks.json (its Cache-Control max-age).
JWKS_MAX_AGE_SECONDS: Final = 60

# Why a process cannot sign, as stable codes for /readyz, /metrics and problem answers.
NO_ACTIVE_KEY: Final = "no_active_key"
PRIVATE_KEY_MISSING: Final = "private_key_missing"
PRIVATE_KEY_UNUSABLE: Final = "private_key_unusable"


class KeyError_(LookupError):
    """A key reference matched no key, or more than one."""


@dataclass(frozen=True, slots=True)
class SigningProblem:
    """Why this process cannot sign with the key Postgres says is active: `reason` is a stable code."""

    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class StoredKey:
    """A key as Postgres holds it; `record.private_key` is set when this process holds the private half
    of an active or scheduled key, and `missing` says why it does not."""

    record: KeyRecord
    activate_at: float | None  # epoch seconds, for a scheduled pending key
    missing: SigningProblem | None = None


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


async def resolve(conn: Conn, ref: str) -> str:
    """The thumbprint of the one key whose thumbprint or kid starts with `ref`."""
    rows = await conn.fetch("SELECT thumbprint FROM signing_keys WHERE thumbprint LIKE $1 || '%' OR kid = $1", ref)
    if len(rows) != 1:
        raise KeyError_(f"{ref!r} matches {len(rows)} keys; give more of the thumbprint")
    return str(rows[0]["thumbprint"])


async def activate(conn: Conn, ref: str, *, actor: str = "cli") -> str:
    """Make a key the signing key now; the previous one is retired (still published until its tokens
    expire). Operators schedule instead (`schedule_activation`), so scanners hold the key first."""
    async with conn.transaction():
        thumbprint = await resolve(conn, ref)
        await _lock_activatable(conn, thumbprint)
        await _switch(conn, thumbprint, None)
        await _audit(conn, actor, "key.activate", thumbprint)
    return thumbprint


@dataclass(frozen=True, slots=True)
class Activation:
    thumbprint: str
    at: datetime
    scheduled: bool  # False: it signs already


async def schedule_activation(
    conn: Conn,
    ref: str,
    *,
    now: datetime,
    at: datetime | None = None,
    lead: timedelta = timedelta(seconds=JWKS_MAX_AGE_SECONDS),
    actor: str = "cli",
) -> Activation:
    """Make a key the signing key at `at`; by default as soon as it has been published for `lead`.

    With no key signing, the default is now: no scanner can hold a stale key set for a key that signs
    nothing, and waiting would only prolong the outage. A time in the past means now.
    """
    async with conn.transaction():
        thumbprint = await resolve(conn, ref)
        state, created_at = await _lock_activatable(conn, thumbprint)
        if at is None:
            signing = await conn.fetchval("SELECT thumbprint FROM signing_keys WHERE state = 'active'")
            # A pending key has been published since it was made; a retired one may have been dropped.
            published_since = created_at if state == "pending" else now
            at = now if signing is None else max(now, published_since + lead)
        if at <= now:
            await _switch(conn, thumbprint, None)
            await _audit(conn, actor, "key.activate", thumbprint)
            return Activation(thumbprint, now, scheduled=False)
        await conn.execute(
            """UPDATE signing_keys SET state = 'pending', retired_at = NULL, activate_at = $2
               WHERE thumbprint = $1""",
            thumbprint,
            at,
        )
        await _audit(conn, actor, "key.schedule", thumbprint, activate_at=at.isoformat())
    return Activation(thumbprint, at, scheduled=True)


async def promote_due(conn: Conn, now: datetime) -> list[str]:
    """Activate every scheduled key whose time has come, in order, each as of its own `activate_at`, so
    the outcome is the same whichever process runs it and however late. Returns their thumbprints."""
    promoted = []
    async with conn.transaction():
        # FOR UPDATE: a second process waits, then finds the rows no longer pending and does nothing.
        due = await conn.fetch(
            """SELECT thumbprint, activate_at FROM signing_keys
               WHERE state = 'pending' AND activate_at <= $1 ORDER BY activate_at FOR UPDATE""",
            now,
        )
        for row in due:
            await _switch(conn, row["thumbprint"], row["activate_at"])
            await _audit(conn, "schedule", "key.activate", row["thumbprint"])
            promoted.append(str(row["thumbprint"]))
    return promoted


async def _lock_activatable(conn: Conn, thumbprint: str) -> tuple[str, datetime]:
    row = await conn.fetchrow("SELECT state, created_at FROM signing_keys WHERE thumbprint = $1 FOR UPDATE", thumbprint)
    assert row is not None
    if row["state"] == "revoked":
        raise KeyError_("a revoked key cannot be activated")
    return str(row["state"]), row["created_at"]


async def _switch(conn: Conn, thumbprint: str, at: datetime | None) -> None:
    """The key signs from `at` (None: the database's now) and the one that signed before is retired then."""
    await conn.execute(
        """UPDATE signing_keys SET state = 'retired', retired_at = coalesce($2, now())
           WHERE state = 'active' AND thumbprint <> $1""",
        thumbprint,
        at,
    )
    await conn.execute(
        """UPDATE signing_keys SET state = 'active', activated_at = coalesce($2, now()), retired_at = NULL,
                                   activate_at = NULL
           WHERE thumbprint = $1""",
        thumbprint,
        at,
    )


async def retire(conn: asyncpg.Connection, ref: str, *, actor: str = "cli") -> str:
    async with conn.transaction():
        thumbprint = await resolve(conn, ref)
        updated = await conn.fetchval(
            """UPDATE signing_keys SET state = 'retired', retired_at = now(), activate_at = NULL
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
            "UPDATE signing_keys SET state = 'revoked', revoked_at = now(), activate_at = NULL WHERE thumbprint = $1",
            thumbprint,
        )
        await _audit(conn, actor, "key.revoke", thumbprint)
    return thumbprint


async def list_keys(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT thumbprint, kid, alg, state, created_at, activate_at, activated_at, retired_at, revoked_at
           FROM signing_keys ORDER BY created_at"""
    )


def keys_from_pems(pems: Sequence[bytes]) -> dict[str, PrivateKey]:
    """Private keys given in the environment, by thumbprint."""
    found = {}
    for pem in pems:
        key = private_key_from_pem(pem)
        found[jwk_thumbprint(public_jwk(key))] = key
    return found


async def load_keys(
    conn: asyncpg.Connection | asyncpg.Pool, keys_dir: Path, env_keys: Mapping[str, PrivateKey] | None = None
) -> list[StoredKey]:
    """Every key from Postgres, with the private half of the active and scheduled keys when this process
    holds it: from the environment (`env_keys`, by thumbprint) or else from its file in `keys_dir`.
    Never raises for a key this host lacks: the caller must see the database's state either way."""
    rows = await conn.fetch(
        """SELECT thumbprint, kid, alg, public_jwk, state, extract(epoch FROM retired_at)::bigint AS retired_at,
                  extract(epoch FROM activate_at)::float8 AS activate_at
           FROM signing_keys"""
    )
    found = []
    for r in rows:
        private, missing = None, None
        if r["state"] == "active" or r["activate_at"] is not None:
            private = (env_keys or {}).get(r["thumbprint"])
            if private is None:
                private, missing = _key_file(keys_dir, r["thumbprint"], r["kid"])

        def record(private: PrivateKey | None, r: asyncpg.Record = r) -> KeyRecord:
            return KeyRecord(
                kid=r["kid"],
                thumbprint=r["thumbprint"],
                alg=r["alg"],
                public_jwk=dict(r["public_jwk"]),
                state=r["state"],
                retired_at=r["retired_at"],
                private_key=private,
            )

        try:
            key = record(private)
        except ValueError as exc:  # a private key that is not this key's
            key, missing = record(None), SigningProblem(PRIVATE_KEY_UNUSABLE, f"key {r['kid']}: {exc}")
        found.append(StoredKey(key, r["activate_at"], missing))
    return found


def signing_problem(keys: Sequence[StoredKey]) -> SigningProblem | None:
    """Why the key Postgres says is active cannot sign here, or None when it can."""
    active = [k for k in keys if k.record.state == "active"]
    if not active:
        return SigningProblem(
            NO_ACTIVE_KEY, "no signing key is active; an operator must activate one (`healthcode keys activate`)"
        )
    return active[0].missing


async def load_keyring(
    conn: asyncpg.Connection | asyncpg.Pool,
    keys_dir: Path,
    token_ttl_seconds: int,
    issuer: str,
    env_keys: Mapping[str, PrivateKey] | None = None,
) -> KeyRing:
    """The key ring as Postgres has it now; it cannot sign when this host lacks the active private key."""
    keys = await load_keys(conn, keys_dir, env_keys)
    return KeyRing([k.record for k in keys], token_ttl_seconds, issuer=issuer)


def _key_file(keys_dir: Path, thumbprint: str, kid: str) -> tuple[PrivateKey | None, SigningProblem | None]:
    path = private_key_path(keys_dir, thumbprint)
    try:
        return load_private_key(path), None
    except FileNotFoundError:
        return None, SigningProblem(
            PRIVATE_KEY_MISSING,
            f"key {kid} is not held by this host: no file {path} and not in HEALTHCODE_SIGNING_KEYS; "
            "copy its private key here, or activate a key this host holds",
        )
    except (OSError, ValueError, TypeError) as exc:
        detail = f"key {kid}: the private key file {path} cannot be used: {exc}"
        return None, SigningProblem(PRIVATE_KEY_UNUSABLE, detail)


async def _audit(conn: Conn, actor: str, action: str, thumbprint: str, **detail: str) -> None:
    await conn.execute(
        "INSERT INTO audit_log (actor, action, detail) VALUES ($1, $2, $3)",
        actor,
        action,
        {"thumbprint": thumbprint, **detail},
    )
