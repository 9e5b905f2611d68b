"""The risk-area index: exact and city/province matching, levels over time."""

from __future__ import annotations

import pytest

from app.rules import RiskArea, RiskAreaIndex, area_prefix

H = 3600
T0 = 1_650_000_000


def test_exact_city_and_province_matching() -> None:
    index = RiskAreaIndex(
        [
            RiskArea("500103", "high", T0),
            RiskArea("510100", "medium", T0),
            RiskArea("540000", "low", T0),
        ]
    )
    assert index.level_at("500103", T0) == "high"
    assert index.level_at("500104", T0) is None  # a neighbouring district
    assert index.level_at("500100", T0) is None  # a city-level arrival does not match a district
    assert index.level_at("510104", T0) == "medium"  # a district of a city at risk
    assert index.level_at("510100", T0) == "medium"
    assert index.level_at("520104", T0) is None
    assert index.level_at("540102", T0) == "low"  # province-level
    assert index.level_at("500103", T0 - 1) is None  # before it started


def test_highest_of_district_and_city_applies() -> None:
    index = RiskAreaIndex([RiskArea("510104", "medium", T0, T0 + 10 * H), RiskArea("510100", "high", T0 + 5 * H)])
    assert [index.level_at("510104", T0 + h * H) for h in (0, 5, 10)] == ["medium", "high", "high"]
    assert index.level_at("510105", T0) is None
    assert index.timeline("510104") == ((T0, T0 + 5 * H), ("medium", "high"))


def test_latest_record_wins_and_ends_apply() -> None:
    index = RiskAreaIndex(
        [
            RiskArea("310104", "high", T0),
            RiskArea("310104", "low", T0 + 5 * H),  # lowered without closing the high record
            RiskArea("310104", "medium", T0 + 8 * H, T0 + 9 * H),
        ]
    )
    levels = [index.level_at("310104", T0 + h * H) for h in (0, 4, 5, 8, 9)]
    assert levels == ["high", "high", "low", "medium", "low"]


def test_same_start_resolves_to_the_higher_level() -> None:
    index = RiskAreaIndex([RiskArea("310104", "medium", T0), RiskArea("310104", "high", T0)])
    assert index.level_at("310104", T0) == "high"


@pytest.mark.parametrize(
    ("area", "message"),
    [
        (RiskArea("31010", "high", T0), "6 digits"),
        (RiskArea("31010x", "high", T0), "6 digits"),
        (RiskArea("310104", "severe", T0), "unknown level"),  # type: ignore[arg-type]
        (RiskArea("310104", "high", T0, T0), "valid_until is not after valid_from"),
    ],
)
def test_bad_risk_areas_are_refused(area: RiskArea, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RiskAreaIndex([area])


def test_area_prefix_for_queries() -> None:
    assert [area_prefix(c) for c in ("500103", "500100", "500000")] == ["500103", "5001", "50"]
