"""`healthcode serve --workers 2`: two processes on one port; one killed is replaced while the port keeps
answering; SIGTERM stops them all."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from app.dev.servers import free_port
from app.settings import Settings
from tests.test_status_races import environment

# Starts a server parent and its processes (5-10 s here).
pytestmark = pytest.mark.slow


def children(pid: int) -> set[int]:
    return {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


def running(pid: int) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


def listening(pids: set[int], port: int) -> set[int]:
    """Which of `pids` hold a socket listening on `port` (from /proc: net/tcp and each one's fds)."""
    sockets = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].rpartition(":")[2], 16) == port and fields[3] == "0A":  # 0A: LISTEN
            sockets.add(f"socket:[{fields[9]}]")
    held = set()
    for pid in pids:
        try:
            if any(os.readlink(fd) in sockets for fd in Path(f"/proc/{pid}/fd").iterdir()):
                held.add(pid)
        except (FileNotFoundError, ProcessLookupError):
            continue
    return held


async def answers(session: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with session.get(url) as r:
            return r.status == 200
    except aiohttp.ClientError:
        return False


async def test_serve_workers_restarts_a_dead_process_and_stops_on_sigterm(
    settings: Settings, db: asyncpg.Connection
) -> None:
    port = free_port()
    parent = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app.cli",
        "serve",
        "--port",
        str(port),
        "--workers",
        "2",
        env=environment(settings),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/healthz"
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
            deadline = time.monotonic() + 60
            # Both processes listening: the kernel spreads connections over both sockets.
            while len(listening(children(parent.pid), port)) != 2:
                assert time.monotonic() < deadline and parent.returncode is None, "the servers did not start"
                await asyncio.sleep(0.05)
            first = children(parent.pid)
            victim = min(first)
            os.kill(victim, signal.SIGKILL)
            while victim in children(parent.pid):  # until the parent has reaped it
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            # The other process answers every request meanwhile; new connections do not reach the dead one.
            assert all([await answers(session, url) for _ in range(50)])
            while len(listening(children(parent.pid), port)) != 2:
                assert time.monotonic() < deadline, "the dead process was not replaced"
                await asyncio.sleep(0.05)
            now = children(parent.pid)
            assert victim not in now and len(now & first) == 1
            parent.send_signal(signal.SIGTERM)
            async with asyncio.timeout(30):
                assert await parent.wait() == 0
            assert not any(running(pid) for pid in now)
            assert not await answers(session, url)
    finally:
        if parent.returncode is None:
            parent.kill()
            await parent.wait()
