"""Projecting `make scale` figures to a larger province from two runs."""

from __future__ import annotations

from typing import Any

import pytest

from loadtests.scale_project import project, render


def run(people: int, seconds: float, redis_bytes: float) -> dict[str, Any]:
    kinds = ("population", "vaccination", "test", "travel", "designation")
    return {
        "people": people,
        "export_seconds": seconds,
        "load_seconds": seconds,
        "load": {kind: {"seconds": seconds} for kind in kinds},
        "redis": {"used_memory_bytes": redis_bytes * people, "bytes_per_subject": redis_bytes},
        "postgres": {
            "table_bytes": 1000 * people,
            "index_bytes": 500 * people,
            "bytes_per_subject": 1500,
            "database_bytes": 1600 * people,
        },
        "hits": {"p50_ms": 2.0, "p99_ms": 9.0},
        "misses": {"p50_ms": 4.0, "p99_ms": 20.0},
    }


def test_linear_figures_grow_with_exponent_one_and_per_subject_ones_stay() -> None:
    rows = {r["figure"]: r for r in project(run(250_000, 10.0, 60.0), run(1_000_000, 40.0, 60.0), 32_000_000)}

    load = rows["load, all kinds"]
    assert load["exponent"] == pytest.approx(1.0)
    assert load["projected"] == pytest.approx(1280.0)
    assert load["linear"] == pytest.approx(1280.0)
    assert rows["Redis bytes/subject"]["exponent"] == pytest.approx(0.0)
    assert rows["Redis bytes/subject"]["projected"] == pytest.approx(60.0)
    assert rows["Redis bytes/subject"]["linear"] is None  # per-subject figures: the power law only
    assert rows["Redis used_memory"]["projected"] == pytest.approx(60.0 * 32_000_000 / 2**30)


def test_a_fixed_cost_shows_as_an_exponent_below_one_and_the_line_keeps_it() -> None:
    # 5 s of start-up plus 20 us a person.
    small, large = run(250_000, 5 + 5.0, 60.0), run(1_000_000, 5 + 20.0, 60.0)
    row = next(r for r in project(small, large, 32_000_000) if r["figure"] == "load, all kinds")
    assert row["exponent"] < 1
    assert row["linear"] == pytest.approx(5 + 640.0)


def test_the_smaller_run_comes_first() -> None:
    with pytest.raises(ValueError, match="smaller run first"):
        project(run(1_000_000, 1.0, 60.0), run(250_000, 1.0, 60.0), 32_000_000)


def test_render_is_a_markdown_table() -> None:
    text = render(project(run(1, 1.0, 1.0), run(2, 2.0, 1.0), 4), 1, 2, 4)
    assert text.splitlines()[0].startswith("| figure | 1 people | 2 people | growth exponent")
    assert "| load, all kinds (s) | 1.00 | 2.00 | 1.00 | 4.00 | 4.00 |" in text
