"""The `healthcode` command line, run through app.cli.main with its configuration in the environment.

main() runs its own event loop (asyncio.run), so each call runs in a worker thread of the test's loop.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis

from app.cli import main
from app.cli.keys import key_refs_as_operands
from app.clients import hash_secret
from app.db import load_migrations
from app.dev.population import synthetic_people
from app.identity import resident_check_char
from app.keys import lifecycle as keys
from app.scopes import CLIENT_KINDS
from app.settings import Settings, SettingsError
from app.statuses.stored import STATUS_QUERY, entry_from_row
from cache.entry import unpack
from cache.keys import status_field
from signing.keyring import NoSigningKey
from tests.conftest import AppFactory
from tests.support import bearer, cached_statuses

Run = Callable[..., Coroutine[Any, Any, tuple[int, str, str]]]


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> pytest.MonkeyPatch:
    for name in (
        "HEALTHCODE_PEPPER_FILE",
        "HEALTHCODE_HANDLE_KEY_FILE",
        "HEALTHCODE_TOKEN_TTL_SECONDS",
        "HEALTHCODE_RULESET",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    monkeypatch.setenv("REDIS_URL", settings.redis_url)
    monkeypatch.setenv("HEALTHCODE_PEPPER", settings.pepper.hex())
    monkeypatch.setenv("HEALTHCODE_HANDLE_KEY", settings.handle_key.hex())
    monkeypatch.setenv("HEALTHCODE_KEYS_DIR", str(settings.keys_dir))
    return monkeypatch


@pytest.fixture
def run(env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Run:
    """Run `healthcode ARGS...`; returns (exit code, stdout, stderr)."""

    async def call(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = await asyncio.to_thread(main, list(args))
        out, err = capsys.readouterr()
        return code, out, err

    return call


# --- configuration ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("DATABASE_URL", "", "DATABASE_URL is not set"),
        ("REDIS_URL", " ", "REDIS_URL is not set"),
        ("HEALTHCODE_KEYS_DIR", "", "HEALTHCODE_KEYS_DIR is not set"),
        ("HEALTHCODE_PEPPER", "not-hex", "HEALTHCODE_PEPPER must be hex"),
        ("HEALTHCODE_PEPPER", "00ff", "HEALTHCODE_PEPPER must hold at least 16 bytes of secret"),
        ("HEALTHCODE_HANDLE_KEY", "zz", "HEALTHCODE_HANDLE_KEY must be hex"),
        (
            "HEALTHCODE_HANDLE_KEY",
            "00" * 20,
            "HEALTHCODE_HANDLE_KEY must hold an AES key of 16, 24 or 32 bytes, not 20",
        ),
        ("HEALTHCODE_TOKEN_TTL_SECONDS", "five", "HEALTHCODE_TOKEN_TTL_SECONDS must be an integer, got 'five'"),
        ("HEALTHCODE_TOKEN_TTL_SECONDS", "5", "HEALTHCODE_TOKEN_TTL_SECONDS must be between 30 and 3600, got 5"),
        ("HEALTHCODE_MAX_BODY_BYTES", "10", "HEALTHCODE_MAX_BODY_BYTES must be between 1024 and 1073741824, got 10"),
    ],
)
async def test_a_configuration_error_names_the_variable(
    run: Run, env: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    env.setenv(name, value)
    code, out, err = await run("migrate")
    assert (code, out) == (2, "")
    assert err == f"healthcode: configuration error: {message}\n"


async def test_pepper_is_required_from_the_variable_or_a_file(
    run: Run, env: pytest.MonkeyPatch, tmp_path: Path, settings: Settings
) -> None:
    env.delenv("HEALTHCODE_PEPPER")
    code, _, err = await run("migrate")
    assert code == 2
    assert "set HEALTHCODE_PEPPER (hex) or HEALTHCODE_PEPPER_FILE" in err
    env.setenv("HEALTHCODE_PEPPER_FILE", str(tmp_path / "missing"))
    code, _, err = await run("migrate")
    assert code == 2
    assert "HEALTHCODE_PEPPER_FILE cannot be read" in err
    pepper_file = tmp_path / "pepper"
    pepper_file.write_bytes(b"s" * 32 + b"\n")  # as `echo` writes it: the final line ending is not secret
    env.setenv("HEALTHCODE_PEPPER_FILE", str(pepper_file))
    assert Settings.from_env().pepper == b"s" * 32


async def test_handle_key_is_required_from_the_variable_or_a_file(
    run: Run, env: pytest.MonkeyPatch, tmp_path: Path, settings: Settings
) -> None:
    env.delenv("HEALTHCODE_HANDLE_KEY")
    code, _, err = await run("migrate")
    assert code == 2
    assert "set HEALTHCODE_HANDLE_KEY (hex) or HEALTHCODE_HANDLE_KEY_FILE" in err
    key_file = tmp_path / "handle-key"
    key_file.write_bytes(settings.handle_key[:7])
    env.setenv("HEALTHCODE_HANDLE_KEY_FILE", str(key_file))
    code, _, err = await run("migrate")
    assert code == 2
    assert "HEALTHCODE_HANDLE_KEY_FILE must hold an AES key of 16, 24 or 32 bytes, not 7" in err
    key_file.write_bytes(settings.handle_key)
    assert Settings.from_env().handle_key == settings.handle_key


def test_settings_repr_shows_no_secret() -> None:
    settings = Settings.from_env(
        {
            "DATABASE_URL": "postgresql://x/y",
            "REDIS_URL": "redis://x",
            "HEALTHCODE_PEPPER": "ab" * 16,
            "HEALTHCODE_HANDLE_KEY": "cd" * 32,
            "HEALTHCODE_KEYS_DIR": "/k",
        }
    )
    shown = repr(settings)
    assert "keys_dir=PosixPath('/k')" in shown  # the repr is there, only the secrets are not
    for secret in (settings.pepper, settings.handle_key):
        assert secret.hex() not in shown and repr(secret) not in shown
    assert "pepper" not in shown and "handle_key" not in shown


def test_settings_from_a_mapping() -> None:
    env = {"DATABASE_URL": "postgresql://x/y", "REDIS_URL": "redis://x", "HEALTHCODE_PEPPER": "ab" * 16}
    with pytest.raises(SettingsError, match="HEALTHCODE_KEYS_DIR is not set"):
        Settings.from_env(env)
    with pytest.raises(SettingsError, match="set HEALTHCODE_HANDLE_KEY"):
        Settings.from_env({**env, "HEALTHCODE_KEYS_DIR": "/k"})
    env["HEALTHCODE_HANDLE_KEY"] = "00" * 32
    settings = Settings.from_env({**env, "HEALTHCODE_KEYS_DIR": "/k", "HEALTHCODE_TOKEN_TTL_SECONDS": "120"})
    assert (settings.pepper, settings.keys_dir, settings.token_ttl_seconds) == (bytes([0xAB] * 16), Path("/k"), 120)


def test_help_is_there_for_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--help"], ["keys", "--help"], ["clients", "add", "--help"], ["demo", "--help"]):
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 0
        assert "usage: healthcode" in capsys.readouterr().out


# --- migrate ---------------------------------------------------------------------------------------------


async def test_migrate_twice_applies_everything_then_nothing(
    run: Run, env: pytest.MonkeyPatch, db: asyncpg.Connection, settings: Settings
) -> None:
    # An empty schema of the test database stands in for a fresh database (creating one is slow).
    schema = f"cli_migrate_{secrets.token_hex(4)}"
    await db.execute(f"CREATE SCHEMA {schema}")
    try:
        env.setenv("DATABASE_URL", f"{settings.database_url}?search_path={schema}")
        migrations = load_migrations()
        code, out, _ = await run("migrate")
        assert code == 0
        assert out.splitlines() == [
            f"applied {len(migrations)} migration(s)",
            *(f"  {m.version:03d}_{m.name}" for m in migrations),
        ]
        assert await db.fetchval(f"SELECT count(*) FROM {schema}.schema_migrations") == len(migrations)
        assert await run("migrate") == (0, "applied 0 migration(s)\n", "")
    finally:
        await db.execute(f"DROP SCHEMA {schema} CASCADE")


# --- clients ---------------------------------------------------------------------------------------------


async def test_clients_add_list_revoke(run: Run, db: asyncpg.Connection) -> None:
    code, out, _ = await run("clients", "add", "--kind", "scanner", "--name", "gate-7")
    assert code == 0
    announce, secret = out.splitlines()
    assert announce == "client gate-7 (scanner) created; its key, shown only this once:"
    assert secret.startswith("hc_")
    row = await db.fetchrow("SELECT kind, key_hash, revoked_at FROM api_clients WHERE name = 'gate-7'")
    assert row is not None
    assert (row["kind"], bytes(row["key_hash"]), row["revoked_at"]) == ("scanner", hash_secret(secret), None)

    code, out, _ = await run(
        "clients", "add", "--kind", "agency", "--name", "cq-cdc", "--scope", "designation", "--scope", "test"
    )
    assert code == 0
    assert list(await db.fetchval("SELECT scopes FROM api_clients WHERE name = 'cq-cdc'")) == ["designation", "test"]

    code, out, _ = await run("clients", "list")
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 2
    assert re.search(r"gate-7\s+scanner\s+hc_\S{5}…\s+active", lines[0]), lines[0]
    assert re.search(r"cq-cdc\s+agency\s+.*active\s+designation,test", lines[1]), lines[1]
    assert secret not in out

    assert await run("clients", "revoke", "gate-7") == (0, "client gate-7 revoked\n", "")
    assert await db.fetchval("SELECT revoked_at IS NOT NULL FROM api_clients WHERE name = 'gate-7'")
    assert await run("clients", "revoke", "gate-7") == (1, "", "healthcode clients: no active client named gate-7\n")
    code, out, _ = await run("clients", "list")
    assert "revoked" in out.splitlines()[0]


async def test_clients_limits_per_client(run: Run, db: asyncpg.Connection) -> None:
    code, _, _ = await run("clients", "add", "--kind", "scanner", "--name", "vendor-gates", "--limit", "verify=200/400")
    assert code == 0
    stored = await db.fetchval("SELECT rate_limits FROM api_clients WHERE name = 'vendor-gates'")
    assert stored == {"verify": {"per_second": 200.0, "burst": 400}}
    code, out, _ = await run("clients", "list")
    assert out.rstrip().endswith("limits verify=200/400")

    assert await run("clients", "limit", "vendor-gates", "verify=0") == (
        0,
        "client vendor-gates limits: verify=0/0\n",
        "",
    )
    assert await run("clients", "limit", "vendor-gates", "--reset", "verify") == (
        0,
        "client vendor-gates limits: the defaults of its kind\n",
        "",
    )
    code, _, err = await run("clients", "limit", "vendor-gates", "verify=fast")
    assert (code, err) == (2, "healthcode clients: 'fast' is not RATE[/BURST], e.g. 500/1000\n")
    code, _, err = await run("clients", "add", "--kind", "scanner", "--name", "x", "--limit", "status=5")
    assert code == 2 and "BUCKET one of verify" in err
    assert await run("clients", "limit", "nobody", "verify=1") == (
        1,
        "",
        "healthcode clients: no active client named nobody\n",
    )


async def test_clients_add_refuses_an_unknown_kind(run: Run, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        await run("clients", "add", "--kind", "police", "--name", "x")
    assert exited.value.code == 2
    assert "invalid choice: 'police'" in capsys.readouterr().err


# --- keys ------------------------------------------------------------------------------------------------


def test_a_key_id_beginning_with_a_dash_is_read_as_the_key() -> None:
    assert key_refs_as_operands(["keys", "revoke", "-x3Fq9ab"]) == ["keys", "revoke", "--", "-x3Fq9ab"]
    assert key_refs_as_operands(["keys", "revoke", "--help"]) == ["keys", "revoke", "--help"]
    assert key_refs_as_operands(["keys", "new", "--activate"]) == ["keys", "new", "--activate"]
    # A key id beginning with `-` followed by an option: the option is still read as one.
    assert key_refs_as_operands(["keys", "activate", "-x3Fq9ab", "--after", "0s"]) == [
        "keys", "activate", "--after", "0s", "--", "-x3Fq9ab"
    ]  # fmt: skip
    assert key_refs_as_operands(["keys", "activate", "--after=0s", "-x3Fq9ab"]) == [
        "keys", "activate", "--after=0s", "--", "-x3Fq9ab"
    ]  # fmt: skip


async def test_keys_new_activate_list_retire_revoke(run: Run, db: asyncpg.Connection, settings: Settings) -> None:
    code, out, _ = await run("keys", "new", "--activate")
    assert code == 0
    first, state = out.split()
    assert state == "active"
    assert keys.private_key_path(settings.keys_dir, first).exists()

    code, out, _ = await run("keys", "new", "--alg", "EdDSA")
    second, state = out.split()
    assert (code, state) == (0, "pending")

    code, out, _ = await run("keys", "list")
    assert code == 0
    listed = [line.split() for line in out.splitlines()]
    assert [(cols[0], cols[1], cols[2], cols[3]) for cols in listed] == [
        (first[:8], "ES256", "active", first),
        (second[:8], "EdDSA", "pending", second),
    ]

    # A key published a moment ago waits for scanners' cached key sets before it signs...
    code, out, _ = await run("keys", "activate", second[:8])
    assert (code, out.split()[:3]) == (0, [second, "scheduled:", "signs"])
    assert [r["state"] for r in await keys.list_keys(db)] == ["active", "pending"]
    code, out, _ = await run("keys", "list")
    assert "activates" in out.splitlines()[1]
    # ...unless the operator says when.
    assert await run("keys", "activate", second[:8], "--after", "0s") == (0, f"{second} activated\n", "")
    assert [r["state"] for r in await keys.list_keys(db)] == ["retired", "active"]
    assert await run("keys", "revoke", first[:8]) == (0, f"{first} revoked\n", "")
    assert await run("keys", "retire", second) == (0, f"{second} retired\n", "")
    assert [r["state"] for r in await keys.list_keys(db)] == ["revoked", "retired"]

    code, out, err = await run("keys", "retire", "nosuchkey")
    assert (code, out) == (1, "")
    assert err == "healthcode keys: 'nosuchkey' matches 0 keys; give more of the thumbprint\n"
    code, _, err = await run("keys", "activate", first)
    assert (code, err) == (1, "healthcode keys: a revoked key cannot be activated\n")


# --- cache warm and demo ---------------------------------------------------------------------------------


async def test_demo_then_cache_warm_rebuilds_redis_from_postgres(
    run: Run, db: asyncpg.Connection, redis: Redis, settings: Settings
) -> None:
    code, out, _ = await run("demo", "--people", "200", "--seed", "11")
    assert code == 0, out
    assert "healthcode demo is ready" in out
    assert "curl -s -X POST http://127.0.0.1:8080/v1/status -H 'Authorization: Bearer hc_" in out

    # Every colour and the pop-up can be seen.
    colours = await db.fetch("SELECT colour, bool_or(popup) AS popup, count(*) AS n FROM statuses GROUP BY colour")
    assert {r["colour"] for r in colours} == {"green", "yellow", "red"}
    assert any(r["popup"] for r in colours)
    assert sum(r["n"] for r in colours) == 200
    assert await db.fetchval("SELECT count(*) FROM signing_keys WHERE state = 'active'") == 1
    assert await db.fetchval("SELECT count(*) FROM api_clients") == len(CLIENT_KINDS)  # one of each kind
    assert await cached_statuses(redis) == 200

    # Flushed, Redis is rebuilt from Postgres, entry for entry.
    await redis.flushdb()
    code, out, _ = await run("cache", "warm")
    assert (code, out) == (0, "warmed 200 status entries\n")
    pseudonyms = [bytes(r["pseudonym"]) for r in await db.fetch("SELECT pseudonym FROM subjects")]
    assert len(pseudonyms) == 200
    stored = [await redis.hget(*status_field(p)) for p in pseudonyms]
    for p, raw in zip(pseudonyms, stored, strict=True):
        assert isinstance(raw, bytes)
        row = await db.fetchrow(STATUS_QUERY, p)
        assert row is not None
        assert unpack(raw) == entry_from_row(row)
    ttl = await redis.ttl(status_field(pseudonyms[0])[0])
    assert 0 < ttl <= 86400

    # A second run reuses the demo clients and key instead of adding more.
    code, _, _ = await run("demo", "--people", "200", "--seed", "11")
    assert code == 0
    assert await db.fetchval("SELECT count(*) FROM api_clients") == len(CLIENT_KINDS)  # one of each kind
    assert await db.fetchval("SELECT count(*) FROM signing_keys") == 1
    assert await db.fetchval("SELECT count(*) FROM subjects") == 200


async def test_cache_warm_recomputes_statuses_past_valid_until(run: Run, db: asyncpg.Connection, redis: Redis) -> None:
    subject = bytes(16)
    await db.execute(
        "INSERT INTO subjects (pseudonym, id_type, masked_number) VALUES ($1, 'resident', '50**************39')",
        subject,
    )
    await db.execute(
        """INSERT INTO statuses (pseudonym, colour, reasons, ruleset, computed_at, valid_until)
           VALUES ($1, 'red', '{quarantine}', 'default-2022', now() - interval '2 days', now() - interval '1 day')""",
        subject,
    )
    code, out, _ = await run("cache", "warm")
    assert (code, out) == (0, "warmed 1 status entries\n")
    raw = await redis.hget(*status_field(subject))
    assert isinstance(raw, bytes)
    assert unpack(raw).colour == "green"  # no records keep the person red any more
    assert await db.fetchval("SELECT colour FROM statuses WHERE pseudonym = $1", subject) == "green"


async def test_demo_activates_a_key_of_its_own_when_the_active_ones_private_half_is_elsewhere(
    run: Run, db: asyncpg.Connection, settings: Settings, tmp_path: Path
) -> None:
    # Another checkout sharing this database made the active key; its private file is not here.
    elsewhere = await keys.activate(db, await keys.new_key(db, tmp_path / "elsewhere"))
    with pytest.raises(NoSigningKey, match="has no private key loaded"):
        _ = (await keys.load_keyring(db, settings.keys_dir, 300, "healthcode")).signer

    code, out, _ = await run("demo", "--people", "20")

    assert code == 0, out
    states = {r["thumbprint"]: r["state"] for r in await keys.list_keys(db)}
    assert states.pop(elsewhere) == "retired"
    ((mine, state),) = states.items()
    assert state == "active"
    assert keys.private_key_path(settings.keys_dir, mine).exists()


async def test_demo_list_prints_numbers_per_situation(run: Run) -> None:
    code, out, _ = await run("demo", "--people", "300", "--seed", "5", "--list")
    assert code == 0
    situations = {line.split()[0]: line.split()[1:] for line in out.splitlines()}
    people = list(synthetic_people(300, 5))
    assert set(situations) == {p.situation for p in people}
    for situation, numbers in situations.items():
        expected = [p.number for p in people if p.situation == situation][:5]
        assert numbers == expected
        assert all(n[17] == resident_check_char(n[:17]) for n in numbers)


async def test_a_demo_person_can_be_queried_with_the_printed_key(
    run: Run, make_client: AppFactory, settings: Settings
) -> None:
    code, out, _ = await run("demo", "--people", "50", "--seed", "3")
    assert code == 0
    key = re.search(r"citizen-backend key\s+(hc_\S+)", out)
    assert key is not None
    number = re.search(r'"id_number": "([0-9X]{18})"', out)
    assert number is not None
    api = await make_client()
    r = await api.post("/v1/status", json={"id_number": number[1]}, headers=bearer(key[1]))
    assert r.status == 200, await r.text()
    assert (await r.json())["colour"] in {"green", "yellow", "red"}


# --- federation: peers and card keys ---------------------------------------------------------------------


async def test_peers_add_list_remove(run: Run, db: asyncpg.Connection) -> None:
    jwks = "https://hc.sc.example/.well-known/jwks.json"
    code, out, _ = await run("peers", "add", "cn-sc", "--name", "Sichuan", "--jwks-url", jwks)
    assert (code, out) == (0, "peer cn-sc added\n")
    code, _, err = await run("peers", "add", "cn-bj", "--name", "Beijing", "--jwks-url", jwks, "--vaccination-source")
    assert code == 2 and "needs api_base_url" in err
    code, out, _ = await run(
        "peers", "add", "cn-sc", "--name", "Sichuan", "--jwks-url", jwks, "--alg", "EdDSA", "--alg", "ES256",
        "--vaccination-source", "--api-url", "https://hc.sc.example",
    )  # fmt: skip
    assert (code, out) == (0, "peer cn-sc updated\n")
    code, out, _ = await run("peers", "list")
    assert out.split() == ["cn-sc", "Sichuan", "EdDSA,ES256", jwks, "vaccinations", "from", "https://hc.sc.example"]
    code, _, err = await run("peers", "add", "healthcode", "--name", "me", "--jwks-url", jwks)
    assert code == 2 and "own issuer" in err
    assert (await run("peers", "remove", "cn-sc"))[:2] == (0, "peer cn-sc removed\n")
    assert (await run("peers", "remove", "cn-sc"))[0] == 1
    assert await db.fetchval("SELECT count(*) FROM peers") == 0


async def test_credentials_new_activate_list_revoke(run: Run, db: asyncpg.Connection, settings: Settings) -> None:
    code, out, _ = await run("credentials", "new")
    thumbprint = out.split()[2]
    assert code == 0 and (settings.keys_dir / "credentials" / f"{thumbprint}.pem").exists()
    assert (await run("credentials", "activate", thumbprint[:12]))[:2] == (0, f"card key {thumbprint} activated\n")
    assert (await run("credentials", "list"))[1].split()[:2] == [thumbprint, "active"]
    assert (await run("credentials", "revoke", thumbprint[:12]))[0] == 0
    assert await db.fetchval("SELECT state FROM credential_keys") == "revoked"
    assert (await run("credentials", "activate", "nothing-like-it"))[0] == 1


def test_federation_settings_are_validated() -> None:
    base = {"DATABASE_URL": "x", "REDIS_URL": "y", "HEALTHCODE_KEYS_DIR": "/k", "HEALTHCODE_PEPPER": "ab" * 16}
    base["HEALTHCODE_HANDLE_KEY"] = "00" * 32
    assert Settings.from_env(base).federation_key is None
    with pytest.raises(SettingsError, match="must differ from the pepper"):
        Settings.from_env({**base, "HEALTHCODE_FEDERATION_KEY": "ab" * 16})
    with pytest.raises(SettingsError, match="HEALTHCODE_REGION_CODE must be an ISO 3166 code"):
        Settings.from_env({**base, "HEALTHCODE_REGION_CODE": "chongqing"})
    settings = Settings.from_env({**base, "HEALTHCODE_FEDERATION_KEY": "cd" * 16, "HEALTHCODE_PEER_TIMEOUT_MS": "250"})
    assert (settings.federation_key, settings.peer_timeout_seconds) == (bytes([0xCD] * 16), 0.25)
    assert "cd" * 16 not in repr(settings)
