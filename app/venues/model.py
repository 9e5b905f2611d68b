"""What a venue registration and an exposure query may hold, checked before anything is stored."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

from app.appeals.free_text import identity_number_in
from app.field_errors import FieldError
from app.ingest.fields import RowError, area_code
from app.rules.records import DESIGNATION_KINDS

# A venue's public id (store.new_venue_id makes them; sql/015 checks them): anything else names no venue.
VENUE_ID: Final = re.compile(r"v[A-Za-z0-9_-]{8,32}")
MAX_NAME: Final = 200
MAX_ADDRESS: Final = 500
MAX_REASON: Final = 500
# An exposure query names the hours around a case's visit, not a venue's history: a wider window is
# refused rather than turned into thousands of designations by a slip of the date.
MAX_WINDOW_SECONDS: Final = 7 * 86400
# `to` may lie this far ahead of the service's clock (a caller's clock slightly ahead).
CLOCK_SKEW_SECONDS: Final = 300
# What an exposure may designate: contacts, never a diagnosis or a clearance.
EXPOSURE_KINDS: Final = ("secondary_contact", "close_contact")
DEFAULT_EXPOSURE_KIND: Final = "secondary_contact"
DEFAULT_DESIGNATION_DAYS: Final = 14
MAX_DESIGNATION_DAYS: Final = 28
assert set(EXPOSURE_KINDS) <= set(DESIGNATION_KINDS)


class VenueFieldError(FieldError):
    """A field of a venue request is wrong: `field` and `code` as in every invalid-field problem."""


@dataclass(frozen=True, slots=True)
class VenueRequest:
    name: str
    address: str
    area_code: str


@dataclass(frozen=True, slots=True)
class Designate:
    kind: str
    days: int
    reason: str


@dataclass(frozen=True, slots=True)
class ExposureQuery:
    venue_id: str
    start: int  # Unix seconds, inclusive
    end: int  # Unix seconds, exclusive
    designate: Designate | None


def _text(body: dict[str, Any], field: str, max_length: int, *, required: bool = True) -> str:
    value = body.get(field)
    if value is None and not required:
        return ""
    if value is None:
        raise VenueFieldError(field, "missing", f"{field} is required")
    if not isinstance(value, str) or (required and not value.strip()):
        raise VenueFieldError(field, "wrong_type", f"{field} must be a non-empty string")
    value = value.strip()
    if len(value) > max_length:
        raise VenueFieldError(field, "too_long", f"{field} must be at most {max_length} characters")
    # Printed on a poster and stored as given: an identity number has no business in it.
    if identity_number_in(value) is not None:
        raise VenueFieldError(field, "identity_number", f"{field} must not hold an identity number")
    return value


def _unknown(body: dict[str, Any], allowed: set[str], prefix: str = "") -> None:
    extra = sorted(set(body) - allowed)
    if extra:
        raise VenueFieldError(
            prefix + extra[0], "unknown_member", f"{prefix}{extra[0]} is not a member of this request"
        )


def venue_request(body: dict[str, Any]) -> VenueRequest:
    _unknown(body, {"name", "address", "area_code"})
    name = _text(body, "name", MAX_NAME)
    address = _text(body, "address", MAX_ADDRESS)
    raw = body.get("area_code")
    if raw is None:
        raise VenueFieldError("area_code", "missing", "area_code is required")
    if not isinstance(raw, str):
        raise VenueFieldError("area_code", "wrong_type", "area_code must be a six-digit string")
    try:
        code = area_code(raw)
    except RowError as exc:
        raise VenueFieldError("area_code", exc.code, exc.message) from None
    return VenueRequest(name, address, code)


def _time(body: dict[str, Any], field: str) -> int:
    value = body.get(field)
    if value is None:
        raise VenueFieldError(field, "missing", f"{field} is required (Unix seconds)")
    if type(value) is not int or value < 0:
        raise VenueFieldError(field, "wrong_type", f"{field} must be Unix seconds (a non-negative integer)")
    return value


def exposure_query(body: dict[str, Any], now: int, retention_seconds: int) -> ExposureQuery:
    _unknown(body, {"venue_id", "from", "to", "designate"})
    venue_id = body.get("venue_id")
    if venue_id is None:
        raise VenueFieldError("venue_id", "missing", "venue_id is required")
    if not isinstance(venue_id, str) or not venue_id:
        raise VenueFieldError("venue_id", "wrong_type", "venue_id must be a string")
    start, end = _time(body, "from"), _time(body, "to")
    if end <= start:
        raise VenueFieldError("to", "bad_interval", "to must be after from")
    if end - start > MAX_WINDOW_SECONDS:
        raise VenueFieldError(
            "to",
            "window_too_wide",
            f"the window may be at most {MAX_WINDOW_SECONDS // 3600} hours, not {(end - start) / 3600:g}",
        )
    if end > now + CLOCK_SKEW_SECONDS:
        raise VenueFieldError("to", "in_future", "to must not lie in the future")
    if start < now - retention_seconds:
        raise VenueFieldError(
            "from", "before_retention", f"visits are kept {retention_seconds // 86400} days; from lies before that"
        )
    return ExposureQuery(venue_id, start, end, _designate(body.get("designate")))


def _designate(value: object) -> Designate | None:
    if value is None or value is False:
        return None
    if value is True:
        value = {}
    if not isinstance(value, dict):
        raise VenueFieldError("designate", "wrong_type", "designate must be true or an object {kind, days, reason}")
    _unknown(value, {"kind", "days", "reason"}, "designate.")
    kind = value.get("kind", DEFAULT_EXPOSURE_KIND)
    if kind not in EXPOSURE_KINDS:
        raise VenueFieldError(
            "designate.kind", "bad_kind", f"designate.kind must be one of {', '.join(EXPOSURE_KINDS)}"
        )
    days = value.get("days", DEFAULT_DESIGNATION_DAYS)
    if type(days) is not int or not 1 <= days <= MAX_DESIGNATION_DAYS:
        raise VenueFieldError("designate.days", "out_of_range", f"designate.days must be 1 to {MAX_DESIGNATION_DAYS}")
    reason = _text(value, "reason", MAX_REASON, required=False)
    return Designate(kind, days, reason)
