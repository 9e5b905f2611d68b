"""`make load`: a bounded, headless Locust run against a local service (or --host), then the capacity report.

Without --host it runs `healthcode demo` (schema, keys, demo clients), loads the synthetic population with
`healthcode load`, and serves the API on a free loopback port for the length of the run. Everything lands
in OUT: Locust's HTML report and CSV statistics, the server's own counters sampled each second
(server_samples.csv), and the capacity report with its chart.

    python -m loadtests.run --duration 30s --out load-results/x [--host URL] [--workers N]
"""

from __future__ import annotations

import argparse
import csv
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from loadtests import capacity
from loadtests.load import LoadError, export, load_with_cli
from loadtests.population import Population, anchor

HERE = Path(__file__).resolve().parent
LOCUSTFILES = f"{HERE / 'locustfile.py'},{HERE / 'shape.py'}"
KEY_ENV = {
    "citizen-backend": "HEALTHCODE_CITIZEN_KEY",
    "scanner": "HEALTHCODE_SCANNER_KEY",
    "agency": "HEALTHCODE_AGENCY_KEY",
}
TICKS = os.sysconf("SC_CLK_TCK")
# HEALTHCODE_RATE_LIMITS of the local service: the buckets the scenarios draw from, far above any run.
UNBOUNDED_LIMITS = ",".join(
    f"{bucket}=1000000/1000000"
    for bucket in ("citizen-backend.status", "citizen-backend.qr", "scanner.verify", "agency.batch-reads")
)
_PG_SHARED = ("walwriter", "checkpointer", "background writer")
# prometheus_client writes counts as floats ("12.0").
_METRIC = re.compile(r'^healthcode_http_requests_total\{method="([^"]*)",route="([^"]*)",status="(\d+)"\} ([0-9.e+]+)$')


def _seconds(text: str) -> int:
    match = re.fullmatch(r"(\d+)([smh]?)", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"duration like 30s, 2m or 1h, not {text!r}")
    return int(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loadtests.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=_seconds, default=45,
                   help="run length (45s, 2m...); default 45s, long enough for tokens (30 s) to expire")  # fmt: skip
    p.add_argument("--out", type=Path, help="result folder (default load-results/<UTC timestamp>)")
    p.add_argument("--host", help="target service; default: start one on a free loopback port")
    p.add_argument("--workers", type=int, default=0, help="local Locust workers (0: one process, no master)")
    p.add_argument("--users", type=int, default=60, help="simulated users (default 60)")
    p.add_argument("--think-time", type=float, default=0.05, help="mean seconds between a user's requests")
    p.add_argument("--people", type=int, default=50_000, help="population size to load and query")
    p.add_argument("--seed", type=int, default=2022)
    p.add_argument("--no-load", action="store_true", help="the population is already loaded; do not load it")
    p.add_argument("--agencies", action=argparse.BooleanOptionalAction, default=True,
                   help="agencies upload batches at a trickle during the mixed phase (default on)")  # fmt: skip
    p.add_argument("--p99-target-ms", type=float, default=capacity.P99_TARGET_MS)
    p.add_argument("--allow-remote", action="store_true", help="allow a --host that is not a loopback address")
    return p


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        body: bytes = response.read()
        return body


def _wait_ready(base: str, proc: subprocess.Popen[bytes] | None, within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"healthcode serve exited with {proc.returncode}; see its output above")
        with suppress(OSError):
            if json.loads(_get(f"{base}/readyz", 2.0)).get("status") == "ready":
                return
        time.sleep(0.2)
    raise SystemExit(f"{base} did not become ready within {within:.0f} s")


def _healthcode() -> str:
    found = shutil.which("healthcode") or str(Path(sys.executable).with_name("healthcode"))
    if not Path(found).exists():
        raise SystemExit("healthcode command not found: install the project (make install)")
    return found


