"""The rules engine as a table of scenarios: a person's records and a clock, and the expected outcome."""

from __future__ import annotations

from dataclasses import FrozenInstanceError, dataclass, field, replace
from pathlib import Path

import pytest

from app.rules import (
    EVALUATION_ERRORS,
    Arrival,
    Designation,
    Evaluation,
    NucleicTest,
    Override,
    RiskArea,
    RiskAreaIndex,
    RuleSet,
    SubjectRecords,
    Vaccination,
    evaluate,
    load_ruleset,
)
from app.rules.ruleset import RULESETS_DIR

H = 3600
D = 86400
T0 = 1_650_000_000  # 2022-04-15T05:20:00Z
TTL = T0 + D  # valid_until when nothing is due to change: now + max TTL

HIGH = "420106"  # a district at high risk since long before T0, open-ended
MEDIUM_CITY = "310100"  # a whole city at medium risk, ending at T0 + 10 h
MEDIUM_CITY_DISTRICT = "310104"
LOWERED_CITY = "440300"  # high, then lowered by a newer `low` record from T0 + 5 h
LOWERED_CITY_DISTRICT = "440305"
FUTURE_HIGH = "110105"  # high from T0 + 4 h
LOW = "330106"
QUIET = "500103"  # never a risk area

AREAS = RiskAreaIndex(
    [
        RiskArea(HIGH, "high", T0 - 30 * D),
        RiskArea(MEDIUM_CITY, "medium", T0 - 30 * D, T0 + 10 * H),
        RiskArea(LOWERED_CITY, "high", T0 - 30 * D),
        RiskArea(LOWERED_CITY, "low", T0 + 5 * H),
        RiskArea(FUTURE_HIGH, "high", T0 + 4 * H),
        RiskArea(LOW, "low", T0 - 30 * D),
    ]
)
RULES = load_ruleset()


@dataclass(frozen=True)
class Case:
    records: SubjectRecords
    colour: str
    reasons: tuple[str, ...]
    popup: bool
    valid_until: int
    now: int = T0
    extra: dict[str, object] = field(default_factory=dict)  # other Evaluation fields to check


def recs(
    *,
    vac: tuple[Vaccination, ...] = (),
    tests: tuple[NucleicTest, ...] = (),
    arr: tuple[Arrival, ...] = (),
    des: tuple[Designation, ...] = (),
    override: Override | None = None,
) -> SubjectRecords:
    return SubjectRecords(vac, tests, arr, des, override)


def neg(at: int) -> NucleicTest:
    return NucleicTest(at, "negative", at + 6 * H)


def pos(at: int) -> NucleicTest:
    return NucleicTest(at, "positive", at + 6 * H)


def arrival(code: str, at: int) -> Arrival:
    return Arrival(code, at, "rail")


A = T0 - 30 * H  # an arrival 30 hours before the clock, for the clearing rules
RED_ARRIVAL = ("risk_area_arrival",)

