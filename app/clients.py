"""API clients: secrets issued once, stored as hashes, and an in-process registry for the hot path."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from typing import Final

import asyncpg

from app.http.problems import Forbidden, Unauthenticated
from app.limits import rates_from_json, rates_to_json
from app.scopes import CLIENT_KINDS
from cache.rate_limit import Rate

_SECRET_PREFIX: Final = "hc_"
_HEADER_MEMO_LIMIT: Final = 1024


@dataclass(frozen=True, slots=True)
class Client:
    id: int
    name: str
    kind: str
    scopes: tuple[str, ...]
    # Request limits of this client that differ from its kind's (bucket, rate); usually none. Not part
    # of its identity: a client whose limits change is still the same client in the call counts.
    limits: tuple[tuple[str, Rate], ...] = field(default=(), compare=False)


@dataclass(frozen=True, slots=True)
class IssuedClient:
    client: Client
    secret: str  # shown once, never stored


def hash_secret(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


async def add_client(
    conn: asyncpg.Connection,
    name: str,
    kind: str,
    scopes: tuple[str, ...] = (),
    limits: dict[str, Rate] | None = None,
) -> IssuedClient:
    if kind not in CLIENT_KINDS:
        raise ValueError(f"kind must be one of {', '.join(CLIENT_KINDS)}")
    secret = _SECRET_PREFIX + secrets.token_urlsafe(32)
    stored = rates_to_json(limits or {})
    row = await conn.fetchrow(
        """INSERT INTO api_clients (name, kind, key_prefix, key_hash, scopes, rate_limits)
           VALUES ($1, $2, $3, $4, $5, $6) RETURNING id""",
        name,
        kind,
        secret[:8],
        hash_secret(secret),
        list(scopes),
        stored,
    )
    assert row is not None
    await conn.execute(
        "INSERT INTO audit_log (actor, action, detail) VALUES ('cli', 'client.add', $1)",
        {"client_id": row["id"], "name": name, "kind": kind, "scopes": list(scopes)}
        | ({"rate_limits": stored} if stored else {}),
    )
    return IssuedClient(Client(row["id"], name, kind, scopes, rates_from_json(stored)), secret)


async def set_client_limits(
    conn: asyncpg.Connection, name: str, limits: dict[str, Rate], reset: tuple[str, ...] = ()
) -> dict[str, Rate] | None:
    """Override some of a client's limits (and drop the overrides named in `reset`); every process
    applies them at its next refresh. Returns the client's overrides now, or None if no such client."""
    async with conn.transaction():
        row = await conn.fetchrow(
            "SELECT id, rate_limits FROM api_clients WHERE name = $1 AND revoked_at IS NULL FOR UPDATE", name
        )
        if row is None:
            return None
        rates = {bucket: rate for bucket, rate in rates_from_json(row["rate_limits"]) if bucket not in reset}
        rates.update(limits)
        await conn.execute("UPDATE api_clients SET rate_limits = $2 WHERE name = $1", name, rates_to_json(rates))
        await conn.execute(
            "INSERT INTO audit_log (actor, action, detail) VALUES ('cli', 'client.limit', $1)",
            {"client_id": row["id"], "name": name, "rate_limits": rates_to_json(rates)},
        )
    return rates


async def revoke_client(conn: asyncpg.Connection, name: str) -> bool:
    revoked = await conn.fetchval(
        "UPDATE api_clients SET revoked_at = now() WHERE name = $1 AND revoked_at IS NULL RETURNING id", name
    )
    if revoked is not None:
        await conn.execute(
            "INSERT INTO audit_log (actor, action, detail) VALUES ('cli', 'client.revoke', $1)",
            {"client_id": revoked, "name": name},
        )
    return revoked is not None


async def client_by_secret(conn: asyncpg.Connection, secret: str) -> Client | None:
    """The active client a key belongs to (a command acting as that client), or None."""
    row = await conn.fetchrow(
        "SELECT id, name, kind, scopes FROM api_clients WHERE key_hash = $1 AND revoked_at IS NULL",
        hash_secret(secret.strip()),
    )
    return None if row is None else Client(row["id"], row["name"], row["kind"], tuple(row["scopes"]))


async def list_clients(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT id, name, kind, key_prefix, scopes, rate_limits, created_at, revoked_at FROM api_clients ORDER BY id"
    )


class ClientRegistry:
    """Active clients by secret hash, held in memory so authentication costs one hash and one dict look-up.

    Reloaded every few seconds (`refresh`), so a new or revoked client takes effect on every process
    without a database round trip per request.
    """

    def __init__(self) -> None:
        self._by_hash: dict[bytes, Client] = {}
        # Accepted Authorization headers, so that a client's every request after its first costs one
        # dict look-up and no hash. Only headers of active clients get in; every refresh starts it anew,
        # so a revocation takes effect exactly as without it.
        self._by_header: dict[str, Client] = {}
        # Authorised calls per client, so every look-up is attributable to the client that made it
        # (exported by /metrics; per process). Keyed by the client object: ids outlive refreshes.
        self.calls: dict[Client, int] = {}

    async def refresh(self, conn: asyncpg.Connection | asyncpg.Pool) -> None:
        rows = await conn.fetch(
            "SELECT id, name, kind, key_hash, scopes, rate_limits FROM api_clients WHERE revoked_at IS NULL"
        )
        self._by_hash = {
            bytes(r["key_hash"]): Client(
                r["id"], r["name"], r["kind"], tuple(r["scopes"]), rates_from_json(r["rate_limits"])
            )
            for r in rows
        }
        self._by_header = {}

    def authenticate(self, authorization: str | None, *, kind: str | tuple[str, ...]) -> Client:
        """The client behind a `Bearer` header, which must be of `kind` (or one of several kinds)."""
        if not authorization:
            raise Unauthenticated("send the client key as 'Authorization: Bearer <key>'")
        client = self._by_header.get(authorization)
        if client is None:
            client = self._look_up(authorization)
            if len(self._by_header) >= _HEADER_MEMO_LIMIT:  # many spellings of few keys: start again
                self._by_header.clear()
            self._by_header[authorization] = client
        if client.kind != kind and (isinstance(kind, str) or client.kind not in kind):
            needed = kind if isinstance(kind, str) else " or ".join(kind)
            raise Forbidden(f"a {client.kind} client may not call this endpoint; it needs a {needed} client")
        self.calls[client] = self.calls.get(client, 0) + 1
        return client

    def _look_up(self, authorization: str) -> Client:
        scheme, _, secret = authorization.partition(" ")
        if scheme.lower() != "bearer" or not secret:
            raise Unauthenticated("the Authorization header must use the Bearer scheme")
        client = self._by_hash.get(hash_secret(secret.strip()))
        if client is None:
            raise Unauthenticated("the client key is unknown or revoked")
        return client
