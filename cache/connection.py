"""Building a Redis client fit for the hot path: one server, or a Redis Cluster named by its seed nodes."""

from __future__ import annotations

from typing import TypeVar, overload
from urllib.parse import parse_qsl, unquote, urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException, RedisError

# What "Redis is unavailable" looks like to a caller: redis-py wraps socket errors in its own
# ConnectionError/TimeoutError, but an OSError can still escape from connection set-up. A cluster
# whose slots are not all served (a primary down, not yet replaced) raises RedisClusterException, which
# is not a RedisError.
REDIS_ERRORS: tuple[type[Exception], ...] = (RedisError, RedisClusterException, OSError)

# `redis+cluster://[user:password@]host:port[,host:port...]`: a cluster, any of whose nodes will do as a
# seed (the client reads the whole slot map from the first that answers). `rediss+cluster://` for TLS.
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")

AnyRedis = Redis | RedisCluster
R = TypeVar("R", bound=Redis)
C = TypeVar("C", bound=RedisCluster)


def is_cluster_url(url: str) -> bool:
    return urlsplit(url).scheme in CLUSTER_SCHEMES


@overload
def open_redis(
    url: str, *, max_connections: int = ..., socket_timeout: float = ..., connect_timeout: float = ...
) -> AnyRedis: ...


@overload
def open_redis(
    url: str,
    *,
    max_connections: int = ...,
    socket_timeout: float = ...,
    connect_timeout: float = ...,
    client_class: type[R],
) -> R: ...


def open_redis(
    url: str,
    *,
    max_connections: int = 64,
    socket_timeout: float = 0.5,
    connect_timeout: float = 0.5,
    client_class: type[Redis] | None = None,
) -> AnyRedis:
    """A client with short timeouts, a bounded pool and no library-level retries.

    redis-py 8 retries a failed command ten times with backoff by default (about 2.4 s against a
    closed port); on the hot path that delay is worse than the miss, and the cache's circuit breaker
    already decides when to try again. The pool blocks (up to `connect_timeout`) rather than failing
    when all connections are busy. Close the client with `await client.aclose()`; that closes the pool.

    A `redis+cluster://` URL gives a `RedisCluster` (`max_connections` is then per node).
    """
    if is_cluster_url(url):
        if client_class is not None:
            raise ValueError("client_class is for a single server; a cluster URL makes a RedisCluster")
        return open_cluster(
            url, max_connections=max_connections, socket_timeout=socket_timeout, connect_timeout=connect_timeout
        )
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=connect_timeout,
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
    )
    client = (client_class or Redis)(connection_pool=pool)
    client.auto_close_connection_pool = True  # what Redis.from_pool does: aclose() closes the pool too
    return client


def cluster_seeds(url: str) -> list[tuple[str, int]]:
    """The `(host, port)` seed nodes of a cluster URL; refuses a database number (a cluster has db 0 only)."""
    parts = urlsplit(url)
    if parts.scheme not in CLUSTER_SCHEMES:
        raise ValueError(f"not a cluster URL (scheme {parts.scheme!r}, expected one of {', '.join(CLUSTER_SCHEMES)})")
    if parts.path not in ("", "/", "/0"):
        raise ValueError("a Redis Cluster has database 0 only; drop the path from the URL")
    hosts = parts.netloc.rpartition("@")[2]
    seeds: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"cluster seed {item!r} is not host:port")
        seeds.append((host.strip("[]"), int(port)))
    return seeds


@overload
def open_cluster(
    url: str, *, max_connections: int = ..., socket_timeout: float = ..., connect_timeout: float = ...
) -> RedisCluster: ...


@overload
def open_cluster(
    url: str,
    *,
    max_connections: int = ...,
    socket_timeout: float = ...,
    connect_timeout: float = ...,
    cluster_class: type[C],
) -> C: ...


def open_cluster(
    url: str,
    *,
    max_connections: int = 64,
    socket_timeout: float = 0.5,
    connect_timeout: float = 0.5,
    cluster_class: type[RedisCluster] = RedisCluster,
) -> RedisCluster:
    """A `RedisCluster` client from a cluster URL, with the same timeouts and no retries as `open_redis`.

    Query options (`?read_from_replicas=...`) are not taken: every read goes to the slot's primary, so a
    status written is the status read (replicas lag)."""
    parts = urlsplit(url)
    seeds = cluster_seeds(url)
    credentials = parts.netloc.rpartition("@")[0]
    username, _, password = credentials.partition(":")
    if parse_qsl(parts.query):
        raise ValueError("cluster URL options are not supported; the client is configured by open_redis")
    return cluster_class(
        startup_nodes=[ClusterNode(host, port) for host, port in seeds],
        username=unquote(username) or None,
        password=unquote(password) or None,
        ssl=parts.scheme == "rediss+cluster",
        max_connections=max_connections,
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
    )