SCENARIOS = {
    # --- nothing known
    "no records": Case(recs(), "green", (), False, TTL),
    # --- designations
    "confirmed, open-ended": Case(recs(des=(Designation("confirmed", T0 - D),)), "red", ("confirmed",), False, TTL),
    "close contact ending in 5 h": Case(
        recs(des=(Designation("close_contact", T0 - 3 * D, T0 + 5 * H),)),
        "red",
        ("close_contact",),
        False,
        T0 + 5 * H,
    ),
    "close contact ending exactly now": Case(
        recs(des=(Designation("close_contact", T0 - 3 * D, T0),)), "green", (), False, TTL
    ),
    "quarantine ending in 1 s": Case(
        recs(des=(Designation("quarantine", T0 - 14 * D, T0 + 1),)), "red", ("quarantine",), False, T0 + 1
    ),
    "quarantine starting in 2 h": Case(
        recs(des=(Designation("quarantine", T0 + 2 * H, T0 + 9 * D),)), "green", (), False, T0 + 2 * H
    ),
    "quarantine starting exactly now": Case(
        recs(des=(Designation("quarantine", T0, T0 + 9 * H),)), "red", ("quarantine",), False, T0 + 9 * H
    ),
    "secondary contact": Case(
        recs(des=(Designation("secondary_contact", T0 - D, T0 + 10 * H),)),
        "yellow",
        ("secondary_contact",),
        False,
        T0 + 10 * H,
    ),
    "back-to-back quarantines merge": Case(
        recs(
            des=(
                Designation("quarantine", T0 - D, T0 + 3 * H),
                Designation("quarantine", T0 + 3 * H, T0 + 9 * H),
            )
        ),
        "red",
        ("quarantine",),
        False,
        T0 + 9 * H,
    ),
    "red ends first, yellow remains": Case(
        recs(
            des=(
                Designation("close_contact", T0 - D, T0 + 2 * H),
                Designation("secondary_contact", T0 - D, T0 + 20 * H),
            )
        ),
        "red",
        ("close_contact", "secondary_contact"),
        False,
        T0 + 2 * H,
    ),
    "cleared ends an earlier designation": Case(
        recs(des=(Designation("close_contact", T0 - 5 * D), Designation("cleared", T0 - D))),
        "green",
        (),
        False,
        TTL,
    ),
    "cleared later today ends it then": Case(
        recs(des=(Designation("close_contact", T0 - 5 * D), Designation("cleared", T0 + 6 * H))),
        "red",
        ("close_contact",),
        False,
        T0 + 6 * H,
    ),
    "cleared does not end a later designation": Case(
        recs(des=(Designation("cleared", T0 - 5 * D), Designation("quarantine", T0 - D))),
        "red",
        ("quarantine",),
        False,
        TTL,
    ),
    "cleared at the same moment does not end it": Case(
        recs(des=(Designation("confirmed", T0 - D), Designation("cleared", T0 - D))),
        "red",
        ("confirmed",),
        False,
        TTL,
    ),
    # --- positive tests
    "positive test exactly 14 days old": Case(
        recs(tests=(pos(T0 - 14 * D),)),
        "green",
        (),
        False,
        TTL,
        extra={"last_test_at": T0 - 14 * D, "last_test_result": "positive"},
    ),
    "positive test 1 s short of 14 days": Case(
        recs(tests=(pos(T0 - 14 * D + 1),)), "red", ("positive_test",), False, T0 + 1
    ),
    "positive then negative: red until the positive ages": Case(
        recs(tests=(pos(T0 - 13 * D - 5 * H), neg(T0 - D))),
        "red",
        ("positive_test",),
        False,
        T0 + 19 * H,
        extra={"last_test_at": T0 - D, "last_test_result": "negative"},
    ),
    "positive and negative sampled together: last test is the positive": Case(
        recs(tests=(neg(T0 - H), pos(T0 - H))),
        "red",
        ("positive_test",),
        False,
        TTL,
        extra={"last_test_at": T0 - H, "last_test_result": "positive"},
    ),
    "test sampled in the future is not counted yet": Case(
        recs(tests=(pos(T0 + 30),)), "green", (), False, T0 + 30, extra={"last_test_at": None}
    ),
    "every reason at once, in code order": Case(
        recs(
            tests=(pos(T0 - D),),
            arr=(arrival(HIGH, T0 - H),),
            des=(Designation("secondary_contact", T0 - D), Designation("confirmed", T0 - H)),
        ),
        "red",
        ("confirmed", "positive_test", "secondary_contact", "risk_area_arrival"),
        True,
        TTL,
    ),
    # --- arrivals and risk areas
    "arrival from a high-risk district, no tests": Case(
        recs(arr=(arrival(HIGH, T0 - 2 * H),)), "yellow", RED_ARRIVAL, True, TTL
    ),
    "arrival window closing in 3 h": Case(
        recs(arr=(arrival(HIGH, T0 - 7 * D + 3 * H),)), "yellow", RED_ARRIVAL, True, T0 + 3 * H
    ),
    "arrival exactly 7 days ago": Case(recs(arr=(arrival(HIGH, T0 - 7 * D),)), "green", (), False, TTL),
    "arrival in the future is not counted yet": Case(recs(arr=(arrival(HIGH, T0 + 60),)), "green", (), False, T0 + 60),
    "arrival from a low-risk area": Case(recs(arr=(arrival(LOW, T0 - H),)), "green", (), False, TTL),
    "arrival from an area never at risk": Case(recs(arr=(arrival(QUIET, T0 - H),)), "green", (), False, TTL),
    "city-level risk area matches its districts, until it ends": Case(
        recs(arr=(arrival(MEDIUM_CITY_DISTRICT, T0 - D),)), "yellow", RED_ARRIVAL, True, T0 + 10 * H
    ),
    "risk area ended exactly now": Case(
        recs(arr=(arrival(MEDIUM_CITY_DISTRICT, T0 - D),)),
        "green",
        (),
        False,
        T0 + 10 * H + D,
        now=T0 + 10 * H,
    ),
    "risk area lowered by a newer record": Case(
        recs(arr=(arrival(LOWERED_CITY_DISTRICT, T0 - D),)), "yellow", RED_ARRIVAL, True, T0 + 5 * H
    ),
    "risk area lowered, after": Case(
        recs(arr=(arrival(LOWERED_CITY_DISTRICT, T0 - D),)),
        "green",
        (),
        False,
        T0 + 5 * H + D,
        now=T0 + 5 * H,
    ),
    "area raised after the person left it: not yet": Case(
        recs(arr=(arrival(FUTURE_HIGH, T0 - D),)), "green", (), False, T0 + 4 * H
    ),
    "area raised after the person left it: now flagged": Case(
        recs(arr=(arrival(FUTURE_HIGH, T0 - D),)), "yellow", RED_ARRIVAL, True, T0 + 4 * H + D, now=T0 + 4 * H
    ),
    "area raised after the arrival window closes changes nothing": Case(
        recs(arr=(arrival(FUTURE_HIGH, T0 - 7 * D + H),)), "green", (), False, TTL
    ),
    "city-level arrival does not match a district risk area": Case(
        recs(arr=(arrival("420100", T0 - H),)), "green", (), False, TTL
    ),
    # --- clearing an arrival with tests (arrived at A = T0 - 30 h)
    "pre-arrival test exactly 48 h before, local test exactly 24 h after": Case(
        recs(arr=(arrival(HIGH, A),), tests=(neg(A - 48 * H), neg(A + 24 * H))), "green", (), False, TTL
    ),
    "pre-arrival test 48 h + 1 s before: not cleared": Case(
        recs(arr=(arrival(HIGH, A),), tests=(neg(A - 48 * H - 1), neg(A + 24 * H))),
        "yellow",
        RED_ARRIVAL,
        True,
        TTL,
    ),
    "local test 24 h + 1 s after arrival: not cleared": Case(
        recs(arr=(arrival(HIGH, A),), tests=(neg(A - 10 * H), neg(A + 24 * H + 1))),
        "yellow",
        RED_ARRIVAL,
        True,
        TTL,
    ),
    "landing test at the moment of arrival is local": Case(
        recs(arr=(arrival(HIGH, A),), tests=(neg(A - 10 * H), neg(A))), "green", (), False, TTL
    ),
    "pre-arrival test alone: not cleared": Case(
        recs(arr=(arrival(HIGH, A),), tests=(neg(A - 10 * H),)), "yellow", RED_ARRIVAL, True, TTL
    ),
    "two local tests exactly 24 h apart": Case(
        recs(arr=(arrival(HIGH, A),), tests=(neg(A + H), neg(A + 25 * H))), "green", (), False, TTL
    ),
    "two local tests 1 s short of 24 h apart": Case(
        recs(arr=(arrival(HIGH, A),), tests=(neg(A + H), neg(A + 25 * H - 1))),
        "yellow",
        RED_ARRIVAL,
        True,
        TTL,
    ),
    "second test exactly 3 days after arrival": Case(
        recs(arr=(arrival(HIGH, A),), tests=(neg(A + H), neg(A + 3 * D))),
        "green",
        (),
        False,
        A + 4 * D,  # the clock's own max TTL
        now=A + 3 * D,
    ),
    "second test 3 days + 1 s after arrival: not cleared": Case(
        recs(arr=(arrival(HIGH, A),), tests=(neg(A + H), neg(A + 3 * D + 1))),
        "yellow",
        RED_ARRIVAL,
        True,
        A + 4 * D + 1,
        now=A + 3 * D + 1,
    ),
    "a positive test does not clear": Case(
        recs(arr=(arrival(HIGH, A),), tests=(neg(A - 10 * H), pos(A + 2 * H))),
        "red",
        ("positive_test", "risk_area_arrival"),
        True,
        TTL,
    ),
    "overdue and never cleared: yellow until the window closes": Case(
        recs(arr=(arrival(HIGH, T0 - 7 * D + 4 * H),), tests=(neg(T0 - 3 * D), neg(T0 - 2 * D))),
        "yellow",
        RED_ARRIVAL,
        True,
        T0 + 4 * H,
    ),
    "cleared designation clears an arrival": Case(
        recs(arr=(arrival(HIGH, T0 - D),), des=(Designation("cleared", T0 - H),)), "green", (), False, TTL
    ),
    "a later arrival is not cleared by an earlier clearance": Case(
        recs(arr=(arrival(HIGH, T0 - H),), des=(Designation("cleared", T0 - D),)),
        "yellow",
        RED_ARRIVAL,
        True,
        TTL,
    ),
    "two arrivals: cleared one and an uncleared one": Case(
        recs(
            arr=(arrival(HIGH, A), arrival(MEDIUM_CITY_DISTRICT, T0 - 2 * H)),
            tests=(neg(A + H), neg(A + 25 * H)),
        ),
        "yellow",
        RED_ARRIVAL,
        True,
        T0 + 10 * H,
    ),
    # --- overrides
    "override red, active": Case(
        recs(override=Override("red", "cdc-order-17", T0 + 2 * H)), "red", ("override",), False, T0 + 2 * H
    ),
    "override green wins over confirmed and an arrival": Case(
        recs(
            des=(Designation("confirmed", T0 - D),),
            arr=(arrival(HIGH, T0 - H),),
            override=Override("green", "mistaken identity", T0 + 2 * H),
        ),
        "green",
        ("override",),
        False,
        T0 + 2 * H,
    ),
    "override expired exactly now": Case(
        recs(des=(Designation("confirmed", T0 - D),), override=Override("green", "x", T0)),
        "red",
        ("confirmed",),
        False,
        TTL,
    ),
    "override still reports vaccination and last test": Case(
        recs(
            vac=(Vaccination("sinovac-coronavac", 2, T0 - 90 * D),),
            tests=(neg(T0 - H),),
            override=Override("yellow", "x", T0 + 3 * D),
        ),
        "yellow",
        ("override",),
        False,
        TTL,
        extra={"vaccine_doses": 2, "vaccine_complete": True, "last_test_at": T0 - H},
    ),
}


