"""`make scale` on a tiny province: every step runs, every person is loaded, cached and answered.

It starts its own Redis server and creates (then drops) its own database, so it touches neither the
suite's servers nor a developer's.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

PEOPLE = 400
DATABASE = "healthcode_scale_test"

# About 40 s: five `healthcode load` processes, a server and a short Locust run.
pytestmark = pytest.mark.slow


def test_a_small_province_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "scale"
    done = subprocess.run(
        [sys.executable, "-m", "loadtests.bench.scale", "--people", str(PEOPLE), "--queries", "300",
         "--duration", "5s", "--database", DATABASE, "--out", str(out)],
        capture_output=True, text=True, check=False, timeout=600, env={**os.environ},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((out / "scale.json").read_text())

    assert set(result["load"]) == {"population", "vaccination", "test", "travel", "designation", "risk_area"}
    assert result["load"]["population"]["rows"] == PEOPLE
    assert result["redis"]["cached_entries"] == PEOPLE  # every person's status computed and cached
    assert result["postgres"]["subjects"] == PEOPLE
    assert result["redis"]["bytes_per_subject"] > 0 and result["postgres"]["bytes_per_subject"] > 0
    for phase in ("hits", "misses"):
        assert result[phase]["queries"] == 300
        assert result[phase]["wrong_colour"] == 0
    assert result["capacity"].startswith("capacity: ")
    assert "capacity:" in done.stdout
    # The database is gone afterwards.
    assert not asyncio.run(_database_exists())


async def _database_exists() -> bool:
    conn = await asyncpg.connect(os.environ["DATABASE_URL"])
    try:
        return bool(await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DATABASE))
    finally:
        await conn.close()
