"""Rule sets: versioned TOML data that names every threshold and outcome the engine applies.

Code evaluates, data decides. A rule set is loaded once at start-up and validated strictly: an unknown
key, a wrong type or an impossible value is a :class:`RuleSetError` naming the field, so a typo in a
threshold stops the service at start-up instead of silently changing people's colours.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from signing.colours import COLOURS

from .records import DESIGNATION_KINDS, RISK_LEVELS

RULESETS_DIR: Final = Path(__file__).resolve().parent.parent / "rulesets"
DEFAULT_RULESET: Final = "default-2022"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

HOUR: Final = 3600
DAY: Final = 86400


class RuleSetError(ValueError):
    """A rule set that cannot be used; ``field`` is the dotted path of the bad entry."""

    def __init__(self, source: str, field: str, message: str) -> None:
        super().__init__(f"{source}: {field}: {message}" if field else f"{source}: {message}")
        self.source = source
        self.field = field


@dataclass(frozen=True, slots=True, eq=False)
class RuleSet:
    """A validated rule set; every duration is in seconds."""

    version: str
    description: str
    max_ttl: int  # valid_until is at most now + max_ttl, so every status is refreshed at least this often
    error_colour: str
    error_ttl: int
    designation_colours: Mapping[str, str]  # designation kind -> colour; kinds not listed have no effect
    positive_colour: str
    positive_window: int
    arrival_levels: frozenset[str]
    arrival_colour: str
    arrival_popup: bool
    arrival_window: int
    pre_arrival_test_window: int
    local_test_deadline: int
    two_tests_window: int
    two_tests_min_gap: int
    vaccine_courses: Mapping[str, int]  # product code -> doses for a full course
    vaccine_names: Mapping[str, str]  # product code -> display name
    # product code -> CVX code (what a SMART Health Card names it by); products without one are
    # exported as 500, "COVID-19 non-US vaccine, product unknown"
    vaccine_cvx: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    # product code -> EU DCC medicinal product code (`mp` of an HCERT), where the EU register has one
    vaccine_eu_product: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    who_eul: frozenset[str] = frozenset()  # products on the WHO Emergency Use Listing


class _Table:
    """Reads one TOML table, remembering which keys were used so leftovers can be reported."""

    def __init__(self, source: str, prefix: str, data: object) -> None:
        self.source = source
        self.prefix = prefix
        if not isinstance(data, dict):
            raise RuleSetError(source, prefix, "expected a table")
        self.data: dict[str, Any] = data
        self.used: set[str] = set()

    def field(self, key: str) -> str:
        return f"{self.prefix}.{key}" if self.prefix else key

    def error(self, key: str, message: str) -> RuleSetError:
        return RuleSetError(self.source, self.field(key), message)

    def get(self, key: str) -> Any:
        self.used.add(key)
        if key not in self.data:
            raise self.error(key, "missing")
        return self.data[key]

    def table(self, key: str) -> _Table:
        return _Table(self.source, self.field(key), self.get(key))

    def string(self, key: str) -> str:
        value = self.get(key)
        if not isinstance(value, str) or not value.strip():
            raise self.error(key, f"expected a non-empty string, got {value!r}")
        return value

    def integer(self, key: str, minimum: int = 1, maximum: int = 10**6) -> int:
        value = self.get(key)
        # bool is an int subclass in Python; `true` is never a valid count.
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"expected an integer, got {value!r}")
        if not minimum <= value <= maximum:
            raise self.error(key, f"expected an integer from {minimum} to {maximum}, got {value}")
        return value

    def boolean(self, key: str) -> bool:
        value = self.get(key)
        if not isinstance(value, bool):
            raise self.error(key, f"expected true or false, got {value!r}")
        return value

    def colour(self, key: str) -> str:
        value = self.get(key)
        if value not in COLOURS:
            raise self.error(key, f"expected one of {', '.join(COLOURS)}, got {value!r}")
        return str(value)

    def finish(self) -> None:
        for key in self.data:
            if key not in self.used:
                raise self.error(key, "unknown field")


def parse_ruleset(data: Mapping[str, Any], source: str = "<rule set>") -> RuleSet:
    """Validate parsed TOML (or equivalent JSON) and build a :class:`RuleSet`."""
    top = _Table(source, "", dict(data))
    version = top.string("version")
    description = top.string("description") if "description" in top.data else ""

    cache = top.table("cache")
    max_ttl = cache.integer("max_ttl_hours", 1, 24 * 7) * HOUR
    cache.finish()

    error = top.table("evaluation_error")
    error_colour = error.colour("colour")
    if error_colour == "green":
        raise error.error("colour", "an evaluation error must never give green")
    error_ttl = error.integer("ttl_seconds", 1, DAY)
    error.finish()

    desig = top.table("designations")
    designation_colours: dict[str, str] = {}
    for kind in list(desig.data):
        if kind not in DESIGNATION_KINDS or kind == "cleared":
            allowed = ", ".join(k for k in DESIGNATION_KINDS if k != "cleared")
            raise desig.error(kind, f"unknown designation kind (expected one of {allowed})")
        designation_colours[kind] = desig.colour(kind)
    desig.finish()

    positive = top.table("positive_test")
    positive_colour = positive.colour("colour")
    positive_window = positive.integer("window_days", 1, 365) * DAY
    positive.finish()

    arrival = top.table("arrival")
    levels = arrival.get("risk_levels")
    if not isinstance(levels, list) or any(level not in RISK_LEVELS for level in levels):
        raise arrival.error("risk_levels", f"expected a list of {', '.join(RISK_LEVELS)}, got {levels!r}")
    arrival_colour = arrival.colour("colour")
    arrival_popup = arrival.boolean("popup")
    arrival_window = arrival.integer("window_days", 1, 60) * DAY
    pre_arrival = arrival.integer("pre_arrival_test_hours", 1, 24 * 14) * HOUR
    local_deadline = arrival.integer("local_test_hours", 1, 24 * 14) * HOUR
    two_window = arrival.integer("two_tests_days", 1, 60) * DAY
    two_gap = arrival.integer("two_tests_min_gap_hours", 0, 24 * 14) * HOUR
    if two_gap >= two_window:
        raise arrival.error("two_tests_min_gap_hours", "must be shorter than two_tests_days")
    arrival.finish()

    courses, names, cvx, eu_product, eul = _vaccines(top.table("vaccines"))
    top.finish()

    return RuleSet(
        version=version,
        description=description,
        max_ttl=max_ttl,
        error_colour=error_colour,
        error_ttl=error_ttl,
        designation_colours=MappingProxyType(designation_colours),
        positive_colour=positive_colour,
        positive_window=positive_window,
        arrival_levels=frozenset(levels),
        arrival_colour=arrival_colour,
        arrival_popup=arrival_popup,
        arrival_window=arrival_window,
        pre_arrival_test_window=pre_arrival,
        local_test_deadline=local_deadline,
        two_tests_window=two_window,
        two_tests_min_gap=two_gap,
        vaccine_courses=MappingProxyType(courses),
        vaccine_names=MappingProxyType(names),
        vaccine_cvx=MappingProxyType(cvx),
        vaccine_eu_product=MappingProxyType(eu_product),
        who_eul=frozenset(eul),
    )


def _vaccines(
    vaccines: _Table,
) -> tuple[dict[str, int], dict[str, str], dict[str, str], dict[str, str], set[str]]:
    """The [vaccines] table: course lengths, names, and the codes other systems know each product by."""
    courses: dict[str, int] = {}
    names: dict[str, str] = {}
    cvx: dict[str, str] = {}
    eu_product: dict[str, str] = {}
    eul: set[str] = set()
    for product in list(vaccines.data):
        entry = vaccines.table(product)
        names[product] = entry.string("name")
        courses[product] = entry.integer("doses", 1, 10)
        if "cvx" in entry.data:
            cvx[product] = entry.string("cvx")
            if not cvx[product].isdigit():
                raise entry.error("cvx", f"expected a CVX code of digits, got {cvx[product]!r}")
        if "eu_product" in entry.data:
            eu_product[product] = entry.string("eu_product")
        if "who_eul" in entry.data and entry.boolean("who_eul"):
            eul.add(product)
        entry.finish()
    vaccines.finish()
    return courses, names, cvx, eu_product, eul


def load_ruleset(path_or_name: str | Path = DEFAULT_RULESET) -> RuleSet:
    """Load a rule set from a file path, or by name from ``app/rulesets/<name>.toml``."""
    if isinstance(path_or_name, Path) or "/" in path_or_name or path_or_name.endswith(".toml"):
        path = Path(path_or_name)
    elif _NAME.fullmatch(path_or_name):
        path = RULESETS_DIR / f"{path_or_name}.toml"
    else:
        raise RuleSetError(str(path_or_name), "", "not a rule set name or a path to a .toml file")
    source = path.name
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise RuleSetError(source, "", f"no such rule set file: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise RuleSetError(source, "", f"not valid TOML: {exc}") from None
    return parse_ruleset(data, source)
