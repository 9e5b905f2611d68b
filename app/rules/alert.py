"""What the pop-up asks of a person: the area they arrived from, the tests they still need under the
clearing rule, and by when. An explanation of the engine's `risk_area_arrival` reason for the code page,
never an input to the colour: rules.engine alone decides whether the pop-up shows.

The clearing rule (rule set `[arrival]`): a negative test sampled at most `pre_arrival_test_hours`
before arrival plus one local negative test within `local_test_hours` of arrival; or two negative tests
within `two_tests_days` of arrival, at least `two_tests_min_gap_hours` apart.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.rules.areas import RiskAreaIndex
from app.rules.records import SubjectRecords
from app.rules.ruleset import RuleSet


@dataclass(frozen=True, slots=True)
class ArrivalAlert:
    area_code: str
    level: str
    arrived_at: int
    tests_needed: int  # 1: the one local test after a pre-arrival negative; else what the two-test path lacks
    deadline: int  # when the tests needed must have been sampled


def arrival_alert(records: SubjectRecords, areas: RiskAreaIndex, ruleset: RuleSet, now: int) -> ArrivalAlert | None:
    """The most recent uncleared arrival from an area flagged now, and what clears it; None if none."""
    negatives = sorted(t.sampled_at for t in records.tests if t.result == "negative")
    clears = [d.valid_from for d in records.designations if d.kind == "cleared"]
    for arrival in sorted(records.arrivals, key=lambda a: a.arrived_at, reverse=True):
        arrived = arrival.arrived_at
        if not arrived <= now < arrived + ruleset.arrival_window or any(arrived < c <= now for c in clears):
            continue
        level = areas.level_at(arrival.area_code, now)
        if level not in ruleset.arrival_levels:
            continue
        need = _needed(arrived, negatives, ruleset, now)
        if need is not None:
            return ArrivalAlert(arrival.area_code, level, arrived, *need)
    return None


def _needed(arrived: int, negatives: list[int], rs: RuleSet, now: int) -> tuple[int, int] | None:
    """(tests needed, deadline), or None when the tests already clear the arrival."""
    pre = any(arrived - rs.pre_arrival_test_window <= t < arrived for t in negatives)
    local = [t for t in negatives if arrived <= t <= arrived + rs.local_test_deadline]
    after = [t for t in negatives if arrived <= t <= arrived + rs.two_tests_window]
    if pre and local:
        return None
    if after and after[-1] - after[0] >= rs.two_tests_min_gap and len(after) >= 2:
        return None
    local_deadline = arrived + rs.local_test_deadline
    if pre and now <= local_deadline:
        return 1, local_deadline
    # The two-test path: one more if a first test was taken, else two.
    return (1 if after else 2), arrived + rs.two_tests_window
