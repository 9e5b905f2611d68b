"""The embedded-server path of `app.dev.servers`, exercised for real so a fresh machine keeps working."""

from __future__ import annotations

import asyncio
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis

from app.dev import servers as devservers
from app.dev.redis_cluster import LocalCluster
from cache.connection import cluster_seeds


@pytest.fixture
def state() -> Iterator[devservers.StateDir]:
    # Not pytest's tmp_path: its parent is mode 0700, and as root the Postgres user must pass through.
    root = Path(tempfile.mkdtemp(prefix="healthcode-devservers-"))
    state = devservers.StateDir(root / ".healthcode")
    try:
        yield state
    finally:
        devservers.down(state)
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
async def test_embedded_servers_start_answer_reuse_and_stop(state: devservers.StateDir) -> None:
    # Forced embedded wins over configured URLs and over servers on the default ports.
    env = {
        "HEALTHCODE_EMBEDDED": "1",
        "DATABASE_URL": "postgresql://postgres@192.0.2.1:5432/unused",
        "REDIS_URL": "redis://192.0.2.1:6379/0",
    }
    endpoints = await asyncio.to_thread(devservers.up, state, env)

    servers = state.read_servers()
    pg_port = servers["postgres"]["port"]
    redis_port = servers["redis"]["port"]
    assert isinstance(pg_port, int)
    assert isinstance(redis_port, int)
    assert servers == {
        "postgres": {"kind": "embedded", "port": pg_port},
        "redis": {"kind": "embedded", "port": redis_port},
    }
    assert endpoints == devservers.Endpoints(
        database_url=f"postgresql://postgres@127.0.0.1:{pg_port}/healthcode",
        redis_url=f"redis://127.0.0.1:{redis_port}/0",
    )

    conn = await asyncpg.connect(endpoints.database_url, timeout=10)
    try:
        assert await conn.fetchval("SELECT current_database() || ':' || 1") == "healthcode:1"
    finally:
        await conn.close()
    client = Redis.from_url(endpoints.redis_url)
    try:
        assert await client.ping() is True
        # No persistence: a dev cache must not leave dump files behind.
        assert await client.config_get("save") == {"save": ""}
    finally:
        await client.aclose()

    # Running `up` again reuses the running servers.
    assert await asyncio.to_thread(devservers.up, state, env) == endpoints

    assert state.env_sh.read_text().splitlines()[1:] == [
        f"export DATABASE_URL={endpoints.database_url}",
        f"export REDIS_URL={endpoints.redis_url}",
        f"export HEALTHCODE_PEPPER_FILE={state.root}/pepper",
        f"export HEALTHCODE_HANDLE_KEY_FILE={state.root}/handle-key",
        f"export HEALTHCODE_KEYS_DIR={state.root}/keys",
    ]
    for secret in (state.pepper_file, state.handle_key_file):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
        assert len(secret.read_bytes()) == 32
    assert state.pepper_file.read_bytes() != state.handle_key_file.read_bytes()
    assert stat.S_IMODE(state.keys_dir.stat().st_mode) == 0o700

    await asyncio.to_thread(devservers.down, state)
    assert not devservers.port_open(pg_port)
    assert not devservers.port_open(redis_port)


async def test_configured_urls_are_used_as_given(state: devservers.StateDir) -> None:
    env = {
        "DATABASE_URL": "postgresql://app@db.example:5433/hc",
        "REDIS_URL": "redis://cache.example:6380/2",
    }
    endpoints = await asyncio.to_thread(devservers.up, state, env)

    assert endpoints == devservers.Endpoints(env["DATABASE_URL"], env["REDIS_URL"])
    assert state.read_servers() == {"postgres": {"kind": "external"}, "redis": {"kind": "external"}}
    assert not state.pg_home.exists()
    assert not state.valkey_dir.exists()


@pytest.mark.slow
async def test_the_dev_cluster_starts_is_found_again_and_stops_with_down(state: devservers.StateDir) -> None:
    cluster = LocalCluster(state.root / "cluster")
    url = await asyncio.to_thread(cluster.start)

    ports = [port for _, port in cluster_seeds(url)]
    assert ports == [n.port for n in cluster.nodes()] and len(ports) == 6
    client = Redis(host=devservers.LOCAL_HOST, port=ports[0], decode_responses=True)
    try:
        info: dict[str, str] = await client.execute_command("CLUSTER INFO")  # type: ignore[no-untyped-call]
        nodes: dict[str, dict[str, Any]] = await client.execute_command("CLUSTER NODES")  # type: ignore[no-untyped-call]
        assert info["cluster_state"] == "ok"
        roles = sorted(n["flags"].removeprefix("myself,") for n in nodes.values())
        assert roles == ["master"] * 3 + ["slave"] * 3
        assert await client.config_get("save") == {"save": ""}
    finally:
        await client.aclose()

    # Running: found again, not made anew.
    assert await asyncio.to_thread(cluster.start) == url

    await asyncio.to_thread(devservers.down, state)
    assert not any(devservers.port_open(port) for port in ports)
    assert not cluster.folder.exists()
