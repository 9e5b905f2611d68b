"""A whole healthcode of its own for the fault suite: Postgres, Valkey and the API, each started here.

Everything lives in one temporary state folder and on free loopback ports, so the suite can kill and
restart these servers without touching a developer's or CI's own Postgres and Redis; `close()` ends
only the processes this stack started.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import asyncpg

from app.dev import servers
from app.dev.population import synthetic_people
from app.limits import as_spec, unbounded

SEED = 2022
READY_TIMEOUT = 60.0


@dataclass
class Stack:
    people: int
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="healthcode-chaos-")))
    pg_port: int = 0
    redis_port: int = 0
    api_port: int = 0
    keys: dict[str, str] = field(default_factory=dict)
    numbers: list[str] = field(default_factory=list)
    _api: asyncio.subprocess.Process | None = None

    @property
    def state(self) -> servers.StateDir:
        return servers.StateDir(self.root)

    @property
    def database_url(self) -> str:
        return f"postgresql://postgres@{servers.LOCAL_HOST}:{self.pg_port}/{servers.DATABASE_NAME}"

    @property
    def base_url(self) -> str:
        return f"http://{servers.LOCAL_HOST}:{self.api_port}"

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "REDIS_URL": f"redis://{servers.LOCAL_HOST}:{self.redis_port}/0",
            "HEALTHCODE_PEPPER_FILE": str(self.state.pepper_file),
            "HEALTHCODE_HANDLE_KEY_FILE": str(self.state.handle_key_file),
            "HEALTHCODE_KEYS_DIR": str(self.state.keys_dir),
            # A few client keys drive the whole load: per-client limits would turn overload into 429s
            # and hide the shedding and the faults under test.
            "HEALTHCODE_RATE_LIMITS": as_spec(unbounded()),
        }

    async def start(self) -> None:
        """Servers, schema, demo keys and clients, `people` synthetic people, then the API."""
        servers.ensure_demo_secrets(self.state)
        self.pg_port = await asyncio.to_thread(servers.start_postgres, self.state)
        await asyncio.to_thread(servers.ensure_database, self.pg_port)
        self.redis_port = await asyncio.to_thread(servers.start_valkey, self.state)
        # Recorded, so that a server started again after a fault comes back on the same port.
        self.state.write_servers({"postgres": {"port": self.pg_port}, "redis": {"port": self.redis_port}})
        await self._cli("demo", "--people", str(self.people), "--seed", str(SEED))
        self.keys = json.loads((self.state.keys_dir / "demo-clients.json").read_text())
        self.numbers = [p.number for p in synthetic_people(self.people, SEED)]
        self.api_port = servers.free_port()
        log = os.open(self.root / "api.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            self._api = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "app.cli",
                "serve",
                "--port",
                str(self.api_port),
                env=self.env,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                stdin=asyncio.subprocess.DEVNULL,
            )
        finally:
            os.close(log)
        await self._until_ready()

    async def stop_redis(self) -> None:
        await asyncio.to_thread(servers.stop_valkey, self.state)

    async def start_redis(self) -> None:
        """Valkey again, on the same port and with nothing in it (it keeps no data on disk)."""
        port = await asyncio.to_thread(servers.start_valkey, self.state)
        assert port == self.redis_port, f"valkey came back on {port}, not {self.redis_port}"

    async def stop_postgres(self) -> None:
        await asyncio.to_thread(servers.stop_postgres, self.state, "immediate")

    async def start_postgres(self) -> None:
        port = await asyncio.to_thread(servers.start_postgres, self.state)
        assert port == self.pg_port, f"postgres came back on {port}, not {self.pg_port}"

    async def fetchval(self, query: str, *args: object) -> object:
        conn = await asyncpg.connect(self.database_url)
        try:
            return await conn.fetchval(query, *args)
        finally:
            await conn.close()

    @contextlib.contextmanager
    def api_on_own_core(self) -> Iterator[set[int]]:
        """Pins the API to one CPU for a while and yields the others, for a load driver (with one CPU,
        the two share it)."""
        assert self._api is not None
        cpus = sorted(os.sched_getaffinity(self._api.pid))
        if len(cpus) < 2:
            yield set(cpus)
            return
        os.sched_setaffinity(self._api.pid, {cpus[0]})
        try:
            yield set(cpus[1:])
        finally:
            os.sched_setaffinity(self._api.pid, set(cpus))

    def api_log(self) -> str:
        return (self.root / "api.log").read_text(errors="replace")

    async def close(self) -> None:
        """End the API and both servers (only those started here) and remove the state folder."""
        if self._api is not None and self._api.returncode is None:
            self._api.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(15):
                    await self._api.wait()
            except TimeoutError:
                self._api.kill()
                await self._api.wait()
        await asyncio.to_thread(servers.stop_valkey, self.state)
        await asyncio.to_thread(servers.stop_postgres, self.state, "immediate")
        if os.environ.get("HEALTHCODE_CHAOS_KEEP"):
            print(f"chaos: state, logs and the API's log kept in {self.root}")
        else:
            shutil.rmtree(self.root, ignore_errors=True)

    async def _cli(self, *args: str) -> None:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "app.cli",
            *args,
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"healthcode {' '.join(args)} failed:\n{output.decode(errors='replace')[-3000:]}")

    async def _until_ready(self) -> None:
        async with aiohttp.ClientSession() as session, asyncio.timeout(READY_TIMEOUT):
            while True:
                if self._api is not None and self._api.returncode is not None:
                    raise RuntimeError(f"the API exited ({self._api.returncode}):\n{self.api_log()[-3000:]}")
                try:
                    async with session.get(f"{self.base_url}/readyz") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)  # a process starting up: poll, bounded by READY_TIMEOUT
