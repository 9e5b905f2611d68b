"""The fault suite's short form: its own Postgres, Valkey and API; a Redis restart, a Postgres crash,
poison input and slow uploads under load, each with no unexpected 5xx and nothing accepted lost.

Overload (`make chaos` runs it) is left out here: its target (90 % goodput and an admitted p99 of
50 ms at three times capacity) is not met on this hardware yet; tests/test_overload.py holds what
admission control does achieve.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

SCENARIOS = ("steady", "redis-restart", "postgres-stop", "poison", "slow-uploads")


@pytest.mark.timeout(600)
def test_every_fault_scenario_passes_in_its_short_form() -> None:
    only = [arg for name in SCENARIOS for arg in ("--only", name)]
    run = subprocess.run(
        [sys.executable, "-m", "app.dev.chaos", "--short", *only],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    report = run.stdout + run.stderr
    assert run.stdout.strip().splitlines()[-1] == f"chaos: {len(SCENARIOS)} scenarios, 0 failed", report
    assert run.returncode == 0, report
    for name in SCENARIOS:
        assert f"== {name}: passed" in run.stdout, report
