"""Cache misses on a streaming replica: read there while it keeps up, never publishing a status older
than Redis holds, and sent to the primary when it lags in replay or is down.

The primary and the replica are servers this module starts (app.dev.servers: the embedded PostgreSQL,
`pg_basebackup -R`, streaming on loopback) and stops; the test database's server is not involved.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import asyncpg
import pytest
from redis.asyncio import Redis

from app.db import connect, recreate_database
from app.dev import servers
from app.settings import Settings
from app.statuses.loader import StatusLoader
from cache.entry import unpack
from cache.keys import status_field
from cache.status_cache import StatusCache
from cache.status_writer import StatusWriter
from tests.test_status_races import Gate, load, publisher, subject_of

# Starts two Postgres servers of its own (10-30 s here).
pytestmark = pytest.mark.slow

# A replica read's budget where the test needs the replica to answer: a first read opens a connection,
# which on a loaded machine can take longer than the default 200 ms (and would then go to the primary).
SLOW_MACHINE = 10.0

# Ports for the servers this module starts, when free (the machine's own Postgres is on 5432).
PORTS = range(5441, 5450)


def _port() -> int:
    return next((p for p in PORTS if not servers.port_open(p)), 0) or servers.free_port()


@dataclass(frozen=True)
class Pair:
    state: servers.StateDir
    primary_port: int
    replica_port: int

    def url(self, port: int) -> str:
        return f"postgresql://postgres@{servers.LOCAL_HOST}:{port}/{servers.DATABASE_NAME}"


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    # A folder of its own, not pytest's: other pytest runs on the machine prune pytest's old base folders.
    state = servers.StateDir(Path(tempfile.mkdtemp(prefix="healthcode-replica-")))
    state.ensure()
    state.write_servers({"postgres": {"port": _port()}})
    try:
        primary = servers.start_postgres(state)
        asyncio.run(recreate_database(servers.ensure_database(primary)))
        yield Pair(state, primary, servers.start_replica(state, primary, _port()))
    finally:
        servers.stop_replica(state, "immediate")
        servers.stop_postgres(state, "immediate")
        shutil.rmtree(state.root, ignore_errors=True)


@pytest.fixture
async def primary(pair: Pair, settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect(pair.url(pair.primary_port))
    await conn.execute("DELETE FROM statuses; DELETE FROM nucleic_tests; DELETE FROM subjects; DELETE FROM batches")
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def pools(pair: Pair, primary: asyncpg.Connection) -> AsyncIterator[tuple[asyncpg.Pool, asyncpg.Pool]]:
    main = await asyncpg.create_pool(pair.url(pair.primary_port), min_size=1, max_size=3)
    replica = await asyncpg.create_pool(pair.url(pair.replica_port), min_size=0, max_size=3, timeout=1)
    try:
        yield main, replica
    finally:
        await replica.close()
        await main.close()


async def replicated(pair: Pair, primary: asyncpg.Connection) -> None:
    """Until the replica has replayed everything the primary has written so far."""
    target = await primary.fetchval("SELECT pg_current_wal_lsn()")
    replica = await connect(pair.url(pair.replica_port))
    try:
        async with asyncio.timeout(30):
            while True:
                if not await replica.fetchval("SELECT pg_wal_lsn_diff($1, pg_last_wal_replay_lsn()) > 0", target):
                    return
                await asyncio.sleep(0.01)  # another server's progress: nothing to wait on but a poll
    finally:
        await replica.close()


async def in_redis(redis: Redis, subject: bytes) -> tuple[str, int]:
    raw = await redis.hget(*status_field(subject))
    assert isinstance(raw, bytes)
    entry = unpack(raw)
    return entry.colour, entry.version


async def test_a_miss_reads_the_replica(
    pair: Pair, primary: asyncpg.Connection, pools: tuple[asyncpg.Pool, asyncpg.Pool], redis: Redis, settings: Settings
) -> None:
    subject = subject_of(settings)
    await load(primary, settings, redis, "negative", hours_ago=2)
    await replicated(pair, primary)
    await redis.hdel(*status_field(subject))

    loader = StatusLoader(pools[0], publisher(redis), replica=pools[1], replica_timeout=SLOW_MACHINE)
    entry = await StatusCache(redis, loader.load, writer=StatusWriter(redis)).get(subject)
    assert entry is not None and entry.colour == "green"
    assert (loader.replica_reads, loader.reads) == (1, 0)


async def test_a_replica_lagging_in_replay_is_passed_by_and_cannot_publish_an_older_status(
    pair: Pair, primary: asyncpg.Connection, pools: tuple[asyncpg.Pool, asyncpg.Pool], redis: Redis, settings: Settings
) -> None:
    subject = subject_of(settings)
    await load(primary, settings, redis, "negative", hours_ago=2)
    await replicated(pair, primary)
    replica = await connect(pair.url(pair.replica_port))
    try:
        await replica.execute("SELECT pg_wal_replay_pause()")
        await load(primary, settings, redis, "positive", hours_ago=1)  # red, a newer version, on the primary
        newest = await in_redis(redis, subject)
        assert newest[0] == "red"

        # The replay check sees the lag: the miss goes to the primary.
        await redis.hdel(*status_field(subject))
        loader = StatusLoader(pools[0], publisher(redis), replica=pools[1], replica_timeout=SLOW_MACHINE)
        entry = await StatusCache(redis, loader.load, writer=StatusWriter(redis)).get(subject)
        assert entry is not None and (entry.colour, entry.version) == newest
        assert (loader.replica_reads, loader.reads) == (0, 1)

        # Lag the check cannot see (WAL not yet received) is the version guard's: with the check off, a
        # miss reads the old green status on the replica while the red one is published to Redis, and
        # its fill is refused.
        await redis.hdel(*status_field(subject))
        gate = Gate("loaded")
        blind = StatusLoader(
            pools[0], publisher(redis, gate), replica=pools[1], max_replay_lag_bytes=None, replica_timeout=SLOW_MACHINE
        )
        cache = StatusCache(redis, blind.load, writer=StatusWriter(redis))
        missing = asyncio.create_task(cache.get(subject))
        await gate.reached.wait()
        await load(primary, settings, redis, "positive", hours_ago=1)  # the same record: published again
        published = await in_redis(redis, subject)
        gate.release.set()
        old = await missing
        await cache.drain()
        assert old is not None and old.colour == "green" and blind.replica_reads == 1
        assert await in_redis(redis, subject) == published
        assert published[0] == "red" and published[1] > old.version
    finally:
        await replica.execute("SELECT pg_wal_replay_resume()")
        await replica.close()


async def test_a_stopped_replica_sends_misses_to_the_primary(
    pair: Pair, primary: asyncpg.Connection, pools: tuple[asyncpg.Pool, asyncpg.Pool], redis: Redis, settings: Settings
) -> None:
    subject = subject_of(settings)
    await load(primary, settings, redis, "negative", hours_ago=2)
    await redis.hdel(*status_field(subject))
    servers.stop_replica(pair.state, "immediate")
    try:
        loader = StatusLoader(pools[0], publisher(redis), replica=pools[1], replica_timeout=0.5)
        entry = await StatusCache(redis, loader.load, writer=StatusWriter(redis)).get(subject)
        assert entry is not None and entry.colour == "green"
        assert (loader.replica_reads, loader.reads) == (0, 1)
        assert not loader.replica_state.up and not loader.replica_state.should_try
        # While it is down, misses do not try it again (a pause), and answer from the primary.
        await redis.hdel(*status_field(subject))
        assert await loader.load(subject) is not None
        assert loader.replica_state.failures == 1 and loader.reads == 2
    finally:
        assert servers.start_replica(pair.state, pair.primary_port, pair.replica_port) == pair.replica_port


async def test_a_replica_that_does_not_answer_costs_a_miss_no_more_than_its_budget(
    pair: Pair,
    primary: asyncpg.Connection,
    pools: tuple[asyncpg.Pool, asyncpg.Pool],
    redis: Redis,
    settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    subject = subject_of(settings)
    await load(primary, settings, redis, "negative", hours_ago=2)
    await redis.hdel(*status_field(subject))
    # The replica's postmaster stopped (not ended): the kernel still takes connections, nothing answers.
    postmaster = int((servers.replica_data(pair.state) / "postmaster.pid").read_text().split()[0])
    os.kill(postmaster, signal.SIGSTOP)
    try:
        loader = StatusLoader(pools[0], publisher(redis), replica=pools[1], replica_timeout=0.3, miss_timeout=30)
        entry = await StatusCache(redis, loader.load, writer=StatusWriter(redis)).get(subject)
        assert entry is not None and entry.colour == "green"
        assert (loader.replica_reads, loader.reads) == (0, 1) and not loader.replica_state.up
        assert "postgres replica unavailable (timed out)" in caplog.text
    finally:
        os.kill(postmaster, signal.SIGCONT)


def test_settings_name_the_replica(settings: Settings) -> None:
    env = {
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "HEALTHCODE_PEPPER": "00" * 16,
        "HEALTHCODE_HANDLE_KEY": "00" * 16,
        "HEALTHCODE_KEYS_DIR": "/tmp/keys",
        "DATABASE_REPLICA_URL": "postgresql://postgres@replica:5432/healthcode",
        "HEALTHCODE_PG_REPLICA_TIMEOUT_MS": "150",
    }
    parsed = Settings.from_env(env)
    assert parsed.database_replica_url == env["DATABASE_REPLICA_URL"]
    assert parsed.pg_replica_timeout_seconds == 0.15
    assert Settings.from_env({**env, "DATABASE_REPLICA_URL": ""}).database_replica_url is None
    assert replace(parsed, embedded_worker=False).embedded_worker is False


def test_dev_servers_offer_the_replica_of_their_embedded_postgres(pair: Pair) -> None:
    chosen: dict[str, dict[str, object]] = {"postgres": {"kind": "embedded", "port": pair.primary_port}}
    url = servers.choose_replica(pair.state, {"HEALTHCODE_REPLICA": "1"}, chosen)
    assert url == pair.url(pair.replica_port) and chosen["replica"] == {"kind": "embedded", "port": pair.replica_port}
    assert servers.choose_replica(pair.state, {}, chosen) is None
    with pytest.raises(servers.DevServerError, match="HEALTHCODE_EMBEDDED=1"):
        servers.choose_replica(pair.state, {"HEALTHCODE_REPLICA": "1"}, {"postgres": {"kind": "external"}})
