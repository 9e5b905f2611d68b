"""Record kinds: the columns an upload of each kind has, and how one row becomes a staging row.

A row function takes the row as a mapping of column to text and returns the staging tuple (after
``batch_id, row_no``), or raises RowError. Identity numbers become pseudonyms here, so nothing later in
the pipeline ever sees one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Final

from app.identity import mask_name
from app.ingest.fields import (
    Pseudonymiser,
    RowError,
    area_code,
    choice,
    day,
    integer,
    moment,
    text,
)
from app.rules.records import DESIGNATION_KINDS, RISK_LEVELS, TEST_RESULTS

Row = Mapping[str, str | None]

RESULTS: Final = frozenset(TEST_RESULTS)
MODES: Final = frozenset({"rail", "air", "road", "water", "telecom"})
DESIGNATIONS: Final = frozenset(DESIGNATION_KINDS)
LEVELS: Final = frozenset(RISK_LEVELS)
MAX_SAMPLE_ID: Final = 64
# What a row of a record kind does to the record its natural key names: store (or correct) it, or withdraw it.
ACTIONS: Final = frozenset({"upsert", "retract"})


@dataclass(frozen=True, slots=True)
class Context:
    """What validating a row needs besides the row: the clock, the pepper, the rule set's products."""

    pseudonymise: Pseudonymiser
    now: datetime
    today: date
    products: frozenset[str]


RowFunction = Callable[[Row, Context], tuple[Any, ...]]


@dataclass(frozen=True, slots=True)
class Kind:
    name: str
    required: frozenset[str]  # columns a header must have (a choice of alternatives is checked separately)
    optional: frozenset[str]
    staging_table: str
    staging_columns: tuple[str, ...]  # after batch_id, row_no
    parse: RowFunction
    one_of: frozenset[str] = frozenset()  # at least one of these columns must be present

    @property
    def columns(self) -> frozenset[str]:
        return self.required | self.optional | self.one_of


def _population(row: Row, ctx: Context) -> tuple[Any, ...]:
    p, id_type, masked, federated = ctx.pseudonymise.federated(row.get("id_type"), row.get("id_number"))
    return p, id_type, mask_name(text(row.get("name"), "name", max_length=100)), masked, federated


def _vaccination(row: Row, ctx: Context) -> tuple[Any, ...]:
    """A vaccination row, ``action`` and then the federation pseudonym last (see KINDS)."""
    p, id_type, masked, federated = ctx.pseudonymise.federated(row.get("id_type"), row.get("id_number"))
    product = text(row.get("product"), "product")
    if product not in ctx.products:
        raise RowError("product", "unknown_product", f"product {product!r} is not in the rule set's vaccine list")
    dose = integer(row.get("dose"), "dose", 1, 10, "bad_dose")
    on = day(row.get("vaccinated_on"), "vaccinated_on", today=ctx.today)
    site = text(row.get("site"), "site", required=False)
    return p, id_type, masked, product, dose, on, site, _action(row), federated


def _test(row: Row, ctx: Context) -> tuple[Any, ...]:
    sample = text(row.get("sample_id"), "sample_id", required=False, max_length=MAX_SAMPLE_ID) or None
    identity: tuple[bytes | None, str | None, str | None] = (None, None, None)
    if (row.get("id_number") or "").strip():
        identity = ctx.pseudonymise(row.get("id_type"), row.get("id_number"))
    elif sample is None:
        raise RowError("id_number", "missing_field", "a test needs id_number or sample_id")
    sampled = moment(row.get("sampled_at"), "sampled_at", now=ctx.now)
    result = row.get("result")
    if result not in RESULTS:
        result = choice(result, "result", RESULTS, "bad_result")
    lab = text(row.get("lab"), "lab")
    reported = moment(row.get("reported_at"), "reported_at", now=ctx.now, required=False)
    if reported is not None and sampled is not None and reported < sampled:
        raise RowError("reported_at", "bad_interval", "reported_at is before sampled_at")
    return *identity, sample, sampled, result, lab, reported