VACCINATIONS = {
    "none": ((), 0, False),
    "Sinovac 1 of 2": ((Vaccination("sinovac-coronavac", 1, T0 - 60 * D),), 1, False),
    "Sinovac 2 of 2": (
        (Vaccination("sinovac-coronavac", 1, T0 - 60 * D), Vaccination("sinovac-coronavac", 2, T0 - 30 * D)),
        2,
        True,
    ),
    "Sinopharm BBIBP 2 of 2": ((Vaccination("sinopharm-bbibp", 2, T0 - 30 * D),), 2, True),
    "CanSino 1 of 1": ((Vaccination("cansino-ad5-ncov", 1, T0 - 30 * D),), 1, True),
    "Zhifei 2 of 3": ((Vaccination("zhifei-zf2001", 2, T0 - 30 * D),), 2, False),
    "Zhifei 3 of 3": ((Vaccination("zhifei-zf2001", 3, T0 - 30 * D),), 3, True),
    "Sinovac 1 and Zhifei 2: neither complete": (
        (Vaccination("sinovac-coronavac", 1, T0 - 90 * D), Vaccination("zhifei-zf2001", 2, T0 - 30 * D)),
        2,
        False,
    ),
    "unknown product counts doses, never complete": ((Vaccination("unknown-vax", 3, T0 - 30 * D),), 3, False),
}


