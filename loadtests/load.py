"""Loading the synthetic population into the service through the ingestion path.

Two ways, same rows: `healthcode load` (straight to Postgres with COPY, for a local service and large N)
or `POST /v1/batches` as an agency would (any host; uploads in chunks and waits until each is done).
"""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp

from loadtests.population import LOAD_ORDER, Population, write_csv

UPLOAD_CHUNK = 50_000  # people per uploaded batch
POLL_SECONDS = 0.2


class LoadError(RuntimeError):
    """The population could not be loaded; the message says which kind and why."""


def export(directory: Path, population: Population, count: int, now: int) -> list[tuple[str, Path]]:
    """One CSV per record kind, in load order."""
    directory.mkdir(parents=True, exist_ok=True)
    files = []
    for kind in LOAD_ORDER:
        path = directory / f"{kind}.csv"
        with path.open("w", encoding="utf-8", newline="") as out:
            write_csv(out, population, kind, count, now=now)
        files.append((kind, path))
    return files


def load_with_cli(files: Sequence[tuple[str, Path]], healthcode: str, env: dict[str, str] | None = None) -> None:
    """`healthcode load --kind K FILE` for each file (its progress and report go to our stdout)."""
    for kind, path in files:
        print(f"loading {kind} from {path}", flush=True)
        done = subprocess.run([healthcode, "load", "--kind", kind, str(path)], env=env, check=False)
        if done.returncode != 0:
            raise LoadError(f"healthcode load --kind {kind} {path} exited with {done.returncode}")


async def upload(
    base_url: str, agency_key: str, population: Population, count: int, now: int, *, chunk: int = UPLOAD_CHUNK
) -> dict[str, int]:
    """Upload every kind for people 0..count-1 as batches; return accepted rows per kind."""
    accepted: dict[str, int] = {}
    headers = {"Authorization": f"Bearer {agency_key}", "Content-Type": "text/csv"}
    async with aiohttp.ClientSession(base_url, headers=headers) as session:
        for kind in LOAD_ORDER:
            accepted[kind] = 0
            for start in range(0, count, chunk) if kind != "risk_area" else (0,):
                body = io.StringIO()
                write_csv(body, population, kind, min(chunk, count - start), start=start, now=now)
                batch = await _upload_one(session, kind, body.getvalue().encode())
                accepted[kind] += await _wait_done(session, kind, batch)
    return accepted


async def _upload_one(session: aiohttp.ClientSession, kind: str, body: bytes) -> int:
    async with session.post(
        f"/v1/batches?kind={kind}", data=body, headers={"Idempotency-Key": f"loadtests-{uuid.uuid4()}"}
    ) as response:
        payload: Any = await response.json(content_type=None)
        if response.status not in (200, 202) or not isinstance(payload, dict):
            raise LoadError(f"uploading {kind} answered {response.status}: {payload}")
        return int(payload["id"])


async def _wait_done(session: aiohttp.ClientSession, kind: str, batch: int, within: float = 600.0) -> int:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        async with session.get(f"/v1/batches/{batch}") as response:
            payload: Any = await response.json(content_type=None)
        state = payload.get("state")
        if state == "done":
            counts = payload["counts"]
            if counts["rejected"]:
                raise LoadError(
                    f"{kind} batch {batch}: {counts['rejected']} rows rejected; see {payload['rejections']}"
                )
            return int(counts["accepted"]) + int(counts["duplicates"])
        if state == "failed":
            raise LoadError(f"{kind} batch {batch} failed: {payload.get('error')}")
        await asyncio.sleep(POLL_SECONDS)
    raise LoadError(f"{kind} batch {batch} not done within {within:.0f} s")


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m loadtests.load", description="Upload the synthetic population to a service as an agency."
    )
    parser.add_argument("--host", required=True, help="base URL, e.g. http://127.0.0.1:8081")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--seed", type=int, default=2022)
    parser.add_argument("--agency-key", required=True)
    args = parser.parse_args(argv)
    from loadtests.population import anchor

    try:
        accepted = asyncio.run(
            upload(args.host, args.agency_key, Population(args.seed), args.count, anchor(int(time.time())))
        )
    except LoadError as exc:
        print(f"loadtests.load: {exc}", file=sys.stderr)
        return 1
    print(" ".join(f"{kind}={n}" for kind, n in accepted.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
