"""A computed status as it sits in Redis: a frozen record and its compact binary form.

Layout (little-endian), format version 2::

    B format | B colour | B test result | B flags | H vaccine doses
    q status version | q computed_at | q valid_until | q last_test_at
    H len(reasons) | H len(ruleset) | H len(id_type) | H len(masked_name) | H len(masked_number)
    then those five UTF-8 strings back to back; reasons are joined with U+001F (unit separator).

One fixed struct plus one concatenation, so packing and unpacking cost about a microsecond each.
The status version and computed_at sit at fixed offsets (`ORDER_OFFSET`), so the version-guarded
write in Redis (cache/status_writer.py) compares two entries without unpacking the rest.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

FORMAT_VERSION = 2
REASON_SEPARATOR = "\x1f"

_HEADER = struct.Struct("<BBBBHqqqqHHHHH")
# Byte offset of (version, computed_at): two little-endian signed 64-bit integers.
ORDER_OFFSET = 6
_COLOURS = ("green", "yellow", "red")
_COLOUR_CODE = {name: code for code, name in enumerate(_COLOURS, start=1)}
_COLOUR_BY_CODE: tuple[str | None, ...] = (None, *_COLOURS)
_RESULTS = (None, "negative", "positive")
_RESULT_CODE = {name: code for code, name in enumerate(_RESULTS)}
_POPUP = 0x01
_VACCINE_COMPLETE = 0x02
_HAS_TEST = 0x04


class EntryFormatError(ValueError):
    """Bytes that are not a status entry this code can read; the reader treats them as a miss."""


class UnknownVersionError(EntryFormatError):
    """The entry was packed by another format version (e.g. during a rolling deploy)."""

    def __init__(self, version: int) -> None:
        super().__init__(f"status entry format version {version} is not supported (this code reads {FORMAT_VERSION})")
        self.version = version


@dataclass(frozen=True, slots=True)
class StatusEntry:
    colour: str
    reasons: tuple[str, ...]
    popup: bool
    vaccine_doses: int
    vaccine_complete: bool
    last_test_at: int | None
    last_test_result: str | None
    ruleset: str
    computed_at: int
    valid_until: int
    version: int  # orders computations of one subject; see sql/004_status_versions.sql
    id_type: str
    masked_name: str
    masked_number: str


def pack(entry: StatusEntry) -> bytes:
    """Encode an entry; raises ValueError for values the format cannot carry."""
    colour = _COLOUR_CODE.get(entry.colour)
    if colour is None:
        raise ValueError(f"colour must be one of {_COLOURS}, got {entry.colour!r}")
    if entry.last_test_result not in _RESULT_CODE:
        raise ValueError(f"last_test_result must be one of {_RESULTS}, got {entry.last_test_result!r}")
    for reason in entry.reasons:
        # An empty code or one holding the separator would not survive the join.
        if not reason or REASON_SEPARATOR in reason:
            raise ValueError(f"reason code {reason!r} is empty or holds the separator")
    flags = (_POPUP if entry.popup else 0) | (_VACCINE_COMPLETE if entry.vaccine_complete else 0)
    last_test_at = 0
    if entry.last_test_at is not None:
        flags |= _HAS_TEST
        last_test_at = entry.last_test_at
    reasons = REASON_SEPARATOR.join(entry.reasons).encode()
    ruleset = entry.ruleset.encode()
    id_type = entry.id_type.encode()
    name = entry.masked_name.encode()
    number = entry.masked_number.encode()
    try:
        header = _HEADER.pack(
            FORMAT_VERSION,
            colour,
            _RESULT_CODE[entry.last_test_result],
            flags,
            entry.vaccine_doses,
            entry.version,
            entry.computed_at,
            entry.valid_until,
            last_test_at,
            len(reasons),
            len(ruleset),
            len(id_type),
            len(name),
            len(number),
        )
    except struct.error as exc:
        raise ValueError(f"status entry field out of range: {exc}") from exc
    return b"".join((header, reasons, ruleset, id_type, name, number))


def unpack(data: bytes) -> StatusEntry:
    """Decode bytes made by `pack`; raises EntryFormatError for anything else."""
    if not data:
        raise EntryFormatError("empty status entry")
    if data[0] != FORMAT_VERSION:
        raise UnknownVersionError(data[0])
    try:
        (
            _format,
            colour,
            result,
            flags,
            doses,
            version,
            computed_at,
            valid_until,
            last_test_at,
            n_reasons,
            n_ruleset,
            n_id_type,
            n_name,
            n_number,
        ) = _HEADER.unpack_from(data)
        at = _HEADER.size
        end = at + n_reasons + n_ruleset + n_id_type + n_name + n_number
        if end != len(data):
            raise EntryFormatError(f"status entry is {len(data)} bytes, header says {end}")
        colour_name = _COLOUR_BY_CODE[colour]
        if colour_name is None:
            raise EntryFormatError("status entry has no colour")
        reasons = data[at : at + n_reasons].decode()
        at += n_reasons
        ruleset = data[at : at + n_ruleset].decode()
        at += n_ruleset
        id_type = data[at : at + n_id_type].decode()
        at += n_id_type
        name = data[at : at + n_name].decode()
        number = data[at + n_name : end].decode()
        # Positional: keyword arguments cost a measurable share of the whole unpack.
        return StatusEntry(
            colour_name,
            tuple(reasons.split(REASON_SEPARATOR)) if reasons else (),
            bool(flags & _POPUP),
            doses,
            bool(flags & _VACCINE_COMPLETE),
            last_test_at if flags & _HAS_TEST else None,
            _RESULTS[result],
            ruleset,
            computed_at,
            valid_until,
            version,
            id_type,
            name,
            number,
        )
    except (struct.error, UnicodeDecodeError, IndexError) as exc:
        raise EntryFormatError(f"corrupt status entry: {exc}") from exc