def _client_keys() -> dict[str, str]:
    """Keys from HEALTHCODE_*_KEY, else from the demo's demo-clients.json."""
    keys = {kind: os.environ.get(name, "") for kind, name in KEY_ENV.items()}
    if all(keys.values()):
        return keys
    keys_dir = os.environ.get("HEALTHCODE_KEYS_DIR")
    path = Path(keys_dir) / "demo-clients.json" if keys_dir else None
    if path is None or not path.exists():
        raise SystemExit("client keys: set HEALTHCODE_CITIZEN_KEY, HEALTHCODE_SCANNER_KEY and HEALTHCODE_AGENCY_KEY "
                         "(or HEALTHCODE_KEYS_DIR with a demo-clients.json from `healthcode demo`)")  # fmt: skip
    saved = json.loads(path.read_text())
    return {kind: keys[kind] or saved.get(kind, "") for kind in KEY_ENV}


@contextmanager
def _local_service(port: int) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ}
    # Short-lived tokens, so scanners meet expired ones within a short run (30 s is the shortest allowed).
    env.setdefault("HEALTHCODE_TOKEN_TTL_SECONDS", "30")
    # A few client keys stand in for a whole province's clients: per-client limits would measure
    # themselves, not the service.
    env.setdefault("HEALTHCODE_RATE_LIMITS", UNBOUNDED_LIMITS)
    proc = subprocess.Popen([_healthcode(), "serve", "--host", "127.0.0.1", "--port", str(port)], env=env)
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- sampling the server's own counters -------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def _postgres_cpu(database: str) -> float | None:
    """CPU seconds of the Postgres backends serving `database`, plus the shared writers (WAL, checkpoints).

    Backends of other databases (another test suite on the same server) are left out by their process title.
    """
    total, seen = 0.0, False
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with suppress(OSError, IndexError, ValueError):
            title = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if not title.startswith("postgres:"):
                continue
            if f" {database} " in title or any(aux in title for aux in _PG_SHARED):
                total += _cpu_seconds(int(cmdline.parent.name))
                seen = True
    return total if seen else None


def _redis_cpu(url: str | None) -> float | None:
    if not url:
        return None
    try:
        from redis import Redis

        client = Redis.from_url(url, socket_timeout=2)
        try:
            info: dict[str, Any] = client.info("cpu")
        finally:
            client.close()
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    except Exception:
        return None


def served_counts(text: str) -> dict[str, int]:
    """Requests served per route (all methods and statuses) from a /metrics page."""
    counts: dict[str, int] = {}
    for line in text.splitlines():
        match = _METRIC.match(line)
        if match:
            counts[match.group(2)] = counts.get(match.group(2), 0) + int(float(match.group(4)))
    return counts


class Sampler(threading.Thread):
    """Each second: the server's request counters, and CPU seconds of the server, Redis and Postgres."""

    COLUMNS = ("t", "server_cpu", "redis_cpu", "postgres_cpu", "routes")

    def __init__(self, base: str, server_pid: int | None, out: Path) -> None:
        super().__init__(daemon=True)
        self.base, self.pid, self.out = base, server_pid, out
        self.redis_url = os.environ.get("REDIS_URL") if server_pid else None
        self.database = (
            (urlsplit(os.environ.get("DATABASE_URL", "")).path.lstrip("/") or "postgres") if server_pid else ""
        )
        self.stopped = threading.Event()
        self.errors = 0

    def sample(self) -> list[Any]:
        counts = served_counts(_get(f"{self.base}/metrics").decode())
        return [
            round(time.time(), 3),
            _cpu_seconds(self.pid) if self.pid else "",
            _redis_cpu(self.redis_url) if self.pid else "",
            (_postgres_cpu(self.database) or "") if self.pid else "",
            json.dumps(counts, sort_keys=True),
        ]

    def run(self) -> None:
        with self.out.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(self.COLUMNS)
            while True:
                try:
                    writer.writerow(self.sample())
                    f.flush()
                except Exception:
                    self.errors += 1
                if self.stopped.wait(1.0):
                    with suppress(Exception):
                        writer.writerow(self.sample())
                    return


# --- Locust ------------------------------------------------------------------------------------------------


