"""Parsing one field of an uploaded row; a bad value raises RowError with a precise code.

Moments are ISO 8601 (``2022-05-01T08:30:00+08:00``); one without an offset is China Standard Time,
the time every agency in the province keeps. Dates are ``YYYY-MM-DD``.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Final

from app.field_errors import FieldError
from app.identity import InvalidIdentity, mask_number, parse_identity
from cache.keys import PSEUDONYM_BYTES

CHINA_STANDARD_TIME: Final = timezone(timedelta(hours=8), "CST")
# A record dated a little after our clock is an agency clock running ahead, not a record of the future.
CLOCK_SKEW: Final = timedelta(minutes=5)
# The latest moment a record may name. Far past any real end of a designation or risk area, and well
# inside what Postgres, Python's datetime (year 9999, in any offset) and the rules' arithmetic can hold.
LATEST_MOMENT: Final = datetime(2100, 1, 1, tzinfo=UTC)
MAX_TEXT: Final = 200
# What a Postgres text column refuses: NUL, and (in a UTF-8 database) unpaired surrogates, which
# strict UTF-8 decoding never yields but a JSON escape could.
_UNSTORABLE: Final = re.compile("[\x00\ud800-\udfff]")
# Province-level prefixes of GB/T 2260 (as in app.identity), for area codes.
_PROVINCES: Final = frozenset(
    {"11", "12", "13", "14", "15", "21", "22", "23", "31", "32", "33", "34", "35", "36", "37", "41"}
    | {"42", "43", "44", "45", "46", "50", "51", "52", "53", "54", "61", "62", "63", "64", "65", "71"}
    | {"81", "82"}
)


class RowError(FieldError):
    """One row cannot be accepted: which field, a stable code, and a message that says how to fix it."""


def unstorable(values: Iterable[tuple[str, str | None]]) -> RowError | None:
    """The rejection for the first value holding a character Postgres cannot store, if any."""
    for field, value in values:
        if value is not None and (found := _UNSTORABLE.search(value)) is not None:
            return RowError(
                field,
                "nul_character",
                f"{field} holds {found.group()!a} at position {found.start()}, which cannot be stored; remove it",
            )
    return None


def storable(value: str) -> str:
    """``value`` with what Postgres cannot store escaped: for the text of a rejection that quotes a row."""
    return _UNSTORABLE.sub(lambda m: ascii(m.group())[1:-1], value)


def text(value: str | None, field: str, *, required: bool = True, max_length: int = MAX_TEXT) -> str:
    value = (value or "").strip()
    if not value and required:
        raise RowError(field, "missing_field", f"{field} is required")
    if len(value) > max_length:
        raise RowError(field, "too_long", f"{field} must be at most {max_length} characters")
    return value


def choice(value: str | None, field: str, allowed: frozenset[str], code: str) -> str:
    value = text(value, field)
    if value not in allowed:
        raise RowError(field, code, f"{field} must be one of {', '.join(sorted(allowed))}, not {value!r}")
    return value


def moment(value: str | None, field: str, *, now: datetime | None = None, required: bool = True) -> datetime | None:
    """A timestamp; with ``now``, one later than now (beyond clock skew) is ``date_in_future``."""
    raw = (value or "").strip()
    if not raw:
        if required:
            raise RowError(field, "missing_field", f"{field} is required")
        return None
    try:
        parsed = datetime.fromisoformat(raw)
    except ValueError:
        raise RowError(field, "bad_time", f"{field} must be an ISO 8601 time like 2022-05-01T08:30:00+08:00") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=CHINA_STANDARD_TIME)
    try:
        in_range = parsed < LATEST_MOMENT  # compared in UTC, which year 9999 in a western offset overflows
    except OverflowError:
        in_range = False
    if not in_range:
        raise RowError(field, "time_out_of_range", f"{field} {raw} is not before {LATEST_MOMENT.year}")
    if now is not None and parsed > now + CLOCK_SKEW:
        raise RowError(field, "date_in_future", f"{field} {raw} is later than now")
    if parsed.year < 2019:
        raise RowError(field, "bad_time", f"{field} {raw} is before 2019")
    return parsed


def day(value: str | None, field: str, *, today: date) -> date:
    raw = text(value, field)
    try:
        parsed = date.fromisoformat(raw)
    except ValueError:
        raise RowError(field, "bad_date", f"{field} must be a date like 2022-05-01") from None
    if parsed > today:
        raise RowError(field, "date_in_future", f"{field} {raw} is later than today")
    if parsed.year < 2019:
        raise RowError(field, "bad_date", f"{field} {raw} is before 2019")
    return parsed


def integer(value: str | None, field: str, low: int, high: int, code: str) -> int:
    raw = text(value, field)
    try:
        parsed = int(raw)
    except ValueError:
        raise RowError(field, code, f"{field} must be a whole number, not {raw!r}") from None
    if not low <= parsed <= high:
        raise RowError(field, code, f"{field} must be from {low} to {high}, not {parsed}")
    return parsed


def area_code(value: str | None, field: str = "area_code") -> str:
    """A GB/T 2260 six-digit code with a known province prefix."""
    raw = text(value, field)
    if len(raw) != 6 or not raw.isdigit() or not raw.isascii() or raw[:2] not in _PROVINCES:
        raise RowError(field, "unknown_area_code", f"{raw!r} is not a GB/T 2260 area code (six digits, known province)")
    return raw


class Pseudonymiser:
    """Identity number to (pseudonym, id_type, masked number); the number itself goes no further."""

    __slots__ = ("_federation_key", "_pepper", "_today")

    def __init__(self, pepper: bytes, today: date, federation_key: bytes | None = None) -> None:
        self._pepper = pepper
        self._today = today
        self._federation_key = federation_key

    def __call__(self, id_type: str | None, number: str | None) -> tuple[bytes, str, str]:
        p, kind, masked, _ = self.federated(id_type, number)
        return p, kind, masked

    def federated(self, id_type: str | None, number: str | None) -> tuple[bytes, str, str, bytes | None]:
        """Also the federation pseudonym (app.federation.identity), None without a federation key."""
        kind = (id_type or "").strip() or "resident"
        if not (number or "").strip():
            raise RowError("id_number", "missing_field", "id_number is required")
        try:
            identity = parse_identity(kind, number, today=self._today)
        except InvalidIdentity as exc:
            raise RowError(exc.field, exc.code, exc.message) from None
        # Same value as app.identity.pseudonym; the one-shot digest skips building an HMAC object.
        digest = hmac.digest(self._pepper, identity.canonical, "sha256")[:PSEUDONYM_BYTES]
        key = self._federation_key
        federated = None if key is None else hmac.digest(key, identity.canonical, "sha256")[:PSEUDONYM_BYTES]
        return digest, identity.id_type, mask_number(identity.number), federated


def utc_now() -> datetime:
    return datetime.now(UTC)
