"""The Redis servers the cache tests run against: one server (db 14 of REDIS_URL) and a Redis Cluster.

The cluster is `REDIS_CLUSTER_URL` or a cluster `REDIS_URL` when set, else one this session starts with
the dev servers' own code (app/dev/redis_cluster.py) and stops at the end: three primaries with a replica
each, on loopback.
Tests that take the `cache_redis_url` fixture run once on each.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline, RedisCluster

from cache.connection import is_cluster_url, open_cluster, open_redis


def _single_url() -> str:
    """Db 14 of the suite's server (REDIS_URL, as `make test` exports it); REDIS_SINGLE_URL when REDIS_URL
    names a cluster (`make test-cluster`), since the cache tests run on one server as well."""
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    if is_cluster_url(url):
        url = os.environ.get("REDIS_SINGLE_URL", "")
        if not url or is_cluster_url(url):
            raise RuntimeError("REDIS_URL names a cluster: set REDIS_SINGLE_URL to a single server for the cache tests")
    return urlunsplit(urlsplit(url)._replace(path="/14"))


SINGLE_URL = _single_url()


class CountingRedis(Redis):
    """A real client that records the round trips it starts through redis-py: commands and pipelines.

    The hot read is hand-packed (HGETs and an MGET) on a pooled connection (cache/bulk.py), which
    `StatusCache.reads` counts instead."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands: list[str] = []
        self.pipelines = 0

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        self.commands.append(str(args[0]))
        return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> Pipeline:
        self.pipelines += 1
        return super().pipeline(transaction, shard_hint)

    def reset_counts(self) -> None:
        self.commands.clear()
        self.pipelines = 0


class CountingCluster(RedisCluster):
    """The same counts on a cluster client: its hand-packed reads and writes go by cache/cluster.py."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands: list[str] = []
        self.pipelines = 0

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        self.commands.append(str(args[0]))
        return await super().execute_command(*args, **kwargs)

    def pipeline(self, transaction: Any | None = None, shard_hint: Any | None = None) -> ClusterPipeline:
        self.pipelines += 1
        return super().pipeline(transaction, shard_hint)

    def reset_counts(self) -> None:
        self.commands.clear()
        self.pipelines = 0


Counting = CountingRedis | CountingCluster


def counting_client(url: str) -> Counting:
    if is_cluster_url(url):
        return open_cluster(url, cluster_class=CountingCluster)
    return open_redis(url, client_class=CountingRedis)


async def key_count(client: Redis | RedisCluster) -> int:
    """Keys in the database: DBSIZE, summed over the primaries of a cluster."""
    if isinstance(client, RedisCluster):
        total: int = await client.dbsize(target_nodes=RedisCluster.PRIMARIES)
        return total
    count: int = await client.dbsize()
    return count


async def all_keys(client: Redis | RedisCluster) -> list[bytes | str]:
    """KEYS *, from every primary of a cluster."""
    if isinstance(client, RedisCluster):
        return await client.keys("*", target_nodes=RedisCluster.PRIMARIES)
    return await client.keys("*")


async def get_many(client: Redis | RedisCluster, keys: list[bytes]) -> list[Any]:
    """MGET; on a cluster, one MGET per slot (a cluster refuses an MGET across slots)."""
    if isinstance(client, RedisCluster):
        return await client.mget_nonatomic(keys)
    return await client.mget(keys)