def _locust_commands(args: argparse.Namespace, host: str, out: Path, expect_colours: bool) -> list[list[str]]:
    classes = ["CitizenUser", "ScannerUser", *(["AgencyUser"] if args.agencies else [])]
    common = [
        sys.executable, "-m", "locust", "-f", LOCUSTFILES, "--host", host,
        "--population-size", str(args.people), "--population-seed", str(args.seed),
        "--think-time", str(args.think_time), *(["--expect-colours"] if expect_colours else []),
    ]  # fmt: skip
    master = [
        *common, "--headless", "--run-time", f"{args.duration + 15}s", "--csv", str(out / "locust"),
        "--csv-full-history", "--html", str(out / "report.html"), "--only-summary", *classes,
    ]  # fmt: skip
    if not args.workers:
        return [master]
    port = _free_port()
    master[len(common) :] = ["--master", "--master-bind-host", "127.0.0.1", "--master-bind-port", str(port),
                             "--expect-workers", str(args.workers), *master[len(common):]]  # fmt: skip
    worker = [*common, "--worker", "--master-host", "127.0.0.1", "--master-port", str(port), *classes]
    return [master] + [worker] * args.workers


def _run_locust(commands: list[list[str]], env: dict[str, str]) -> int:
    workers = [subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL) for c in commands[1:]]
    try:
        return subprocess.run(commands[0], env=env, check=False).returncode
    finally:
        for proc in workers:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    try:
        addresses = {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(addresses) and all(ipaddress.ip_address(a).is_loopback for a in addresses)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    out: Path = args.out or Path("load-results") / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out.mkdir(parents=True, exist_ok=True)
    if args.host and not args.allow_remote and not _is_loopback(args.host):
        raise SystemExit(f"{args.host} is not a loopback address; pass --allow-remote to load another machine")

    local = args.host is None
    port = _free_port() if local else 0
    base = args.host.rstrip("/") if args.host else f"http://127.0.0.1:{port}"
    if local:
        print("preparing the local service: healthcode demo (schema, signing key, demo clients)", flush=True)
        if subprocess.run([_healthcode(), "demo", "--people", "1000", "--base-url", base], check=False,
                          stdout=subprocess.DEVNULL).returncode:  # fmt: skip
            raise SystemExit("healthcode demo failed; is Postgres and Redis up (make servers)?")
    keys = _client_keys()
    loaded_now = False
    if local and not args.no_load:
        now = anchor(int(time.time()))
        files = export(out / "population", Population(args.seed), args.people, now)
        try:
            load_with_cli(files, _healthcode())
        except LoadError as exc:
            raise SystemExit(f"loading the population failed: {exc}") from None
        loaded_now = True
    elif not local:
        print(f"using the population already loaded at {base} (python -m loadtests.load to upload one)")

    env = {**os.environ, **{KEY_ENV[kind]: key for kind, key in keys.items()},
           "HEALTHCODE_LOAD_USERS": str(args.users), "HEALTHCODE_LOAD_SECONDS": str(args.duration)}  # fmt: skip
    service: AbstractContextManager[subprocess.Popen[bytes] | None] = (
        _local_service(port) if local else nullcontext(None)
    )
    with service as server:
        _wait_ready(base, server)
        sampler = Sampler(base, server.pid if server else None, out / "server_samples.csv")
        sampler.start()
        print(f"Locust: {args.users} users for {args.duration} s against {base}"
              f"{f' with {args.workers} workers' if args.workers else ''}; results in {out}", flush=True)  # fmt: skip
        code = _run_locust(_locust_commands(args, base, out, loaded_now), env)
        sampler.stopped.set()
        sampler.join(10)
    (out / "run.json").write_text(json.dumps({
        "host": base, "local_server": local, "duration_seconds": args.duration, "users": args.users,
        "workers": args.workers, "people": args.people, "think_time": args.think_time,
        "agencies": args.agencies, "locust_exit_code": code, "sampler_errors": sampler.errors,
        "cores_on_this_machine": os.cpu_count(),
    }, indent=2))  # fmt: skip
    print(capacity.report(out, p99_target_ms=args.p99_target_ms))
    return code


if __name__ == "__main__":
    sys.exit(main())
