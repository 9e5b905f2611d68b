"""What a declaration holds once checked: plain data, no I/O. Every refusal names the field and a code."""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from hashlib import sha256
from typing import Final

from app.field_errors import FieldError
from app.identity import mask_name
from app.ingest.fields import CHINA_STANDARD_TIME, RowError, area_code

# The declaration covers the last 14 days: the arrival window of the rule set is 7, the policy asked 14.
DAYS_BACK: Final = 14
# A trip a day with a change of area on the way is already generous; the bound keeps one request small.
MAX_TRAVEL: Final = 28
MAX_NAME: Final = 50
MODES: Final = ("rail", "air", "road", "water")
PHONE_REF_BYTES: Final = 16
# Mainland mobile numbers, with an optional +86 or 86 in front; spaces and hyphens are ignored.
_MOBILE = re.compile(r"(?:\+?86)?(1[3-9]\d{9})")
_DAY = 86_400


class DeclarationInvalid(FieldError):
    """One field cannot be accepted: its name (`travel[2].arrived_on`), a stable code and what to fix."""


@dataclass(frozen=True, slots=True)
class DeclaredArrival:
    area_code: str
    arrived_on: date
    mode: str


@dataclass(frozen=True, slots=True)
class Declaration:
    masked_name: str
    phone_ref: bytes
    travel: tuple[DeclaredArrival, ...]


def phone_reference(phone: str, pepper: bytes) -> bytes:
    """A keyed hash of the normalised number, like the pseudonym but in its own domain (`phone:`), so
    the number cannot be recovered or matched without the pepper and never equals a pseudonym."""
    return hmac.new(pepper, b"phone:" + phone.encode(), sha256).digest()[:PHONE_REF_BYTES]


def parse_declaration(body: dict[str, object], pepper: bytes, today: date) -> Declaration:
    """The checked declaration of a request body; `today` is the day in China Standard Time."""
    name = _string(body.get("name"), "name", MAX_NAME)
    phone = _phone(body.get("phone"))
    return Declaration(mask_name(name), phone_reference(phone, pepper), _travel(body.get("travel"), today))


def today_in_china(now: int) -> date:
    return datetime.fromtimestamp(now, CHINA_STANDARD_TIME).date()


def arrival_moment(day: date, now: int) -> int:
    """A declared day as the last second of that day, or now for today: someone who gives only a day is
    judged as if they arrived as late as they could have, so no test taken before they arrived counts
    as a local test and the arrival's window lasts as long as it could."""
    start = int(datetime.combine(day, datetime.min.time(), CHINA_STANDARD_TIME).timestamp())
    return min(start + _DAY - 1, now)


def china_day(moment: int) -> date:
    return datetime.fromtimestamp(moment, CHINA_STANDARD_TIME).date()


def _string(value: object, field: str, max_length: int) -> str:
    if value is None:
        raise DeclarationInvalid(field, "missing", f"{field} is required")
    if not isinstance(value, str) or not value.strip():
        raise DeclarationInvalid(field, "wrong_type", f"{field} must be a non-empty string")
    if len(value) > max_length:
        raise DeclarationInvalid(field, "too_long", f"{field} must be at most {max_length} characters")
    return value


def _phone(value: object) -> str:
    raw = _string(value, "phone", 32)
    match = _MOBILE.fullmatch(re.sub(r"[\s-]", "", raw))
    if match is None:
        # The value is not echoed: it may be a real number mistyped.
        raise DeclarationInvalid(
            "phone", "bad_phone", "phone must be a mainland mobile number: 11 digits starting 13-19"
        )
    return match.group(1)


def _travel(value: object, today: date) -> tuple[DeclaredArrival, ...]:
    if value is None:
        raise DeclarationInvalid("travel", "missing", "travel is required: a list, empty if you did not travel")
    if not isinstance(value, list):
        raise DeclarationInvalid("travel", "wrong_type", "travel must be a list of {area_code, arrived_on, mode}")
    if len(value) > MAX_TRAVEL:
        raise DeclarationInvalid(
            "travel", "too_many_entries", f"travel may hold at most {MAX_TRAVEL} entries, not {len(value)}"
        )
    arrivals = [_arrival(item, f"travel[{index}]", today) for index, item in enumerate(value)]
    return tuple(dict.fromkeys(arrivals))  # the same trip given twice is one trip


def _arrival(item: object, field: str, today: date) -> DeclaredArrival:
    if not isinstance(item, dict):
        raise DeclarationInvalid(field, "wrong_type", f"{field} must be an object with area_code, arrived_on, mode")
    unknown = sorted(set(item) - {"area_code", "arrived_on", "mode"})
    if unknown:
        raise DeclarationInvalid(f"{field}.{unknown[0]}", "unknown_member", f"{field} has no member {unknown[0]!r}")
    code = item.get("area_code")
    if not isinstance(code, str):
        raise DeclarationInvalid(f"{field}.area_code", "wrong_type", f"{field}.area_code must be a six-digit string")
    try:
        code = area_code(code, f"{field}.area_code")
    except RowError as exc:
        raise DeclarationInvalid(exc.field, exc.code, exc.message) from None
    mode = item.get("mode")
    if mode not in MODES:
        raise DeclarationInvalid(f"{field}.mode", "bad_mode", f"{field}.mode must be one of {', '.join(MODES)}")
    return DeclaredArrival(code, _day(item.get("arrived_on"), f"{field}.arrived_on", today), str(mode))


def _day(value: object, field: str, today: date) -> date:
    if not isinstance(value, str):
        raise DeclarationInvalid(field, "wrong_type", f"{field} must be a date like 2022-05-01")
    try:
        day = date.fromisoformat(value)
    except ValueError:
        raise DeclarationInvalid(field, "bad_date", f"{field} must be a date like 2022-05-01, not {value!r}") from None
    earliest = today - timedelta(days=DAYS_BACK)
    if not earliest <= day <= today:
        raise DeclarationInvalid(
            field,
            "outside_window",
            f"{field} must be within the last {DAYS_BACK} days ({earliest} to {today}, China Standard Time), not {day}",
        )
    return day
