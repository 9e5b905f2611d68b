"""The cache on a Redis Cluster whose layout changes under load: a slot moved, a primary failed over.

Reads and guarded writes run in rounds while the cluster changes; between two rounds one step of the
change is made (a few keys migrated, or the failover), so every state in between is met by traffic.
Every read must be answered from Redis (the loader is never called: redirects were followed, not
taken as misses), and every write acknowledged must be there at the end.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from app.dev.redis_cluster import LocalCluster
from cache.cluster import redirects
from cache.connection import cluster_seeds, open_cluster
from cache.entry import unpack
from cache.keys import status_field, status_slot
from cache.status_cache import StatusCache
from cache.status_writer import StatusWriter
from tests.test_cache import FakeMonotonic, Loader, make_entry
from tests.test_status_writer import subject

pytestmark = pytest.mark.slow
BOUND_SECONDS = 20.0


@dataclass(frozen=True)
class Shard:
    """A primary, the slots it serves and its replicas, as CLUSTER SLOTS shows them."""

    host: str
    port: int
    node_id: str
    slots: list[range]
    replicas: list[tuple[str, int]]


async def shards(admin: Redis) -> list[Shard]:
    found: dict[str, Shard] = {}
    for row in await command(admin, "CLUSTER SLOTS"):
        host, port, node_id = row[2][0], row[2][1], row[2][2]
        key = node_id.decode() if isinstance(node_id, bytes) else node_id
        shard = found.setdefault(
            key,
            Shard(_text(host), int(port), key, [], [(_text(r[0]), int(r[1])) for r in row[3:]]),
        )
        shard.slots.append(range(int(row[0]), int(row[1]) + 1))
    return sorted(found.values(), key=lambda s: s.port)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def command(client: Redis, *args: object) -> Any:
    return await client.execute_command(*args)  # type: ignore[no-untyped-call]


def node(host: str, port: int) -> Redis:
    return Redis(host=host, port=port, socket_timeout=5)


def bucket_slot(pseudonym: bytes) -> int:
    """The cluster slot of a subject's bucket (its tombstone shares the hash tag, so the same slot)."""
    return key_slot(status_slot(pseudonym).bucket)


def slot_with_buckets(slots: range) -> int:
    """A slot of `slots` that holds status buckets: not every slot does (16 bucket bits fill ~80 % of them)."""
    for n in range(2**16):
        slot = bucket_slot(n.to_bytes(2, "big") + bytes(14))
        if slot in slots:
            return slot
    raise AssertionError("no bucket in these slots")


def subjects_in_slot(slot: int, count: int) -> list[bytes]:
    """Pseudonyms whose status buckets hash to `slot` (some 15,000 tries each)."""
    found: list[bytes] = []
    for n in itertools.count():
        pseudonym = hashlib.sha256(b"slot-%d" % n).digest()[:16]
        if bucket_slot(pseudonym) == slot:
            found.append(pseudonym)
            if len(found) == count:
                return found
    raise AssertionError("unreachable")


async def all_see_primary(nodes: list[tuple[str, int]], port: int, slot: int) -> bool:
    """Every node's CLUSTER SLOTS names the node on `port` as the primary of `slot`."""
    for host, node_port in nodes:
        client = node(host, node_port)
        try:
            rows = await command(client, "CLUSTER SLOTS")
        finally:
            await client.aclose()
        if not any(int(row[0]) <= slot <= int(row[1]) and int(row[2][1]) == port for row in rows):
            return False
    return True


def subjects_of(shard: Shard, tries: int) -> list[bytes]:
    """Those of the first `tries` test subjects whose keys the shard serves (about a third)."""
    return [p for p in map(subject, range(tries)) if any(bucket_slot(p) in r for r in shard.slots)]


