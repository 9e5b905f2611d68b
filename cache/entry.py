"""A computed status as it sits in Redis: a frozen record and its compact binary form.

Layout (little-endian), format version 3, 30 to 40 bytes for a typical person::

    B format | B colour (bits 0-1), test result (bits 2-3), flags | B vaccine doses
    I status version | I computed_at | I valid_until | I last_test_at     (unsigned 32-bit)
    word ruleset | word id_type | B number of reasons, word per reason
    masked name | masked number

A word is one byte, its place in `WORDS` plus one, or 0 followed by B length and the UTF-8 text for a
word not in the table. A masked text is B length + UTF-8 head, B count of the asterisks that follow,
B length + UTF-8 tail: `50**************1X` costs 7 bytes instead of 18. Times are Unix seconds,
which fit 32 bits until 2106; the status version is a per-subject revision count.

Format 2 (cache/entry_v2.py, 84 bytes for the same person) spent 48 bytes on a fixed header of 64-bit
fields and 16-bit lengths and spelt every string out. In Redis an entry sits in a hash bucket beside
60-odd others (cache/keys.py), where the value's bytes are most of what a subject costs.

The status version and computed_at sit at a fixed offset (`ORDER_OFFSET`), so the version-guarded write
in Redis (cache/status_writer.py) compares two entries without unpacking the rest. `unpack` reads
format 2 as well, so entries written by the previous release are read during a rolling upgrade.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

FORMAT_VERSION = 3

# Append only: a word's code is its place here, and entries written by one release are read by the
# next. Removing or reordering a word needs a new format version. A word not listed is spelt out.
WORDS: Final = (
    # identity document types
    "resident",
    "passport",
    "hk_macao_permit",
    "taiwan_permit",
    "foreign_permanent",
    # reason codes
    "override",
    "confirmed",
    "close_contact",
    "quarantine",
    "positive_test",
    "secondary_contact",
    "risk_area_arrival",
    "evaluation_error",
    # rule sets
    "default-2022.1",
    "default-2022.2",
)
_WORD_CODE: Final = {word: code for code, word in enumerate(WORDS, start=1)}
_N_WORDS: Final = len(WORDS)

_HEADER = struct.Struct("<BBBIIII")
# Byte offset of (version, computed_at): two little-endian unsigned 32-bit integers.
ORDER_OFFSET = 3

_COLOURS = ("green", "yellow", "red")
COLOUR_CODE: Final = {name: code for code, name in enumerate(_COLOURS, start=1)}
COLOUR_BY_CODE: Final[tuple[str | None, ...]] = (None, *_COLOURS)
RESULTS: Final = (None, "negative", "positive")
RESULT_CODE: Final = {name: code for code, name in enumerate(RESULTS)}
POPUP: Final = 0x01
VACCINE_COMPLETE: Final = 0x02
HAS_TEST: Final = 0x04
# Format 3 keeps colour and result in the flags byte's low bits.
_COLOUR_MASK = 0x03
_RESULT_SHIFT = 2
_FLAG_SHIFT = 4


class EntryFormatError(ValueError):
    """Bytes that are not a status entry this code can read; the reader treats them as a miss."""


class UnknownVersionError(EntryFormatError):
    """The entry was packed by another format version (e.g. during a rolling deploy)."""

    def __init__(self, version: int) -> None:
        super().__init__(
            f"status entry format version {version} is not supported (this code reads 2 and {FORMAT_VERSION})"
        )
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


def check_codes(entry: StatusEntry) -> tuple[int, int]:
    """The colour's and the test result's codes; ValueError for values no format carries."""
    colour = COLOUR_CODE.get(entry.colour)
    if colour is None:
        raise ValueError(f"colour must be one of {_COLOURS}, got {entry.colour!r}")
    if entry.last_test_result not in RESULT_CODE:
        raise ValueError(f"last_test_result must be one of {RESULTS}, got {entry.last_test_result!r}")
    return colour, RESULT_CODE[entry.last_test_result]


def pack(entry: StatusEntry) -> bytes:
    """Encode an entry; raises ValueError for values the format cannot carry."""
    colour, result = check_codes(entry)
    for reason in entry.reasons:
        if not reason:
            raise ValueError("a reason code is empty")
    flags = (POPUP if entry.popup else 0) | (VACCINE_COMPLETE if entry.vaccine_complete else 0)
    last_test_at = 0
    if entry.last_test_at is not None:
        flags |= HAS_TEST
        last_test_at = entry.last_test_at
    if len(entry.reasons) > 255:
        raise ValueError("status entry field out of range: more than 255 reasons")
    try:
        header = _HEADER.pack(
            FORMAT_VERSION,
            colour | result << _RESULT_SHIFT | flags << _FLAG_SHIFT,
            entry.vaccine_doses,
            entry.version,
            entry.computed_at,
            entry.valid_until,
            last_test_at,
        )
    except struct.error as exc:
        raise ValueError(f"status entry field out of range: {exc}") from exc
    parts = [header, _word(entry.ruleset), _word(entry.id_type), bytes((len(entry.reasons),))]
    parts.extend(_word(reason) for reason in entry.reasons)
    parts.append(_masked(entry.masked_name))
    parts.append(_masked(entry.masked_number))
    return b"".join(parts)


def unpack(data: bytes) -> StatusEntry:
    """Decode bytes made by `pack` (or by format 2's); raises EntryFormatError for anything else."""
    if not data:
        raise EntryFormatError("empty status entry")
    if data[0] != FORMAT_VERSION:
        if data[0] == 2:
            from cache.entry_v2 import unpack_v2  # only while entries of the previous release remain

            return unpack_v2(data)
        raise UnknownVersionError(data[0])
    try:
        _format, bits, doses, version, computed_at, valid_until, last_test_at = _HEADER.unpack_from(data)
        # Inlined word and text reads: this runs on every cache hit (about 1.5 us here, 3 us through helpers).
        at = _HEADER.size
        code = data[at]
        if 0 < code <= _N_WORDS:
            ruleset, at = WORDS[code - 1], at + 1
        else:
            ruleset, at = _read_word(data, at)
        code = data[at]
        if 0 < code <= _N_WORDS:
            id_type, at = WORDS[code - 1], at + 1
        else:
            id_type, at = _read_word(data, at)
        count = data[at]
        at += 1
        reasons: tuple[str, ...] = ()
        if count:
            found = []
            for _ in range(count):
                reason, at = _read_word(data, at)
                found.append(reason)
            reasons = tuple(found)
        end = at + 1 + data[at]
        name = data[at + 1 : end].decode()
        if data[end]:
            name += "*" * data[end]
        at = end + 2 + data[end + 1]
        name += data[end + 2 : at].decode()
        end = at + 1 + data[at]
        number = data[at + 1 : end].decode()
        if data[end]:
            number += "*" * data[end]
        at = end + 2 + data[end + 1]
        number += data[end + 2 : at].decode()
        if at != len(data):
            raise EntryFormatError(f"status entry is {len(data)} bytes, {at} by its own lengths")
        colour = COLOUR_BY_CODE[bits & _COLOUR_MASK]
        if colour is None:
            raise EntryFormatError("status entry has no colour")
        flags = bits >> _FLAG_SHIFT
        # Positional: keyword arguments cost a measurable share of the whole unpack.
        return StatusEntry(
            colour,
            reasons,
            bool(flags & POPUP),
            doses,
            bool(flags & VACCINE_COMPLETE),
            last_test_at if flags & HAS_TEST else None,
            RESULTS[(bits >> _RESULT_SHIFT) & 0x03],
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


def _text(text: str) -> bytes:
    raw = text.encode()
    if len(raw) > 255:
        raise ValueError(f"status entry field out of range: {text[:20]!r}… is over 255 bytes")
    return bytes((len(raw),)) + raw


def _word(word: str) -> bytes:
    code = _WORD_CODE.get(word)
    return bytes((code,)) if code is not None else b"\x00" + _text(word)


def _read_word(data: bytes, at: int) -> tuple[str, int]:
    code = data[at]
    if code:
        if code > len(WORDS):
            raise EntryFormatError(f"status entry names word {code}, unknown to this release")
        return WORDS[code - 1], at + 1
    return _read_text(data, at + 1)


def _read_text(data: bytes, at: int) -> tuple[str, int]:
    end = at + 1 + data[at]
    if end > len(data):
        raise EntryFormatError("status entry ends inside a text")
    return data[at + 1 : end].decode(), end


def _masked(text: str) -> bytes:
    """Head, count of the first run of asterisks (the masked part), tail."""
    start = text.find("*")
    if start < 0:
        return _text(text) + b"\x00\x00"
    end = start
    while end < len(text) and end - start < 255 and text[end] == "*":
        end += 1
    return _text(text[:start]) + bytes((end - start,)) + _text(text[end:])
