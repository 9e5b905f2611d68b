"""Evaluate one subject's records into a status: colour, reasons, pop-up, vaccination, last test, and
``valid_until``, the earliest moment the outcome could change with no new data.

Pure and cheap: ints and small tuples only, no I/O, no datetime arithmetic. ``evaluate`` never raises.

Decisions the policy text leaves open:

- Intervals are half-open: a designation ending exactly now has ended; a positive test exactly 14 days
  old and an arrival exactly 7 days ago no longer count.
- Records dated after ``now`` (a clock a few seconds ahead at an agency) have not happened yet: they are
  ignored and their date bounds ``valid_until``, so the status is recomputed when they take effect.
- A ``cleared`` designation ends every red/yellow designation that started strictly before it and clears
  every arrival strictly before it, from its ``valid_from`` on (its ``valid_until`` is ignored: clearing
  is not undone by time). It does not clear a positive test: that ages out on its own.
- An arrival is judged by its area's level now, not when the person left: an area raised after someone
  left it flags them (what risk-area announcements asked for), and an area lowered or ended unflags them.
- Clearing by tests (Chongqing's rule): a negative test sampled in ``[arrival - 48 h, arrival)`` plus one
  sampled in ``[arrival, arrival + 24 h]``; or two negative tests sampled in ``[arrival, arrival + 3 d]``
  at least 24 h apart. A test sampled at the moment of arrival is a local (landing) test. Either path
  clears, whichever the person followed.
- An arrival not cleared by its deadline stays yellow with the pop-up until its 7-day window closes or a
  ``cleared`` designation is issued: late tests do not clear it. A deadline passing changes nothing,
  so it does not bound ``valid_until``.
- While an override is active it alone decides colour, reasons (``override``) and the pop-up (off);
  vaccination and last test are still reported.
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_right
from dataclasses import dataclass
from typing import Final

from .areas import RiskAreaIndex
from .records import (
    DESIGNATION_KINDS,
    SEVERITY,
    Arrival,
    Designation,
    NucleicTest,
    SubjectRecords,
    Vaccination,
)
from .ruleset import RuleSet

log = logging.getLogger(__name__)

_FOREVER: Final = 1 << 62
_KINDS: Final = frozenset(DESIGNATION_KINDS)
# Reason codes in the order they are reported, whatever colour the rule set gives them.
REASON_CODES: Final = (
    "override",
    "confirmed",
    "close_contact",
    "quarantine",
    "positive_test",
    "secondary_contact",
    "risk_area_arrival",
    "evaluation_error",
)
# Rules in reason-code order.
_RULE_ORDER: Final = (
    "confirmed",
    "close_contact",
    "quarantine",
    "positive_test",
    "secondary_contact",
    "risk_area_arrival",
)
_OVERRIDE: Final = ("override",)
_ERROR: Final = ("evaluation_error",)
# Used only if the rule set itself is unusable inside the error path.
_FALLBACK_ERROR_COLOUR: Final = "yellow"
_FALLBACK_ERROR_TTL: Final = 300
_LOG_AT: Final = frozenset(10**i for i in range(15))


@dataclass(frozen=True, slots=True)
class Evaluation:
    colour: str
    reasons: tuple[str, ...]
    popup: bool
    vaccine_doses: int  # highest dose number received, whatever the product
    vaccine_complete: bool  # a full course of some product, per the rule set's dose counts
    last_test_at: int | None  # sample time of the latest test
    last_test_result: str | None
    ruleset: str  # rule set version
    valid_until: int  # epoch seconds; always after `now`


class ErrorCounter:
    """Counts evaluation errors since start-up, for metrics; ``last`` describes the latest."""

    __slots__ = ("last", "value")

    def __init__(self) -> None:
        self.value = 0
        self.last = ""


EVALUATION_ERRORS: Final = ErrorCounter()

# A frozen dataclass's __init__ sets each field through object.__setattr__, about 1.4 µs for nine
# fields, more than the rest of a typical evaluation. The engine builds its results through the slot
# descriptors instead (a third of that); the instance is the same frozen Evaluation.
_SLOT_SETTERS: Final = tuple(getattr(Evaluation, f).__set__ for f in Evaluation.__slots__)
_new_object = object.__new__


def _result(
    colour: str,
    reasons: tuple[str, ...],
    popup: bool,
    doses: int,
    complete: bool,
    last_at: int | None,
    last_result: str | None,
    version: str,
    valid_until: int,
) -> Evaluation:
    s0, s1, s2, s3, s4, s5, s6, s7, s8 = _SLOT_SETTERS
    e: Evaluation = _new_object(Evaluation)
    s0(e, colour)
    s1(e, reasons)
    s2(e, popup)
    s3(e, doses)
    s4(e, complete)
    s5(e, last_at)
    s6(e, last_result)
    s7(e, version)
    s8(e, valid_until)
    return e


def evaluate(records: SubjectRecords, areas: RiskAreaIndex, ruleset: RuleSet, now: int) -> Evaluation:
    """The status of one subject at ``now`` (epoch seconds). Never raises."""
    try:
        return _evaluate(records, areas, ruleset, now)
    except Exception as exc:
        return _error_outcome(exc, ruleset, now)


def _error_outcome(exc: Exception, ruleset: RuleSet, now: int) -> Evaluation:
    EVALUATION_ERRORS.value += 1
    EVALUATION_ERRORS.last = f"{type(exc).__name__}: {exc}"
    if EVALUATION_ERRORS.value in _LOG_AT:
        # 1st, 10th, 100th...: a systematic fault must not flood the log once per subject.
        log.warning("rule evaluation failed (%d so far)", EVALUATION_ERRORS.value, exc_info=exc)
    try:
        return Evaluation(
            ruleset.error_colour,
            _ERROR,
            False,
            0,
            False,
            None,
            None,
            ruleset.version,
            int(now) + ruleset.error_ttl,
        )
    except Exception:
        until = int(time.time()) + _FALLBACK_ERROR_TTL
        return Evaluation(_FALLBACK_ERROR_COLOUR, _ERROR, False, 0, False, None, None, "unknown", until)


def _evaluate(records: SubjectRecords, areas: RiskAreaIndex, rs: RuleSet, now: int) -> Evaluation:
    if type(now) is not int:
        raise TypeError(f"now must be epoch seconds as int, got {type(now).__name__}")
    nxt = now + rs.max_ttl
    doses = 0
    complete = False
    if records.vaccinations:
        doses, complete, nxt = _vaccination(records.vaccinations, rs, now, nxt)
    last_at: int | None = None
    last_result: str | None = None
    negatives: list[int] = []
    positive_end = 0
    if records.tests:
        last_at, last_result, negatives, positive_end, nxt = _tests(records.tests, rs, now, nxt)

    override = records.override
    if override is not None and now < override.expires_at:
        if override.colour not in SEVERITY:
            raise ValueError(f"override colour {override.colour!r}")
        nxt = min(nxt, override.expires_at)
        return _result(override.colour, _OVERRIDE, False, doses, complete, last_at, last_result, rs.version, nxt)

    clears: list[int] = []
    spans: dict[str, list[tuple[int, int]]] = {}
    if records.designations:
        clears = [d.valid_from for d in records.designations if d.kind == "cleared"]
        spans = _designation_spans(records.designations, clears, rs, now)
    if positive_end > now:
        # Every positive test counted has started, so the reason lasts until the last one ages out.
        spans["positive_test"] = [(now, positive_end)]
    if records.arrivals:
        arrival_spans, nxt = _arrival_spans(records.arrivals, areas, clears, negatives, rs, now=now, nxt=nxt)
        if arrival_spans:
            spans["risk_area_arrival"] = arrival_spans
    if not spans:
        return _result("green", (), False, doses, complete, last_at, last_result, rs.version, nxt)

    reasons: list[str] = []
    severity = 0
    colour = "green"
    for code in _RULE_ORDER:
        code_spans = spans.get(code)
        if code_spans is None:
            continue
        active, change = _state(code_spans, now)
        nxt = min(nxt, change)
        if active:
            reasons.append(code)
            code_colour = _rule_colour(code, rs)
            if SEVERITY[code_colour] > severity:
                severity = SEVERITY[code_colour]
                colour = code_colour
    popup = rs.arrival_popup and "risk_area_arrival" in reasons
    return _result(colour, tuple(reasons), popup, doses, complete, last_at, last_result, rs.version, nxt)


def _rule_colour(code: str, rs: RuleSet) -> str:
    if code == "positive_test":
        return rs.positive_colour
    if code == "risk_area_arrival":
        return rs.arrival_colour
    return rs.designation_colours[code]


def _vaccination(vaccinations: tuple[Vaccination, ...], rs: RuleSet, now: int, nxt: int) -> tuple[int, bool, int]:
    doses = 0
    complete = False
    courses = rs.vaccine_courses
    for v in vaccinations:
        if v.vaccinated_on > now:
            nxt = min(nxt, v.vaccinated_on)
            continue
        dose = v.dose
        if dose < 1:
            raise ValueError(f"vaccination dose {dose!r}")
        doses = max(doses, dose)
        full = courses.get(v.product)
        if full is not None and dose >= full:
            complete = True
    return doses, complete, nxt


def _tests(
    tests: tuple[NucleicTest, ...], rs: RuleSet, now: int, nxt: int
) -> tuple[int | None, str | None, list[int], int, int]:
    """Last test, negative sample times, and when the last counted positive test ages out."""
    last_at: int | None = None
    last_result: str | None = None
    negatives: list[int] = []
    positive_end = 0
    window = rs.positive_window
    for t in tests:
        sampled = t.sampled_at
        if sampled > now:
            nxt = min(nxt, sampled)
            continue
        result = t.result
        if result == "negative":
            negatives.append(sampled)
        elif result == "positive":
            positive_end = max(positive_end, sampled + window)
        else:
            raise ValueError(f"test result {result!r}")
        # A positive and a negative sampled together: report the positive.
        if last_at is None or sampled > last_at or (sampled == last_at and result == "positive"):
            last_at = sampled
            last_result = result
    return last_at, last_result, negatives, positive_end, nxt


def _designation_spans(
    designations: tuple[Designation, ...], clears: list[int], rs: RuleSet, now: int
) -> dict[str, list[tuple[int, int]]]:
    """Designation kind -> the spans, current or future, during which it applies."""
    colours = rs.designation_colours
    spans: dict[str, list[tuple[int, int]]] = {}
    for d in designations:
        kind = d.kind
        start = d.valid_from
        end = _FOREVER if d.valid_until is None else d.valid_until
        if kind not in _KINDS:
            raise ValueError(f"designation kind {kind!r}")
        if end <= start:
            raise ValueError("designation ends before it starts")
        if kind not in colours:
            continue
        for c in clears:
            if start < c < end:
                end = c
        if end > now:
            spans.setdefault(kind, []).append((start, end))
    return spans


def _arrival_spans(
    arrivals: tuple[Arrival, ...],
    areas: RiskAreaIndex,
    clears: list[int],
    negatives: list[int],
    rs: RuleSet,
    *,
    now: int,
    nxt: int,
) -> tuple[list[tuple[int, int]], int]:
    """The spans from now on during which some uncleared arrival is from a flagged area."""
    flagged = rs.arrival_levels
    spans: list[tuple[int, int]] = []
    for a in arrivals:
        arrived = a.arrived_at
        if arrived > now:
            nxt = min(nxt, arrived)
            continue
        end = arrived + rs.arrival_window
        if end <= now:
            continue
        starts, levels = areas.timeline(a.area_code)
        if not starts:
            continue  # never a risk area
        for c in clears:
            if arrived < c < end:
                end = c
        if end <= now or _cleared_by_tests(arrived, negatives, rs):
            continue
        # Walk the area's level timeline over [now, end).
        i = bisect_right(starts, now) - 1
        open_from = now if i >= 0 and levels[i] in flagged else -1
        for j in range(i + 1, len(starts)):
            moment = starts[j]
            if moment >= end:
                break
            if levels[j] in flagged:
                if open_from < 0:
                    open_from = moment
            elif open_from >= 0:
                spans.append((open_from, moment))
                open_from = -1
        if open_from >= 0:
            spans.append((open_from, end))
    return spans, nxt


def _cleared_by_tests(arrived: int, negatives: list[int], rs: RuleSet) -> bool:
    pre_from = arrived - rs.pre_arrival_test_window
    local_until = arrived + rs.local_test_deadline
    two_until = arrived + rs.two_tests_window
    has_pre = has_local = False
    count = 0
    first = last = 0
    for sampled in negatives:
        if sampled < arrived:
            if sampled >= pre_from:
                has_pre = True
        elif sampled <= two_until:
            if sampled <= local_until:
                has_local = True
            if count == 0:
                first = last = sampled
            else:
                first = min(first, sampled)
                last = max(last, sampled)
            count += 1
    return (has_pre and has_local) or (count >= 2 and last - first >= rs.two_tests_min_gap)


def _state(spans: list[tuple[int, int]], now: int) -> tuple[bool, int]:
    """Whether any span holds ``now``, and the next moment that changes (``_FOREVER`` if never).

    Every span ends after ``now``. Overlapping or touching spans merge: a quarantine followed without a
    gap by another keeps the reason, so its first end is not a change.
    """
    end = -1
    for start, stop in spans:
        if start <= now and stop > end:
            end = stop
    if end < 0:
        return False, min(start for start, _ in spans)
    grown = True
    while grown:
        grown = False
        for start, stop in spans:
            if start <= end < stop:
                end = stop
                grown = True
    return True, end