@dataclass
class Traffic:
    """Rounds of bulk guarded writes and coalesced reads of `subjects`, checked as they go."""

    cache: StatusCache
    writer: StatusWriter
    loader: Loader
    subjects: list[bytes]
    written: dict[bytes, int] = field(default_factory=dict)  # the last version acknowledged per subject
    rounds: int = 0
    stale: list[str] = field(default_factory=list)
    unknown: list[bytes] = field(default_factory=list)  # never written: looked up, tombstoned, looked up

    async def round(self) -> None:
        self.rounds += 1
        version = self.rounds + 1
        # Half the subjects get a new version each round; the guarded write must store every one.
        batch = {p: make_entry(version=version) for i, p in enumerate(self.subjects) if (i + self.rounds) % 2}
        assert await self.writer.put_many(batch) == len(batch)
        self.written.update(dict.fromkeys(batch, version))
        got = await asyncio.gather(*(self.cache.get(p) for p in self.subjects + self.unknown))
        for pseudonym, entry in zip(self.subjects, got[: len(self.subjects)], strict=True):
            if entry is None or entry.version < self.written[pseudonym]:
                self.stale.append(f"round {self.rounds}: {pseudonym.hex()} read {entry}")
        for pseudonym, entry in zip(self.unknown, got[len(self.subjects) :], strict=True):
            if entry is not None:
                self.stale.append(f"round {self.rounds}: unknown {pseudonym.hex()} read {entry}")
        await self.cache.drain()  # this round's tombstone writes happen in this state of the cluster

    async def until(self, done: Callable[[], Awaitable[bool]]) -> None:
        """Rounds until `done()` holds (checked between rounds); bounded."""
        deadline = time.monotonic() + BOUND_SECONDS
        while not await done():
            assert time.monotonic() < deadline, "condition not reached"
            await self.round()


@pytest.fixture
async def cluster(redis_cluster_url: str) -> AsyncIterator[RedisCluster]:
    client = open_cluster(redis_cluster_url, socket_timeout=5.0)
    await client.flushdb()
    yield client
    await client.flushdb()
    await client.aclose()


@pytest.fixture
async def admin(redis_cluster_url: str) -> AsyncIterator[Redis]:
    """A plain connection to one node, for CLUSTER commands."""
    host, port = cluster_seeds(redis_cluster_url)[0]
    client: Redis = node(host, port)
    yield client
    await client.aclose()


async def traffic_on(cluster: RedisCluster, subjects: list[bytes]) -> Traffic:
    writer = StatusWriter(cluster)
    loader = Loader()  # knows nobody: a read answered by it would be None, and is recorded
    traffic = Traffic(StatusCache(cluster, loader, writer=writer), writer, loader, subjects)
    assert await writer.put_many({p: make_entry(version=1) for p in subjects}) == len(subjects)
    traffic.written.update(dict.fromkeys(subjects, 1))
    await traffic.round()
    return traffic


async def final_versions(cluster: RedisCluster, subjects: list[bytes]) -> dict[bytes, int]:
    values = [await cluster.hget(*status_field(p)) for p in subjects]
    return {p: unpack(v).version for p, v in zip(subjects, values, strict=True) if isinstance(v, bytes)}


async def test_a_slot_moved_during_reads_and_writes_loses_nothing(cluster: RedisCluster, admin: Redis) -> None:
    source, target, *others = await shards(admin)
    slot = slot_with_buckets(source.slots[0])
    *subjects, unknown = subjects_in_slot(slot, 25)
    traffic = await traffic_on(cluster, subjects)
    traffic.unknown.append(unknown)
    src, dst = node(source.host, source.port), node(target.host, target.port)
    try:
        # The standard resharding steps (what `redis-cli --cluster reshard` sends), a round of traffic
        # between each: keys in both places (ASK), then the slot given to the target (MOVED).
        await command(dst, "CLUSTER SETSLOT", slot, "IMPORTING", source.node_id)
        await command(src, "CLUSTER SETSLOT", slot, "MIGRATING", target.node_id)
        await traffic.round()
        while keys := await command(src, "CLUSTER GETKEYSINSLOT", slot, 5):
            await command(src, "MIGRATE", target.host, target.port, "", 0, 5000, "KEYS", *keys)
            await traffic.round()
        for shard in (target, source, *others):
            owner = node(shard.host, shard.port)
            try:
                await command(owner, "CLUSTER SETSLOT", slot, "NODE", target.node_id)
            finally:
                await owner.aclose()
        for _ in range(3):
            await traffic.round()
        # Every key of the slot moved: the subjects' buckets and the unknown subject's tombstone.
        buckets = {status_slot(p).bucket for p in subjects}
        assert await command(dst, "CLUSTER COUNTKEYSINSLOT", slot) == len(buckets) + 1
    finally:
        await src.aclose()
        await dst.aclose()

    moved, asked = redirects(cluster)
    assert asked > 0 and moved > 0  # both redirects were met, and followed
    assert traffic.stale == []
    # Every read was answered from Redis but the unknown subject's first (in the second round, the slot
    # already migrating); its tombstone, written and read while the slot moved, answered the rest, and
    # no Redis error opened the breaker.
    assert traffic.loader.calls == [unknown]
    assert (traffic.cache.redis_errors, traffic.cache.negative_hits) == (0, traffic.rounds - 2)
    assert await final_versions(cluster, subjects) == traffic.written


