"""What consulting a peer adds to a status answer: two deployments on loopback, latency per answer.

`python -m loadtests.bench.peers [--requests 2000]` (also run by `make bench`). Deployment A and its peer
B run in this process on 127.0.0.1 (aiohttp servers, databases `healthcode_bench_peer_a` and `_b`,
Redis dbs 10 and 11 of REDIS_URL's server), each with its own pepper and signing key and one shared
federation key. The same people are registered at both; their vaccinations are given in B. Requests
are sent one at a time (latency, not throughput) by a client in the same process, rotating through the
people, in these cases:

- `local`: a Redis hit that consults nobody (the person's course already counts) — the reference;
- `peer`: `include_peer_vaccinations` with the remembered look-up cleared before each request, so A
  asks B every time (B verifies A's assertion, reads Postgres, signs; A verifies B's answer); B's
  records are already stored, so nothing is written;
- `peer_down_refused`: B stopped, its breaker reset before each request: a refused connection each time;
- `peer_down_skipped`: B stopped and its breaker open (the steady state of an outage): not asked;
- `peer_silent`: B replaced by a socket that accepts and never answers: the answer waits the budget.

The client, A and B share one event loop on one process, so a peer's own work is on the same core as
A's: the added latency includes B's processing, as it would on a loaded host pair, and none of the
network a real peer is behind.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, Final

import aiohttp
import asyncpg
import orjson
from aiohttp import web
from redis.asyncio import Redis

from app.clients import add_client
from app.db import connection, recreate_database
from app.federation.peers import Peer, add_peer
from app.http.app import create_app
from app.http.appkeys import FEDERATION, INGEST, PG
from app.identity import Identity, pseudonym, resident_check_char
from app.keys.lifecycle import activate, new_key
from app.limits import unbounded
from app.scopes import RECORD_KINDS
from app.settings import Settings
from cache.federation import peer_lookup_key
from loadtests.bench import BenchError
from loadtests.bench.data import with_path

PEOPLE: Final = 200
REQUESTS: Final = 2000
SILENT_REQUESTS: Final = 20
CPU_PER_REQUEST: dict[int, float] = {}


def _number(i: int) -> str:
    first17 = f"500101198807{(i // 1000) % 28 + 1:02d}{i % 1000:03d}"
    return first17 + resident_check_char(first17)


class Deployment:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = create_app(settings, background=False)
        self.runner = web.AppRunner(self.app, access_log=None)
        self.url = ""
        self.keys: dict[str, str] = {}

    async def prepare(self) -> None:
        await recreate_database(self.settings.database_url)
        async with connection(self.settings.database_url) as conn:
            await activate(conn, await new_key(conn, self.settings.keys_dir))
            for kind in ("citizen-backend", "agency"):
                scopes = RECORD_KINDS if kind == "agency" else ()
                self.keys[kind] = (await add_client(conn, f"bench-{kind}", kind, scopes)).secret
        redis = Redis.from_url(self.settings.redis_url)
        await redis.flushdb()
        await redis.aclose()

    async def start(self) -> None:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    async def stop(self) -> None:
        await self.runner.cleanup()

    def peer(self, api_url: str | None = None) -> Peer:
        return Peer(
            self.settings.issuer, self.settings.issuer, f"{self.url}/.well-known/jwks.json", ("ES256",), True,
            api_url or self.url,
        )  # fmt: skip

    async def trust(self, peer: Peer) -> None:
        async with connection(self.settings.database_url) as conn:
            await add_peer(conn, peer)
        federation = self.app[FEDERATION]
        await federation.load(self.app[PG])
        await federation.keys.refresh(federation.session, force=True)

    async def upload(self, session: aiohttp.ClientSession, kind: str, body: str) -> None:
        headers = {"Authorization": f"Bearer {self.keys['agency']}", "Content-Type": "text/csv"}
        async with session.post(f"{self.url}/v1/batches?kind={kind}", data=body.encode(), headers=headers) as r:
            if r.status != 202:
                raise BenchError(f"upload of {kind} refused: {r.status} {await r.text()}")
        await self.app[INGEST].drain()


def _not_reached(reason: str) -> Callable[[dict[str, Any]], bool]:
    def check(answer: dict[str, Any]) -> bool:
        return bool(answer["peer_vaccinations"]["not_reached"] == [{"issuer": "bench-b", "reason": reason}])

    return check


def _reached(answer: dict[str, Any]) -> bool:
    return bool(answer["peer_vaccinations"]["reached"] == ["bench-b"])


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 3),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 3),
        "requests": len(ordered),
    }


async def _measure(
    session: aiohttp.ClientSession,
    a: Deployment,
    count: int,
    *,
    include: bool,
    before: Callable[[int], Awaitable[None]] | None = None,
    expect: Callable[[dict[str, Any]], bool] = lambda answer: True,
) -> list[float]:
    headers = {"Authorization": f"Bearer {a.keys['citizen-backend']}", "Content-Type": "application/json"}
    samples = []
    cpu_started = time.process_time()
    for n in range(count):
        i = n % PEOPLE
        if before is not None:
            await before(i)
        body = orjson.dumps({"id_number": _number(i), "include_peer_vaccinations": include})
        started = time.perf_counter()
        async with session.post(f"{a.url}/v1/status", data=body, headers=headers) as r:
            answer = await r.json()
        samples.append(time.perf_counter() - started)
        if r.status != 200 or not expect(answer):
            raise BenchError(f"unexpected answer {r.status}: {answer}")
    # CPU of this process (client, A and B together) per request: steadier than latency on a busy host.
    CPU_PER_REQUEST[id(samples)] = (time.process_time() - cpu_started) / count
    return samples


async def _run(requests: int) -> dict[str, Any]:
    base_db = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    base_redis = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    federation_key = secrets.token_bytes(32)
    with tempfile.TemporaryDirectory() as tmp:
        common = Settings(
            database_url="", redis_url="", pepper=b"", keys_dir=Path(tmp), handle_key=secrets.token_bytes(32),
            rate_limits=unbounded(), federation_key=federation_key, pg_pool_min=1, pg_pool_max=4,
        )  # fmt: skip
        a = Deployment(
            replace(
                common,
                database_url=with_path(base_db, "/healthcode_bench_peer_a"),
                redis_url=with_path(base_redis, "/10"),
                pepper=secrets.token_bytes(32),
                keys_dir=Path(tmp) / "a",
                issuer="bench-a",
                region_code="CN-CQ",
            )
        )
        b = Deployment(
            replace(
                common,
                database_url=with_path(base_db, "/healthcode_bench_peer_b"),
                redis_url=with_path(base_redis, "/11"),
                pepper=secrets.token_bytes(32),
                keys_dir=Path(tmp) / "b",
                issuer="bench-b",
                region_code="CN-SC",
                handle_key=secrets.token_bytes(32),
            )
        )
        try:
            await a.prepare()
            await b.prepare()
        except (OSError, asyncpg.PostgresError) as exc:
            raise BenchError(
                f"cannot prepare the bench databases ({exc}); start the servers with `make servers`"
            ) from exc
        await a.start()
        await b.start()
        redis = Redis.from_url(a.settings.redis_url)
        try:
            return await _scenarios(a, b, redis, requests)
        finally:
            await redis.aclose()
            await a.stop()
            await b.stop()


async def _scenarios(a: Deployment, b: Deployment, redis: Redis, requests: int) -> dict[str, Any]:
    await a.trust(b.peer())
    await b.trust(a.peer())
    people = "\n".join(f"{_number(i)},人{i}" for i in range(PEOPLE))
    doses = "\n".join(f"{_number(i)},sinovac-coronavac,{d},2021-0{4 + d}-01" for i in range(PEOPLE) for d in (1, 2))
    async with aiohttp.ClientSession() as session:
        for deployment in (a, b):
            await deployment.upload(session, "population", "id_number,name\n" + people + "\n")
        await b.upload(session, "vaccination", "id_number,product,dose,vaccinated_on\n" + doses + "\n")
        print(f"peers: {PEOPLE} people at A and B, vaccinated at B; {requests} requests a case", file=sys.stderr)
        # First consultation of everyone: B's records stored at A (not measured).
        await _measure(session, a, PEOPLE, include=True, expect=lambda s: s["vaccination"]["complete"])
        federation = a.app[FEDERATION]

        async def forget(i: int) -> None:
            await redis.delete(peer_lookup_key(pseudonym(Identity("resident", _number(i)), a.settings.pepper)))

        async def forget_and_reset(i: int) -> None:
            await forget(i)
            federation.client._breakers.clear()

        results = {
            "local": await _measure(session, a, requests, include=False, expect=lambda s: "peer_vaccinations" not in s),
            "peer": await _measure(session, a, requests, include=True, before=forget, expect=_reached),
        }
        await b.stop()
        results["peer_down_refused"] = await _measure(
            session, a, requests, include=True, before=forget_and_reset, expect=_not_reached("unavailable")
        )
        results["peer_down_skipped"] = await _measure(
            session, a, requests, include=True, before=forget, expect=_not_reached("skipped")
        )
        silent = socket.socket()
        silent.bind(("127.0.0.1", 0))
        silent.listen(1024)
        try:
            await a.trust(replace(b.peer(), api_base_url=f"http://127.0.0.1:{silent.getsockname()[1]}"))
            results["peer_silent"] = await _measure(
                session, a, SILENT_REQUESTS, include=True, before=forget_and_reset, expect=_not_reached("timeout")
            )
        finally:
            silent.close()
    figures: dict[str, Any] = {
        name: {**_percentiles(samples), "cpu_ms": round(CPU_PER_REQUEST[id(samples)] * 1000, 3)}
        for name, samples in results.items()
    }
    local = figures["local"]
    for name in ("peer", "peer_down_refused", "peer_down_skipped", "peer_silent"):
        figures[name]["added_p50_ms"] = round(figures[name]["p50_ms"] - local["p50_ms"], 3)
        figures[name]["added_p99_ms"] = round(figures[name]["p99_ms"] - local["p99_ms"], 3)
    figures["budget_ms"] = a.settings.peer_timeout_seconds * 1000
    for name, f in figures.items():
        if isinstance(f, dict):
            added = f" (added p50 {f['added_p50_ms']} ms, p99 {f['added_p99_ms']} ms)" if "added_p50_ms" in f else ""
            cpu = f", {f['cpu_ms']} ms CPU a request"
            print(f"peers {name}: p50 {f['p50_ms']} ms, p99 {f['p99_ms']} ms over {f['requests']}{added}{cpu}")
    return figures


def run(args: argparse.Namespace) -> dict[str, Any]:
    return asyncio.run(_run(getattr(args, "requests", REQUESTS)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench.peers", description=__doc__)
    parser.add_argument("--requests", type=int, default=REQUESTS, help=f"requests per case ({REQUESTS})")
    try:
        run(parser.parse_args(argv))
    except BenchError as exc:
        print(f"bench peers: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
