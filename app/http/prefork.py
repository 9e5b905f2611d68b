"""`healthcode serve --workers N`: N server processes on one port, kept running by a small parent.

Each child is a whole `healthcode serve --reuse-port` (its own event loop, pools and Redis client: a
normal application instance), and the kernel spreads connections over their listening sockets
(SO_REUSEPORT), so no request passes through the parent and no lock is shared between children. The
parent only watches: a child that dies is started again (after a pause that grows if children die as
soon as they start, so a broken configuration is not restarted in a tight loop), and SIGTERM or SIGINT
is passed to every child, which finish their requests (app.http.serve's grace) before the parent exits.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from types import FrameType
from typing import Final

log = logging.getLogger(__name__)

# A child that lived less than this counts as failing at start; restarts then wait, doubling to a cap.
HEALTHY_SECONDS: Final = 5.0
FIRST_PAUSE_SECONDS: Final = 0.5
MAX_PAUSE_SECONDS: Final = 30.0
# Children get the server's own grace (app.http.serve) and a little more before they are killed.
STOP_SECONDS: Final = 20.0


@dataclass
class Prefork:
    """Runs `count` copies of `command` until SIGTERM or SIGINT, starting again any that dies."""

    command: list[str]
    count: int
    children: dict[int, tuple[int, float]] = field(default_factory=dict)  # pid -> (slot, started)
    restarts: int = 0
    _stopping: bool = False
    _pause: float = FIRST_PAUSE_SECONDS

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        for slot in range(self.count):
            self._start(slot)
        print(f"healthcode serve: {self.count} processes (pids {sorted(self.children)})", flush=True)
        while self.children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            slot_started = self.children.pop(pid, None)
            if slot_started is None or self._stopping:
                continue
            slot, started = slot_started
            log.warning("server process %d (slot %d) ended (%s); starting another", pid, slot, _describe(status))
            self._pause_if_failing(time.monotonic() - started)
            if not self._stopping:
                self._start(slot)
                self.restarts += 1
        return 0

    def _start(self, slot: int) -> None:
        env = {**os.environ, "HEALTHCODE_SERVE_SLOT": str(slot)}
        child = subprocess.Popen(self.command, env=env, stdin=subprocess.DEVNULL)
        self.children[child.pid] = (slot, time.monotonic())

    def _pause_if_failing(self, lived: float) -> None:
        if lived >= HEALTHY_SECONDS:
            self._pause = FIRST_PAUSE_SECONDS
            return
        log.warning("it lived %.1f s; waiting %.1f s before starting it again", lived, self._pause)
        time.sleep(self._pause)  # the parent has nothing else to do; SIGTERM still stops it after
        self._pause = min(self._pause * 2, MAX_PAUSE_SECONDS)

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        if self._stopping:
            return
        self._stopping = True
        for pid in list(self.children):
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_SECONDS
        # Reaped here, so a child stuck past the grace is killed instead of holding the parent forever.
        while self.children and time.monotonic() < deadline:
            pid, _ = os.waitpid(-1, os.WNOHANG)
            if pid:
                self.children.pop(pid, None)
            else:
                time.sleep(0.05)
        for pid in list(self.children):
            _signal(pid, signal.SIGKILL)


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
        os.kill(pid, signum)


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"


def child_command(host: str, port: int, access_log: bool) -> list[str]:
    command = [sys.executable, "-m", "app.cli", "serve", "--host", host, "--port", str(port), "--reuse-port"]
    return [*command, "--access-log"] if access_log else command
