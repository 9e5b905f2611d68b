"""Driving a server with wrk: POST bodies in rotation, a count of non-200 answers, latency percentiles."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

from loadtests.bench import BenchError

# The exact line that installs wrk on Debian and Ubuntu (the Makefile and README quote it).
WRK_INSTALL: Final = "sudo apt-get update && sudo apt-get install -y wrk"
_MARKER: Final = "WRK_RESULT "

# Requests are formatted once in init; `request` only picks the next one. `response` counts every
# answer that is not exactly 200 (wrk's own error count ignores 2xx and 3xx other than 200).
LUA_SCRIPT: Final = r"""
local requests, n, i = {}, 0, 0
local threads = {}
not_ok = 0 -- global: done() reads it from each thread with thread:get

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  local headers = {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. args[2]}
  for line in io.lines(args[1]) do
    n = n + 1
    requests[n] = wrk.format("POST", nil, headers, line)
  end
  if n == 0 then error("no request bodies in " .. args[1]) end
end

function request()
  i = i % n + 1
  return requests[i]
end

function response(status, headers, body)
  if status ~= 200 then
    not_ok = not_ok + 1
    if not_ok <= 3 then io.stderr:write("answer " .. status .. ": " .. body .. "\n") end
  end
end

function done(summary, latency, requests)
  local total = 0
  for _, thread in ipairs(threads) do total = total + thread:get("not_ok") end
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {"requests": %d, "duration_us": %d, "not_ok": %d, "connect_errors": %d, '
      .. '"read_errors": %d, "write_errors": %d, "timeouts": %d, '
      .. '"mean_us": %.1f, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, total, e.connect, e.read, e.write, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


@dataclass(frozen=True, slots=True)
class WrkResult:
    requests: int
    duration_us: int
    not_ok: int  # answers other than 200
    connect_errors: int
    read_errors: int
    write_errors: int
    timeouts: int
    mean_us: float
    p50_us: int
    p90_us: int
    p99_us: int
    max_us: int

    @property
    def rate(self) -> float:
        return self.requests / (self.duration_us / 1e6)

    @property
    def socket_errors(self) -> int:
        return self.connect_errors + self.read_errors + self.write_errors + self.timeouts

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "requests_per_second": round(self.rate, 1)}


def wrk_path() -> str:
    path = shutil.which("wrk")
    if path is None:
        install = WRK_INSTALL.replace("sudo ", "") if os.geteuid() == 0 else WRK_INSTALL
        raise BenchError(f"wrk is not installed; on Debian or Ubuntu: {install}")
    return path


def run_wrk(
    url: str,
    bodies: list[bytes],
    bearer: str,
    *,
    seconds: float,
    connections: int,
    cpu: int | None,
) -> WrkResult:
    """One wrk run of `seconds` with one thread (pinned to `cpu`), POSTing `bodies` in rotation."""
    with tempfile.TemporaryDirectory(prefix="hc-bench-") as tmp:
        script, body_file = Path(tmp, "post.lua"), Path(tmp, "bodies.txt")
        script.write_text(LUA_SCRIPT)
        body_file.write_bytes(b"\n".join(bodies) + b"\n")
        command = [wrk_path(), "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency"]
        command += ["-s", str(script), url, "--", str(body_file), bearer]
        if cpu is not None and shutil.which("taskset"):
            command = ["taskset", "-c", str(cpu), *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith(_MARKER)]
    if done.returncode != 0 or not lines:
        raise BenchError(f"wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    return WrkResult(**json.loads(lines[-1][len(_MARKER) :]))