def check(case: Case) -> Evaluation:
    result = evaluate(case.records, AREAS, RULES, case.now)
    got = (result.colour, result.reasons, result.popup, result.valid_until)
    assert got == (case.colour, case.reasons, case.popup, case.valid_until), result
    for name, value in case.extra.items():
        assert getattr(result, name) == value, (name, result)
    assert result.ruleset == "default-2022.2"
    assert result.valid_until > case.now
    return result


@pytest.mark.parametrize("case", SCENARIOS.values(), ids=SCENARIOS.keys())
def test_scenario(case: Case) -> None:
    errors = EVALUATION_ERRORS.value
    check(case)
    assert EVALUATION_ERRORS.value == errors


@pytest.mark.parametrize("case", SCENARIOS.values(), ids=SCENARIOS.keys())
def test_nothing_changes_before_valid_until(case: Case) -> None:
    """valid_until is honest: one second before it the outcome is still the same."""
    before = evaluate(case.records, AREAS, RULES, case.now)
    later = evaluate(case.records, AREAS, RULES, before.valid_until - 1)
    assert (later.colour, later.reasons, later.popup) == (before.colour, before.reasons, before.popup)


@pytest.mark.parametrize(("vaccinations", "doses", "complete"), VACCINATIONS.values(), ids=VACCINATIONS.keys())
def test_vaccination(vaccinations: tuple[Vaccination, ...], doses: int, complete: bool) -> None:
    result = evaluate(recs(vac=vaccinations), AREAS, RULES, T0)
    assert (result.vaccine_doses, result.vaccine_complete) == (doses, complete)
    assert (result.colour, result.valid_until) == ("green", TTL)


