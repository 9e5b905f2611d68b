"""Rule set loading: the default loads, and every kind of mistake is an error naming the field."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any

import pytest

from app.rules import RuleSetError, load_ruleset, parse_ruleset
from app.rules.ruleset import RULESETS_DIR

DEFAULT: dict[str, Any] = tomllib.loads((RULESETS_DIR / "default-2022.toml").read_text())


def test_default_loads_by_name_and_by_path() -> None:
    by_name = load_ruleset("default-2022")
    by_path = load_ruleset(RULESETS_DIR / "default-2022.toml")
    assert by_name.version == by_path.version == "default-2022.2"
    assert by_name.vaccine_names["sinovac-coronavac"].startswith("Sinovac CoronaVac")
    assert parse_ruleset(DEFAULT).max_ttl == 24 * 3600


def edited(path: str, value: Any) -> dict[str, Any]:
    """The default rule set with one dotted field set to ``value`` (or removed when value is ...)."""
    data = copy.deepcopy(DEFAULT)
    *parents, last = path.split(".")
    table = data
    for key in parents:
        table = table[key]
    if value is ...:
        del table[last]
    else:
        table[last] = value
    return data


BAD = {
    "missing version": ("version", ..., "version: missing"),
    "empty version": ("version", "", "version: expected a non-empty string"),
    "missing arrival window": ("arrival.window_days", ..., "arrival.window_days: missing"),
    "window as a string": (
        "positive_test.window_days",
        "14",
        "positive_test.window_days: expected an integer",
    ),
    "window as a bool": ("positive_test.window_days", True, "positive_test.window_days: expected an integer"),
    "negative window": ("arrival.window_days", -1, "arrival.window_days: expected an integer from 1 to 60"),
    "misspelt key": ("arrival.windw_days", 7, "arrival.windw_days: unknown field"),
    "unknown top-level table": ("extras", {}, "extras: unknown field"),
    "table given as a value": ("arrival", 7, "arrival: expected a table"),
    "bad colour": (
        "designations.confirmed",
        "purple",
        "designations.confirmed: expected one of green, yellow, red",
    ),
    "unknown designation kind": (
        "designations.suspected",
        "red",
        "designations.suspected: unknown designation kind",
    ),
    "cleared given a colour": (
        "designations.cleared",
        "green",
        "designations.cleared: unknown designation kind",
    ),
    "bad risk level": ("arrival.risk_levels", ["high", "severe"], "arrival.risk_levels: expected a list of"),
    "popup not a bool": ("arrival.popup", "yes", "arrival.popup: expected true or false"),
    "gap not shorter than window": (
        "arrival.two_tests_min_gap_hours",
        72,
        "arrival.two_tests_min_gap_hours: must be shorter than two_tests_days",
    ),
    "zero doses": (
        "vaccines.zhifei-zf2001.doses",
        0,
        "vaccines.zhifei-zf2001.doses: expected an integer from 1",
    ),
    "vaccine without a name": (
        "vaccines.cansino-ad5-ncov.name",
        ...,
        "vaccines.cansino-ad5-ncov.name: missing",
    ),
    "green on error": (
        "evaluation_error.colour",
        "green",
        "evaluation_error.colour: an evaluation error must never",
    ),
    "error ttl zero": (
        "evaluation_error.ttl_seconds",
        0,
        "evaluation_error.ttl_seconds: expected an integer from 1",
    ),
    "max ttl too long": (
        "cache.max_ttl_hours",
        1000,
        "cache.max_ttl_hours: expected an integer from 1 to 168",
    ),
}


@pytest.mark.parametrize(("field", "value", "message"), BAD.values(), ids=BAD.keys())
def test_errors_name_the_field(field: str, value: Any, message: str) -> None:
    with pytest.raises(RuleSetError) as info:
        parse_ruleset(edited(field, value), "test.toml")
    assert str(info.value).startswith(f"test.toml: {message}"), str(info.value)
    assert info.value.field == message.split(":", maxsplit=1)[0]


def test_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("version = \n")
    with pytest.raises(RuleSetError, match=r"^bad\.toml: not valid TOML"):
        load_ruleset(bad)
    with pytest.raises(RuleSetError, match=r"no such rule set file"):
        load_ruleset("no-such-rules")
    with pytest.raises(RuleSetError, match=r"not a rule set name"):
        load_ruleset("..")
    typo = tmp_path / "typo.toml"
    typo.write_text((RULESETS_DIR / "default-2022.toml").read_text().replace("window_days = 7", "window_day = 7"))
    with pytest.raises(RuleSetError, match=r"^typo\.toml: arrival\.window_days: missing$"):
        load_ruleset(typo)