async def test_a_primary_failed_over_during_reads_and_writes_loses_nothing(cluster: RedisCluster, admin: Redis) -> None:
    shard = (await shards(admin))[1]
    assert shard.replicas, "the cluster needs a replica per primary"
    subjects = subjects_of(shard, 400)
    traffic = await traffic_on(cluster, subjects)
    replica = node(*shard.replicas[0])
    try:
        # A manual failover: the primary stops taking writes, its replica catches up and takes over,
        # and the old primary answers MOVED from then on.
        await command(replica, "CLUSTER FAILOVER")

        async def promoted() -> bool:
            info = await replica.info("replication")
            return bool(info["role"] == "master")

        await traffic.until(promoted)
        for _ in range(3):
            await traffic.round()
    finally:
        await replica.aclose()

    moved, _ = redirects(cluster)
    assert moved > 0
    assert traffic.stale == []
    assert traffic.loader.calls == []
    assert await final_versions(cluster, subjects) == traffic.written


async def test_a_primary_killed_is_replaced_by_its_replica_and_reads_come_back(tmp_path: Path) -> None:
    # A cluster of its own: this one loses a node for good.
    local = LocalCluster(tmp_path / "cluster")
    url = await asyncio.to_thread(local.start)
    client = open_cluster(url)
    try:
        admin = node(*cluster_seeds(url)[0])
        try:
            shard = (await shards(admin))[0]
        finally:
            await admin.aclose()
        subjects = [p for p in (subject(n) for n in range(200)) if any(bucket_slot(p) in r for r in shard.slots)]
        entries = {p: make_entry(version=3) for p in subjects}
        writer = StatusWriter(client)
        assert await writer.put_many(entries) == len(subjects)
        primary = node(shard.host, shard.port)
        try:
            assert await command(primary, "WAIT", 1, 5000) == 1  # the replica holds every write
        finally:
            await primary.aclose()
        monotonic = FakeMonotonic()
        loader = Loader(entries)  # stands in for Postgres
        cache = StatusCache(client, loader, writer=writer, breaker_seconds=5.0, monotonic=monotonic)

        await asyncio.to_thread(local.kill, shard.port)
        # The dead primary's keys: the read fails, the breaker opens, and Postgres answers every one.
        assert await asyncio.gather(*(cache.get(p) for p in subjects)) == list(entries.values())
        assert cache.redis_errors == 1 and not cache.redis_available

        # Promoted, as every live node sees it: whichever node the client asks for the slot map, the dead
        # primary is gone from it.
        live = [(host, port) for host, port in cluster_seeds(url) if port != shard.port]
        deadline = time.monotonic() + BOUND_SECONDS
        while not await all_see_primary(live, shard.replicas[0][1], shard.slots[0].start):
            assert time.monotonic() < deadline, "the replica was not promoted"
            await asyncio.sleep(0.1)

        # Once the breaker lets Redis be tried again, the slot map is read anew and the promoted replica
        # answers: every entry is there, none loaded again.
        monotonic.now += 5.0
        loads = len(loader.calls)
        await cache.drain()
        assert await asyncio.gather(*(cache.get(p) for p in subjects)) == list(entries.values())
        assert (len(loader.calls), cache.hits) == (loads, len(subjects))
        assert await writer.put_many({p: make_entry(version=4) for p in subjects}) == len(subjects)
        await cache.drain()
    finally:
        await client.aclose()
        await asyncio.to_thread(local.stop)
