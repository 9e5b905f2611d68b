"""Starting a server process pinned to one core, waiting until it answers, and stopping it."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from loadtests.bench import BenchError

START_TIMEOUT_SECONDS = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as answer:
            return bool(answer.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@dataclass(frozen=True, slots=True)
class Server:
    base_url: str
    pid: int

    def cpu_seconds(self) -> float:
        """User plus system CPU time the process has used: per request, a figure other load cannot skew."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def pinned_server(
    command: list[str], *, port: int, cpu: int | str | None, log: Path, env: Mapping[str, str] | None = None
) -> Iterator[Server]:
    """Run `command` (which must serve GET /healthz on `port`) on `cpu` (a core, or a taskset list such
    as "0,1") until the block ends."""
    if cpu is not None and shutil.which("taskset"):
        command = ["taskset", "-c", str(cpu), *command]
    base = f"http://127.0.0.1:{port}"
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + START_TIMEOUT_SECONDS
            while not _answers(f"{base}/healthz"):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise BenchError(f"{' '.join(command)} did not start; its log:\n{log.read_text()[-3000:]}")
                time.sleep(0.1)  # polling a process we started; nothing to wait on instead
            yield Server(base, process.pid)  # taskset execs the command: same pid
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
