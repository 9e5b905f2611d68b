"""The Redis client made from REDIS_URL: one server, or a cluster named by its seed nodes."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from cache.connection import cluster_seeds, is_cluster_url, open_redis


def test_cluster_seeds_are_every_host_and_port() -> None:
    url = "redis+cluster://user:p%40ss@10.0.0.11:6379,10.0.0.12:6380,[::1]:7000/0"
    assert is_cluster_url(url) and not is_cluster_url("redis://10.0.0.11:6379/0")
    assert cluster_seeds(url) == [("10.0.0.11", 6379), ("10.0.0.12", 6380), ("::1", 7000)]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://10.0.0.11:6379", "not a cluster URL"),
        ("redis+cluster://10.0.0.11:6379/2", "database 0 only"),
        ("redis+cluster://10.0.0.11", "is not host:port"),
        ("redis+cluster://10.0.0.11:6379,", "is not host:port"),
    ],
)
def test_a_wrong_cluster_url_says_what_is_wrong(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cluster_seeds(url)


async def test_a_cluster_url_makes_a_cluster_client_with_the_hot_path_timeouts() -> None:
    client = open_redis("rediss+cluster://user:p%40ss@127.0.0.1:7000,127.0.0.1:7001", socket_timeout=0.25)
    try:
        assert isinstance(client, RedisCluster)
        assert [(n.host, n.port) for n in client.nodes_manager.startup_nodes.values()] == [
            ("127.0.0.1", 7000),
            ("127.0.0.1", 7001),
        ]
        kwargs = client.get_connection_kwargs()
        assert (kwargs["username"], kwargs["password"], kwargs["socket_timeout"]) == ("user", "p@ss", 0.25)
        assert getattr(kwargs["connection_class"], "__name__", None) == "SSLConnection"
    finally:
        await client.aclose()
    single = open_redis("redis://127.0.0.1:7000/3")
    try:
        assert isinstance(single, Redis)
    finally:
        await single.aclose()


def test_options_in_a_cluster_url_are_refused_not_ignored() -> None:
    with pytest.raises(ValueError, match="options are not supported"):
        open_redis("redis+cluster://127.0.0.1:7000?read_from_replicas=true")