def test_vaccination_in_the_future_is_not_counted_yet() -> None:
    result = evaluate(recs(vac=(Vaccination("cansino-ad5-ncov", 1, T0 + 90),)), AREAS, RULES, T0)
    assert (result.vaccine_doses, result.vaccine_complete, result.valid_until) == (0, False, T0 + 90)


IMPOSSIBLE = {
    "dose 0": recs(vac=(Vaccination("sinovac-coronavac", 0, T0 - D),)),
    "test result not negative or positive": recs(tests=(NucleicTest(T0 - H, "inconclusive", None),)),  # type: ignore[arg-type]
    "unknown designation kind": recs(des=(Designation("suspected", T0 - H),)),  # type: ignore[arg-type]
    "designation ending before it starts": recs(des=(Designation("quarantine", T0 - H, T0 - 2 * H),)),
    "area code not 6 digits": recs(arr=(arrival("42A106", T0 - H),)),
    "override colour": recs(override=Override("blue", "x", T0 + H)),  # type: ignore[arg-type]
    "a timestamp that is not a number": recs(tests=(NucleicTest(str(T0), "negative", None),)),  # type: ignore[arg-type]
}


@pytest.mark.parametrize("records", IMPOSSIBLE.values(), ids=IMPOSSIBLE.keys())
def test_evaluation_error_is_conservative_and_counted(records: SubjectRecords) -> None:
    errors = EVALUATION_ERRORS.value
    result = evaluate(records, AREAS, RULES, T0)
    assert result == Evaluation(
        "yellow", ("evaluation_error",), False, 0, False, None, None, "default-2022.2", T0 + 300
    )
    assert EVALUATION_ERRORS.value == errors + 1
    assert EVALUATION_ERRORS.last


def test_clock_must_be_epoch_int() -> None:
    errors = EVALUATION_ERRORS.value
    result = evaluate(recs(), AREAS, RULES, float(T0))  # type: ignore[arg-type]
    assert (result.reasons, result.valid_until) == (("evaluation_error",), T0 + 300)
    assert EVALUATION_ERRORS.value == errors + 1


