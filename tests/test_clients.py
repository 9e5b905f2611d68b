"""API clients: secrets issued once and stored hashed; the in-memory registry that authenticates them."""

from __future__ import annotations

import hashlib

import asyncpg
import pytest

from app.clients import Client, ClientRegistry, add_client, hash_secret, list_clients, revoke_client
from app.http.problems import Forbidden, Unauthenticated
from app.scopes import CLIENT_KINDS


async def test_add_stores_only_a_hash_and_a_short_prefix(db: asyncpg.Connection) -> None:
    issued = await add_client(db, "cq-mini-program", "citizen-backend")
    assert issued.secret.startswith("hc_")
    assert len(issued.secret) >= 40
    row = await db.fetchrow("SELECT * FROM api_clients WHERE id = $1", issued.client.id)
    assert row is not None
    assert bytes(row["key_hash"]) == hashlib.sha256(issued.secret.encode()).digest() == hash_secret(issued.secret)
    assert row["key_prefix"] == issued.secret[:8]
    assert (row["name"], row["kind"], list(row["scopes"]), row["revoked_at"]) == (
        "cq-mini-program",
        "citizen-backend",
        [],
        None,
    )
    # The secret itself is nowhere in the row.
    assert all(issued.secret not in str(value) for value in dict(row).values())
    assert issued.client == Client(issued.client.id, "cq-mini-program", "citizen-backend", ())


async def test_every_secret_is_different(db: asyncpg.Connection) -> None:
    secrets = {(await add_client(db, f"scanner-{i}", "scanner")).secret for i in range(5)}
    assert len(secrets) == 5


async def test_agencies_carry_scopes(db: asyncpg.Connection) -> None:
    issued = await add_client(db, "cq-cdc", "agency", ("designation", "test"))
    assert issued.client.scopes == ("designation", "test")
    registry = ClientRegistry()
    await registry.refresh(db)
    assert registry.authenticate(f"Bearer {issued.secret}", kind="agency").scopes == ("designation", "test")


async def test_unknown_kind_is_refused(db: asyncpg.Connection) -> None:
    with pytest.raises(ValueError, match="kind must be one of citizen-backend, scanner, agency, operator"):
        await add_client(db, "x", "police")
    assert CLIENT_KINDS == ("citizen-backend", "scanner", "agency", "operator")


async def test_names_are_unique(db: asyncpg.Connection) -> None:
    await add_client(db, "gate-1", "scanner")
    with pytest.raises(asyncpg.UniqueViolationError):
        await add_client(db, "gate-1", "scanner")


async def test_list_and_revoke(db: asyncpg.Connection) -> None:
    await add_client(db, "a", "scanner")
    await add_client(db, "b", "citizen-backend")
    assert await revoke_client(db, "a")
    assert not await revoke_client(db, "a")  # already revoked
    assert not await revoke_client(db, "nobody")
    rows = await list_clients(db)
    assert [(r["name"], r["kind"], r["revoked_at"] is not None) for r in rows] == [
        ("a", "scanner", True),
        ("b", "citizen-backend", False),
    ]
    assert "key_hash" not in rows[0]  # a Record tests its column names


async def test_additions_and_revocations_are_audited(db: asyncpg.Connection) -> None:
    issued = await add_client(db, "audited-gate", "scanner")
    await revoke_client(db, "audited-gate")
    rows = await db.fetch(
        "SELECT actor, action, detail FROM audit_log WHERE (detail->>'client_id')::bigint = $1 ORDER BY id",
        issued.client.id,
    )
    assert [(r["actor"], r["action"]) for r in rows] == [("cli", "client.add"), ("cli", "client.revoke")]
    assert rows[0]["detail"] == {"client_id": issued.client.id, "name": "audited-gate", "kind": "scanner", "scopes": []}
    assert issued.secret not in str([dict(r) for r in rows])


# --- the registry ----------------------------------------------------------------------------------------


@pytest.fixture
async def registry_and_secrets(db: asyncpg.Connection) -> tuple[ClientRegistry, dict[str, str]]:
    secrets = {kind: (await add_client(db, f"reg-{kind}", kind)).secret for kind in CLIENT_KINDS}
    registry = ClientRegistry()
    await registry.refresh(db)
    return registry, secrets


async def test_authenticate_finds_the_client(registry_and_secrets: tuple[ClientRegistry, dict[str, str]]) -> None:
    registry, secrets = registry_and_secrets
    client = registry.authenticate(f"Bearer {secrets['scanner']}", kind="scanner")
    assert (client.name, client.kind) == ("reg-scanner", "scanner")
    # The scheme is case-insensitive (RFC 9110) and surrounding space is ignored.
    assert registry.authenticate(f"bearer  {secrets['scanner']} ", kind="scanner") == client


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (None, "send the client key as 'Authorization: Bearer <key>'"),
        ("", "send the client key as 'Authorization: Bearer <key>'"),
        ("Bearer", "the Authorization header must use the Bearer scheme"),
        ("Basic abc", "the Authorization header must use the Bearer scheme"),
        ("Bearer hc_unknown", "the client key is unknown or revoked"),
    ],
)
async def test_missing_or_wrong_keys_are_unauthenticated(
    registry_and_secrets: tuple[ClientRegistry, dict[str, str]], header: str | None, message: str
) -> None:
    registry, _ = registry_and_secrets
    with pytest.raises(Unauthenticated) as caught:
        registry.authenticate(header, kind="scanner")
    assert caught.value.detail == message
    assert caught.value.status == 401
    assert caught.value.headers == {"WWW-Authenticate": 'Bearer realm="healthcode"'}


async def test_a_key_of_another_kind_is_forbidden(registry_and_secrets: tuple[ClientRegistry, dict[str, str]]) -> None:
    registry, secrets = registry_and_secrets
    with pytest.raises(Forbidden, match="a citizen-backend client may not call this endpoint; it needs a scanner"):
        registry.authenticate(f"Bearer {secrets['citizen-backend']}", kind="scanner")


async def test_revocation_takes_effect_on_refresh(
    db: asyncpg.Connection, registry_and_secrets: tuple[ClientRegistry, dict[str, str]]
) -> None:
    registry, secrets = registry_and_secrets
    header = f"Bearer {secrets['scanner']}"
    assert registry.authenticate(header, kind="scanner")
    await revoke_client(db, "reg-scanner")
    assert registry.authenticate(header, kind="scanner")  # the in-memory view until the next refresh
    await registry.refresh(db)
    with pytest.raises(Unauthenticated):
        registry.authenticate(header, kind="scanner")
    # Others are untouched.
    assert registry.authenticate(f"Bearer {secrets['agency']}", kind="agency").name == "reg-agency"


async def test_a_new_client_is_known_after_refresh(
    db: asyncpg.Connection, registry_and_secrets: tuple[ClientRegistry, dict[str, str]]
) -> None:
    registry, _ = registry_and_secrets
    late = await add_client(db, "late", "scanner")
    with pytest.raises(Unauthenticated):
        registry.authenticate(f"Bearer {late.secret}", kind="scanner")
    await registry.refresh(db)
    assert registry.authenticate(f"Bearer {late.secret}", kind="scanner").name == "late"
