"""Hand-packed commands on a Redis Cluster: grouped by the node that owns each key's slot, one buffer and
one round trip per node (the nodes at once), redirects followed in bulk.

The cluster's form of `cache/bulk.round_trip`, for the hot read (GETs with the rate-limit takes of the
same turn), bulk guarded writes and the limiter. redis-py's cluster pipeline does the grouping too, but
builds a Python object per command and sends each redirected command on its own round trip; this
sends every command for a node in one buffer and parses the replies with hiredis, like the plain path.

A slot being moved answers `ASK` for keys already gone to the new owner: those commands go again, each
after `ASKING`, in one buffer per new owner. A slot moved for good (or a failover) answers `MOVED`: the
slot map is read again (once, however many round trips saw it) and the commands go again to the new
owners. While a failover or a migration settles, a node may answer `READONLY` (a primary just demoted),
`TRYAGAIN` or `CLUSTERDOWN`, and a slot map read from a node that has not heard yet sends `MOVED` back
to where it came from: those commands go again too, after a pause that doubles each time (from 10 ms),
within the round trip's time limit. None of them ran, so sending them again cannot apply one twice. A node
that fails (connection refused, timeout) fails the round trip, and the next one reads the slot map first,
so a promoted replica is found. Only primaries are read: a replica may lag.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import Connection
from redis.crc import key_slot
from redis.exceptions import ClusterError

from cache.bulk import exchange

# (the key whose slot routes the command, the command packed as RESP)
Command = tuple[bytes, bytes]

_ASKING = b"*1\r\n$6\r\nASKING\r\n"
# Rounds of redirects and retries before giving up (the time limit usually ends it first): a manual
# failover took a CI run past five immediate ones.
MAX_REDIRECTS = 12
# Replies of a node whose cluster is changing under it: the command did not run; send it again later.
_SETTLING = ("READONLY ", "TRYAGAIN ", "CLUSTERDOWN ")
_FIRST_PAUSE = 0.01
_LONGEST_PAUSE = 0.5


@dataclass
class _Topology:
    """Per client: the slot map's generation, so many round trips that saw `MOVED` read it once."""

    epoch: int = 0
    stale: bool = False  # a node failed: read the slot map before the next round trip
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    moved: int = 0  # commands answered MOVED / ASK; for tests and metrics
    asked: int = 0


_topologies: weakref.WeakKeyDictionary[RedisCluster, _Topology] = weakref.WeakKeyDictionary()


def _topology(cluster: RedisCluster) -> _Topology:
    topology = _topologies.get(cluster)
    if topology is None:
        topology = _topologies[cluster] = _Topology()
    return topology


def redirects(cluster: RedisCluster) -> tuple[int, int]:
    """How many commands this client's round trips saw answered `MOVED` and `ASK`."""
    topology = _topology(cluster)
    return topology.moved, topology.asked


def pack_get(key: bytes) -> bytes:
    return b"*2\r\n$3\r\nGET\r\n$%d\r\n%b\r\n" % (len(key), key)


async def cluster_round_trip(cluster: RedisCluster, commands: Sequence[Command], limit_seconds: float) -> list[Any]:
    """Send every command to the primary of its key's slot and return the replies in order.

    Error replies are returned as exception objects (as `round_trip` does); a failed node raises.
    """
    topology = _topology(cluster)
    await cluster.initialize()  # reads the slot map the first time; a no-op after that
    if topology.stale:
        await _refresh(cluster, topology, topology.epoch)
    replies: list[Any] = [None] * len(commands)
    todo = list(range(len(commands)))
    asked: dict[int, ClusterNode] = {}
    async with asyncio.timeout(limit_seconds):
        for attempt in range(MAX_REDIRECTS + 1):
            epoch = topology.epoch
            groups: dict[str, tuple[ClusterNode, list[int]]] = {}
            manager = cluster.nodes_manager
            for index in todo:
                node = asked.get(index) or manager.get_node_from_slot(key_slot(commands[index][0]))
                groups.setdefault(node.name, (node, []))[1].append(index)
            results = await asyncio.gather(
                *(_node_trip(node, [(commands[i][1], i in asked) for i in group]) for node, group in groups.values()),
                return_exceptions=True,
            )
            for result in results:
                if isinstance(result, BaseException):
                    topology.stale = True
                    raise result
            asked, todo, moved, settling = {}, [], False, False
            for (_, group), node_replies in zip(groups.values(), results, strict=True):
                assert not isinstance(node_replies, BaseException)
                for index, reply in zip(group, node_replies, strict=True):
                    if isinstance(reply, Exception):
                        text = str(reply)
                        if text.startswith("MOVED "):
                            topology.moved += 1
                            moved = True
                            todo.append(index)
                            continue
                        if text.startswith(_SETTLING):
                            settling = True
                            todo.append(index)
                            continue
                        if text.startswith("ASK "):
                            topology.asked += 1
                            target = _node_named(cluster, text)
                            if target is None:
                                moved = True  # a node the slot map does not know yet
                            else:
                                asked[index] = target
                            todo.append(index)
                            continue
                    replies[index] = reply
            if not todo:
                return replies
            if settling or (moved and attempt > 0):  # MOVED again: the slot map read last time was stale
                await asyncio.sleep(min(_FIRST_PAUSE * 2**attempt, _LONGEST_PAUSE))
            if moved or settling:
                await _refresh(cluster, topology, epoch)
    raise ClusterError(f"commands still redirected after {MAX_REDIRECTS} redirects")


async def _node_trip(node: ClusterNode, commands: Sequence[tuple[bytes, bool]]) -> list[Any]:
    """One buffer to one node; a command marked `True` goes after ASKING, whose +OK is dropped."""
    payload = b"".join(_ASKING + packed if asking else packed for packed, asking in commands)
    expected = len(commands) + sum(asking for _, asking in commands)
    connection = node.acquire_connection()
    try:
        try:
            raw = await exchange(connection, payload, expected)
        except BaseException:
            await connection.disconnect()
            raise
    finally:
        _release(node, connection)
    if expected == len(commands):
        return raw
    replies: list[Any] = []
    position = 0
    for _, asking in commands:
        position += asking  # skip ASKING's reply
        replies.append(raw[position])
        position += 1
    return replies


def _release(node: ClusterNode, connection: Connection) -> None:
    release = getattr(node, "release", None)
    if release is not None:
        release(connection)
    else:  # redis-py before 6 has no ClusterNode.release: its own code appends to the free list
        node._free.append(connection)


def _node_named(cluster: RedisCluster, redirect: str) -> ClusterNode | None:
    """The node an `ASK <slot> <host>:<port>` reply names, if the client knows it."""
    host, _, port = redirect.split(" ")[2].rpartition(":")
    return cluster.get_node(host=host, port=int(port))


async def _refresh(cluster: RedisCluster, topology: _Topology, seen: int) -> None:
    async with topology.lock:
        if topology.epoch != seen:
            return  # another round trip read the slot map meanwhile
        await cluster.nodes_manager.initialize()
        topology.epoch += 1
        topology.stale = False
