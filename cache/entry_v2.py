"""Format version 2 of a status entry: what releases before the bucketed layout wrote.

Kept so that an entry written by an older release is still read (`cache.entry.unpack` hands it here)
and so that, during a rolling upgrade, the new release can still write what the old one reads
(`StatusWriter(legacy_keys=True)`). Delete once no deployment runs a release that reads it.

Layout (little-endian)::

    B format | B colour | B test result | B flags | H vaccine doses
    q status version | q computed_at | q valid_until | q last_test_at
    H len(reasons) | H len(ruleset) | H len(id_type) | H len(masked_name) | H len(masked_number)
    then those five UTF-8 strings back to back; reasons are joined with U+001F (unit separator).
"""

from __future__ import annotations

import struct

from cache.entry import (
    COLOUR_BY_CODE,
    HAS_TEST,
    POPUP,
    RESULTS,
    VACCINE_COMPLETE,
    EntryFormatError,
    StatusEntry,
    check_codes,
)

FORMAT_V2 = 2
REASON_SEPARATOR = "\x1f"
_HEADER = struct.Struct("<BBBBHqqqqHHHHH")
# Byte offset of (version, computed_at): two little-endian signed 64-bit integers.
ORDER_OFFSET_V2 = 6


def pack_v2(entry: StatusEntry) -> bytes:
    """Encode an entry in format 2; raises ValueError for values the format cannot carry."""
    colour, result = check_codes(entry)
    for reason in entry.reasons:
        if not reason or REASON_SEPARATOR in reason:
            raise ValueError(f"reason code {reason!r} is empty or holds the separator")
    flags = (POPUP if entry.popup else 0) | (VACCINE_COMPLETE if entry.vaccine_complete else 0)
    last_test_at = 0
    if entry.last_test_at is not None:
        flags |= HAS_TEST
        last_test_at = entry.last_test_at
    strings = [
        REASON_SEPARATOR.join(entry.reasons).encode(),
        entry.ruleset.encode(),
        entry.id_type.encode(),
        entry.masked_name.encode(),
        entry.masked_number.encode(),
    ]
    try:
        header = _HEADER.pack(
            FORMAT_V2,
            colour,
            result,
            flags,
            entry.vaccine_doses,
            entry.version,
            entry.computed_at,
            entry.valid_until,
            last_test_at,
            *(len(s) for s in strings),
        )
    except struct.error as exc:
        raise ValueError(f"status entry field out of range: {exc}") from exc
    return b"".join((header, *strings))


def unpack_v2(data: bytes) -> StatusEntry:
    """Decode bytes made by `pack_v2`; raises EntryFormatError for anything else."""
    try:
        (_f, colour, result, flags, doses, version, computed_at, valid_until, last_test_at, *lengths) = (
            _HEADER.unpack_from(data)
        )
        at = _HEADER.size
        if at + sum(lengths) != len(data):
            raise EntryFormatError(f"status entry is {len(data)} bytes, header says {at + sum(lengths)}")
        strings = []
        for n in lengths:
            strings.append(data[at : at + n].decode())
            at += n
        reasons, ruleset, id_type, name, number = strings
        colour_name = COLOUR_BY_CODE[colour]
        if colour_name is None:
            raise EntryFormatError("status entry has no colour")
        return StatusEntry(
            colour_name,
            tuple(reasons.split(REASON_SEPARATOR)) if reasons else (),
            bool(flags & POPUP),
            doses,
            bool(flags & VACCINE_COMPLETE),
            last_test_at if flags & HAS_TEST else None,
            RESULTS[result],
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