def test_never_raises_even_without_a_rule_set() -> None:
    errors = EVALUATION_ERRORS.value
    result = evaluate(recs(), AREAS, None, T0)  # type: ignore[arg-type]
    assert (result.colour, result.reasons, result.ruleset) == ("yellow", ("evaluation_error",), "unknown")
    assert result.valid_until > T0
    assert EVALUATION_ERRORS.value == errors + 1


def test_error_colour_comes_from_the_rule_set(tmp_path: Path) -> None:
    text = (
        (RULESETS_DIR / "default-2022.toml")
        .read_text()
        .replace('colour = "yellow"\n# Retried', 'colour = "red"\n# Retried')
    )
    path = tmp_path / "strict.toml"
    path.write_text(text)
    strict = load_ruleset(path)
    result = evaluate(IMPOSSIBLE["dose 0"], AREAS, strict, T0)
    assert (result.colour, result.reasons) == ("red", ("evaluation_error",))


def test_rules_are_data(tmp_path: Path) -> None:
    """A rule set flagging only high-risk areas, with no pop-up, changes the outcome with no code change."""
    text = (RULESETS_DIR / "default-2022.toml").read_text()
    text = text.replace('risk_levels = ["high", "medium"]', 'risk_levels = ["high"]').replace(
        "popup = true", "popup = false"
    )
    text = text.replace('version = "default-2022.2"', 'version = "high-only"')
    path = tmp_path / "high-only.toml"
    path.write_text(text)
    rules = load_ruleset(path)
    medium = recs(arr=(arrival(MEDIUM_CITY_DISTRICT, T0 - D),))
    assert evaluate(medium, AREAS, rules, T0).colour == "green"
    high = evaluate(recs(arr=(arrival(HIGH, T0 - D),)), AREAS, rules, T0)
    assert (high.colour, high.reasons, high.popup, high.ruleset) == (
        "yellow",
        RED_ARRIVAL,
        False,
        "high-only",
    )


def test_default_rule_set_thresholds() -> None:
    rules: RuleSet = RULES
    assert rules.version == "default-2022.2"
    assert (rules.positive_window, rules.arrival_window) == (14 * D, 7 * D)
    assert (rules.pre_arrival_test_window, rules.local_test_deadline) == (48 * H, 24 * H)
    assert (rules.two_tests_window, rules.two_tests_min_gap) == (3 * D, 24 * H)
    assert rules.arrival_levels == {"high", "medium"}
    assert dict(rules.designation_colours) == {
        "confirmed": "red",
        "close_contact": "red",
        "quarantine": "red",
        "secondary_contact": "yellow",
    }
    assert rules.vaccine_courses["cansino-ad5-ncov"] == 1
    assert rules.vaccine_courses["zhifei-zf2001"] == 3
    assert rules.error_colour in {"yellow", "red"}


def test_results_are_ordinary_frozen_evaluations() -> None:
    case = SCENARIOS["every reason at once, in code order"]
    result = evaluate(case.records, AREAS, RULES, case.now)
    rebuilt = Evaluation(
        result.colour,
        result.reasons,
        result.popup,
        result.vaccine_doses,
        result.vaccine_complete,
        result.last_test_at,
        result.last_test_result,
        result.ruleset,
        result.valid_until,
    )
    assert result == rebuilt
    assert type(result) is Evaluation
    with pytest.raises(FrozenInstanceError):
        result.colour = "green"  # type: ignore[misc]


@pytest.mark.parametrize("case", SCENARIOS.values(), ids=SCENARIOS.keys())
def test_something_changes_at_valid_until(case: Case) -> None:
    """valid_until is tight: unless it is the max-TTL refresh, the outcome differs at that moment."""
    before = evaluate(case.records, AREAS, RULES, case.now)
    if before.valid_until == case.now + RULES.max_ttl:
        return
    after = evaluate(case.records, AREAS, RULES, before.valid_until)
    assert replace(after, valid_until=0) != replace(before, valid_until=0)
