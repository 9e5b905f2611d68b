"""The Locust scenarios, run for a few seconds against the service, fail the test if any check fails.

Locust monkey-patches the process with gevent, so it runs as a subprocess; the service runs here, on a
free loopback port, on the test Postgres and Redis, loaded with the synthetic population through the
batch upload path. Tokens live 3 s, so scanners see expired ones and citizens refresh within the run.
"""

from __future__ import annotations

import asyncio
import csv
import os
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from aiohttp import web

from app.http.app import create_app
from app.settings import Settings
from loadtests.load import upload
from loadtests.population import Population, anchor

PEOPLE = 300
SEED = 4
RUN_SECONDS = 8
REPO = Path(__file__).resolve().parent.parent

# About 10 s: a Locust subprocess drives the service for RUN_SECONDS.
pytestmark = pytest.mark.slow


@pytest.fixture
async def service(
    settings: Settings, db: object, redis: object, signing_key: str, client_keys: dict[str, str]
) -> AsyncIterator[str]:
    app = create_app(replace(settings, token_ttl_seconds=3), background=False)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


async def test_scenarios_pass_their_checks(service: str, client_keys: dict[str, str], tmp_path: Path) -> None:
    accepted = await upload(service, client_keys["agency"], Population(SEED), PEOPLE, anchor(int(time.time())))
    assert accepted["population"] == PEOPLE

    env = {
        **os.environ,
        "HEALTHCODE_CITIZEN_KEY": client_keys["citizen-backend"],
        "HEALTHCODE_SCANNER_KEY": client_keys["scanner"],
        "HEALTHCODE_AGENCY_KEY": client_keys["agency"],
    }
    prefix = tmp_path / "run"
    locust = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "locust", "-f", str(REPO / "loadtests" / "locustfile.py"),
        "--headless", "--only-summary", "--users", "7", "--spawn-rate", "7", "--run-time", f"{RUN_SECONDS}s",
        "--host", service, "--csv", str(prefix), "--loglevel", "WARNING",
        "--population-size", str(PEOPLE), "--population-seed", str(SEED), "--expect-colours",
        "--think-time", "0.05", "--expired-share", "0.3", "--tampered-share", "0.2",
        "--agency-interval", "1", "--agency-rows", "5",
        "CitizenUser", "ScannerUser", "AgencyUser",
        cwd=REPO, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(locust.communicate(), RUN_SECONDS + 30)
    failures = _rows(Path(f"{prefix}_failures.csv"))
    assert locust.returncode == 0 and not failures, (failures, output.decode()[-3000:])

    stats = {row["Name"]: row for row in _rows(Path(f"{prefix}_stats.csv"))}
    for name in (
        "/v1/status (open)",
        "/v1/status (reopen)",
        "/v1/status (refresh)",
        "/v1/verify (valid)",
        "/v1/verify (expired)",
        "/v1/verify (tampered)",
        "/v1/batches?kind=test",
        "/v1/batches/{id}",
        "/v1/status (after batch)",
    ):
        assert name in stats, (name, sorted(stats))
        assert int(stats[name]["Request Count"]) > 0, name
        assert int(stats[name]["Failure Count"]) == 0, name
    assert int(stats["Aggregated"]["Request Count"]) > 200