def _travel(row: Row, ctx: Context) -> tuple[Any, ...]:
    p, id_type, masked = ctx.pseudonymise(row.get("id_type"), row.get("id_number"))
    code = area_code(row.get("area_code"))
    arrived = moment(row.get("arrived_at"), "arrived_at", now=ctx.now)
    return p, id_type, masked, code, arrived, choice(row.get("mode"), "mode", MODES, "bad_mode")


def _designation(row: Row, ctx: Context) -> tuple[Any, ...]:
    p, id_type, masked = ctx.pseudonymise(row.get("id_type"), row.get("id_number"))
    kind = choice(row.get("kind"), "kind", DESIGNATIONS, "bad_kind")
    since = moment(row.get("valid_from"), "valid_from")
    until = moment(row.get("valid_until"), "valid_until", required=False)
    if until is not None and since is not None and until <= since:
        raise RowError("valid_until", "bad_interval", "valid_until must be after valid_from")
    authority = text(row.get("authority"), "authority")
    return p, id_type, masked, kind, since, until, authority, text(row.get("reason"), "reason", required=False)


def _risk_area(row: Row, ctx: Context) -> tuple[Any, ...]:
    code = area_code(row.get("area_code"))
    level = choice(row.get("level"), "level", LEVELS, "bad_level")
    since = moment(row.get("valid_from"), "valid_from")
    until = moment(row.get("valid_until"), "valid_until", required=False)
    if until is not None and since is not None and until <= since:
        raise RowError("valid_until", "bad_interval", "valid_until must be after valid_from")
    return code, level, since, until


def _acting(parse: RowFunction) -> RowFunction:
    """A record kind's row function that also reads ``action`` (``upsert`` when absent)."""

    def parse_with_action(row: Row, ctx: Context) -> tuple[Any, ...]:
        return *parse(row, ctx), _action(row)

    return parse_with_action


def _action(row: Row) -> str:
    return choice((row.get("action") or "").strip() or "upsert", "action", ACTIONS, "bad_action")


_IDENTITY: Final = ("pseudonym", "id_type", "masked_number")

KINDS: Final[dict[str, Kind]] = {
    k.name: k
    for k in (
        Kind(
            "population",
            frozenset({"id_number", "name"}),
            frozenset({"id_type"}),
            "staging_population",
            ("pseudonym", "id_type", "masked_name", "masked_number", "federation_pseudonym"),
            _population,
        ),
        Kind(
            "vaccination",
            frozenset({"id_number", "product", "dose", "vaccinated_on"}),
            frozenset({"id_type", "site", "action"}),
            "staging_vaccination",
            (*_IDENTITY, "product", "dose", "vaccinated_on", "site", "action", "federation_pseudonym"),
            _vaccination,
        ),
        Kind(
            "test",
            frozenset({"sampled_at", "result", "lab"}),
            frozenset({"id_type", "reported_at", "action"}),
            "staging_test",
            (*_IDENTITY, "sample_id", "sampled_at", "result", "lab", "reported_at", "action"),
            _acting(_test),
            one_of=frozenset({"id_number", "sample_id"}),
        ),
        Kind(
            "travel",
            frozenset({"id_number", "area_code", "arrived_at", "mode"}),
            frozenset({"id_type", "action"}),
            "staging_travel",
            (*_IDENTITY, "area_code", "arrived_at", "mode", "action"),
            _acting(_travel),
        ),
        Kind(
            "designation",
            frozenset({"id_number", "kind", "valid_from", "authority"}),
            frozenset({"id_type", "valid_until", "reason", "action"}),
            "staging_designation",
            (*_IDENTITY, "kind", "valid_from", "valid_until", "authority", "reason", "action"),
            _acting(_designation),
        ),
        Kind(
            "risk_area",
            frozenset({"area_code", "level", "valid_from"}),
            frozenset({"valid_until"}),
            "staging_risk_area",
            ("area_code", "level", "valid_from", "valid_until"),
            _risk_area,
        ),
    )
}


def header_problems(kind: Kind, columns: list[str]) -> tuple[list[str], list[str]]:
    """(missing, unknown) columns of a CSV header for this kind."""
    present = set(columns)
    missing = sorted(kind.required - present)
    if kind.one_of and not kind.one_of & present:
        missing.append(" or ".join(sorted(kind.one_of)))
    unknown = [c for c in columns if c not in kind.columns]
    return missing, unknown
