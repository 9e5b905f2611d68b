"""Scheduled key activation, on an injected clock: a new key is published before it signs, every
process switches at the scheduled moment (not at its next refresh), and Postgres records the switch."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from app.http.problems import SigningUnavailable
from app.keys import lifecycle as keys
from app.keys.signer import SignerState
from app.settings import Settings


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def signing_kid(state: SignerState) -> str | None:
    return state.signer.kid if state.signer is not None and state.problem is None else None


async def created_at(db: asyncpg.Connection, thumbprint: str) -> datetime:
    value = await db.fetchval("SELECT created_at FROM signing_keys WHERE thumbprint = $1", thumbprint)
    assert isinstance(value, datetime)
    return value


async def states(db: asyncpg.Connection) -> dict[str, tuple[str, datetime | None]]:
    rows = await db.fetch("SELECT thumbprint, state, retired_at FROM signing_keys")
    return {r["thumbprint"]: (r["state"], r["retired_at"]) for r in rows}


async def test_by_default_a_new_key_is_published_for_the_jwks_max_age_before_it_signs(
    db: asyncpg.Connection, settings: Settings, signing_key: str, tmp_path: Path
) -> None:
    new = await keys.new_key(db, settings.keys_dir)
    made = await created_at(db, new)
    clock = Clock(made.timestamp() + 1)
    host_a = SignerState(settings.keys_dir, "healthcode", 300, clock=clock)
    # Host B holds only the old key: at the switch it must stop signing, not carry on with a retired key.
    (tmp_path / "b").mkdir()
    keys.private_key_path(settings.keys_dir, signing_key).rename(keys.private_key_path(tmp_path / "b", signing_key))
    host_b = SignerState(tmp_path / "b", "healthcode", 300, clock=clock)

    activation = await keys.schedule_activation(db, new, now=datetime.fromtimestamp(clock.now, UTC))
    assert activation.scheduled
    assert activation.at == made + timedelta(seconds=keys.JWKS_MAX_AGE_SECONDS)
    switch = activation.at.timestamp()

    await host_a.refresh(db)
    await host_b.refresh(db)
    assert (await states(db))[new] == ("pending", None)
    assert host_a.problem is not None  # A holds the new key only; the old one is not here any more
    assert signing_kid(host_b) == signing_key[:8]
    # Published from the start, on both hosts, so scanners fetch it before it signs.
    for host in (host_a, host_b):
        assert host.keyring is not None
        assert {r.kid for r in host.keyring.published()} == {signing_key[:8], new[:8]}

    clock.now = switch - 0.001
    assert host_b.status_signer().kid == signing_key[:8]

    # At the moment itself, without a refresh: A signs with the new key, B refuses instead of signing
    # with the key Postgres is about to call retired.
    clock.now = switch
    assert host_a.status_signer().kid == new[:8]
    assert host_a.problem is None
    assert signing_kid(host_b) == signing_key[:8]  # not yet asked...
    with pytest.raises(SigningUnavailable) as refused:
        host_b.status_signer()
    assert refused.value.extra == {"reason": "private_key_missing"}

    # The next refresh records the switch, as of the scheduled moment, whoever runs it and however late.
    clock.now = switch + 3
    await host_b.refresh(db)
    await host_a.refresh(db)
    recorded = await states(db)
    assert recorded[new] == ("active", None)
    assert recorded[signing_key] == ("retired", activation.at)
    assert host_a.status_signer().kid == new[:8]
    actors = await db.fetch("SELECT actor, action FROM audit_log WHERE detail->>'thumbprint' = $1 ORDER BY id", new)
    assert [(r["actor"], r["action"]) for r in actors] == [
        ("cli", "key.new"),
        ("cli", "key.schedule"),
        ("schedule", "key.activate"),
    ]


async def test_activation_at_a_time_or_after_a_duration(
    db: asyncpg.Connection, settings: Settings, signing_key: str
) -> None:
    new = await keys.new_key(db, settings.keys_dir)
    now = await created_at(db, new) + timedelta(hours=1)  # published long ago: the default is now...
    at = now + timedelta(minutes=10)
    scheduled = await keys.schedule_activation(db, new, now=now, at=at)  # ...but the operator chose a time
    assert (scheduled.scheduled, scheduled.at) == (True, at)
    assert await db.fetchval("SELECT activate_at FROM signing_keys WHERE thumbprint = $1", new) == at

    assert await keys.promote_due(db, at - timedelta(seconds=1)) == []
    assert await keys.promote_due(db, at) == [new]
    assert await keys.promote_due(db, at) == []  # a second process finds nothing left to do
    assert {t: s for t, (s, _) in (await states(db)).items()} == {signing_key: "retired", new: "active"}


async def test_with_no_key_signing_the_default_is_at_once(db: asyncpg.Connection, settings: Settings) -> None:
    first = await keys.new_key(db, settings.keys_dir)
    activation = await keys.schedule_activation(db, first, now=await created_at(db, first))
    assert not activation.scheduled
    assert (await states(db))[first][0] == "active"


async def test_a_scheduled_key_that_is_revoked_or_retired_never_signs(
    db: asyncpg.Connection, settings: Settings, signing_key: str
) -> None:
    new = await keys.new_key(db, settings.keys_dir)
    now = await created_at(db, new)
    await keys.schedule_activation(db, new, now=now, at=now + timedelta(minutes=5))
    await keys.revoke(db, new)
    assert await keys.promote_due(db, now + timedelta(hours=1)) == []
    assert {t: s for t, (s, _) in (await states(db)).items()} == {signing_key: "active", new: "revoked"}
