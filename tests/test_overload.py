"""Overload, for real: a server process is driven at three times the capacity it was just measured to
have (open loop, 1,000 connections, loadtests/overload.py). Admitted requests stay quick, and the rest
are refused at once with 503 and a jittered Retry-After instead of all of them queueing."""

from __future__ import annotations

import asyncio
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

from app.dev.servers import free_port
from app.limits import as_spec
from app.settings import Settings
from loadtests.bench.servers import pinned_server
from tests.test_api_status import insert_status

NUMBER = "500103199003071239"
# The target is 50 ms at 3x. The door (app/http/door.py) meets it when the server and the driver
# each have a core (admitted p99 18-22 ms in `make bench`); here both share the machine, unpinned, and a
# loaded machine moves it past 100 ms. The bound is what this test can hold on a busy CI machine.
ADMITTED_P99_BOUND_MS = 500

pytestmark = pytest.mark.slow


def _env(settings: Settings) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "HEALTHCODE_PEPPER": settings.pepper.hex(),
        "HEALTHCODE_KEYS_DIR": str(settings.keys_dir),
        "HEALTHCODE_PEPPER_FILE": "",
        # One client drives three times capacity here: what is measured is shedding, not its limits.
        "HEALTHCODE_RATE_LIMITS": as_spec(settings.rate_limits),
    }


@pytest.fixture
def server(settings: Settings, signing_key: str, client_keys: dict[str, str], tmp_path: Path) -> Iterator[str]:
    command = [sys.executable, "-m", "app.cli", "serve", "--port", str(port := free_port())]
    with pinned_server(command, port=port, cpu=None, log=tmp_path / "server.log", env=_env(settings)) as served:
        yield served.base_url


def _post(url: str, key: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        url, data=orjson.dumps(body), headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=5) as answer:
        loaded: dict[str, Any] = orjson.loads(answer.read())
        return loaded


async def test_at_three_times_capacity_admitted_requests_stay_quick_and_the_rest_get_fast_503s(
    server: str, db: asyncpg.Connection, settings: Settings, client_keys: dict[str, str]
) -> None:
    await insert_status(db, settings.pepper, NUMBER)
    token = (
        await asyncio.to_thread(_post, f"{server}/v1/status", client_keys["citizen-backend"], {"id_number": NUMBER})
    )["token"]
    # Online verification: a scanner's hot path (signature check, current status from Redis, scan recorded).
    driver = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "loadtests.overload", "--url", server, "--key", client_keys["scanner"],
        "--path", "/v1/verify", "--body", orjson.dumps({"token": token, "checkpoint": "gate-1"}).decode(),
        "--factor", "3", "--seconds", "2", "--warmup", "0.5",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(driver.communicate(), 60)
    assert driver.returncode == 0
    result = orjson.loads(out)
    capacity, overload = result["capacity"], result["overload"]

    assert capacity["goodput_per_s"] > 0 and capacity["errors"] == 0, result
    assert set(overload["by_status"]) == {"200", "503"}, result
    assert overload["by_status"]["503"] > overload["by_status"]["200"], result  # two thirds cannot be served
    # Most requests got an answer; the rest were due while all 1,000 connections waited (not sent in time).
    assert overload["errors"] <= overload["answers"] // 4, result
    assert overload["admitted_p99_ms"] < ADMITTED_P99_BOUND_MS, result
    assert overload["shed_p99_ms"] < ADMITTED_P99_BOUND_MS, result
    assert overload["shed_without_retry_after"] == 0, result
    # Jittered: refused clients are told different moments to come back.
    assert len(overload["retry_after_values"]) > 1 and set(overload["retry_after_values"]) <= {"1", "2", "3"}, result
