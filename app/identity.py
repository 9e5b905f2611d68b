"""Identity documents: validation, normalisation, pseudonyms and masked display.

Raw document numbers live only in the request being served: they are turned into a pseudonym
(HMAC-SHA-256 with a secret pepper, truncated to 16 bytes) and a masked display, and dropped.
"""

from __future__ import annotations

import hmac
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from hashlib import sha256
from operator import mul
from types import MappingProxyType
from typing import Final

from app.field_errors import FieldError
from cache.keys import PSEUDONYM_BYTES

ID_TYPES: Final = ("resident", "passport", "hk_macao_permit", "taiwan_permit", "foreign_permanent")

# GB 11643-1999 / ISO 7064 MOD 11-2: weights of the first 17 characters, and the check character.
_WEIGHTS: Final = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CHECK_CHARS: Final = "10X98765432"
# Province-level codes of GB/T 2260, plus 81-83 used by residence permits of HK, Macao and Taiwan.
_PROVINCES: Final = frozenset(
    {11, 12, 13, 14, 15, 21, 22, 23, 31, 32, 33, 34, 35, 36, 37, 41, 42, 43, 44, 45, 46, 50, 51, 52, 53, 54}
    | {61, 62, 63, 64, 65, 71, 81, 82, 83}
)
# The same codes as two-character strings: the number's first two characters, compared without int().
_PROVINCE_PREFIXES: Final = frozenset(f"{code:02d}" for code in _PROVINCES)
# The weighted sum over the digits' ASCII codes exceeds the sum over the digits by this much.
_ASCII_ZERO_EXCESS: Final = ord("0") * sum(_WEIGHTS)
_EARLIEST_BIRTH: Final = date(1900, 1, 1)
_OTHER_SHAPES: Final = {
    "passport": re.compile(r"[A-Z0-9]{5,17}"),
    "hk_macao_permit": re.compile(r"[HM][0-9]{8}([0-9]{2})?"),
    "taiwan_permit": re.compile(r"[0-9]{8}|[0-9]{10}[A-Z0-9]?"),
    "foreign_permanent": re.compile(r"[A-Z]{3}[0-9]{12}|9[0-9]{16}[0-9X]"),
}
# The shapes of the documents other than the resident number, for code that must recognise one in text.
DOCUMENT_SHAPES: Final[Mapping[str, re.Pattern[str]]] = MappingProxyType(_OTHER_SHAPES)


class InvalidIdentity(FieldError):
    """The document is malformed; `field` and `code` say which rule it broke."""


@dataclass(frozen=True, slots=True)
class Identity:
    id_type: str
    number: str  # normalised; never stored, logged or put in a token

    @property
    def canonical(self) -> bytes:
        return f"{self.id_type}:{self.number}".encode()


def resident_check_char(first17: str) -> str:
    """The ISO 7064 MOD 11-2 check character over the first 17 digits."""
    if len(first17) == len(_WEIGHTS) and first17.isascii() and first17.isdigit():
        # The hot path: summing over the bytes is several times faster than int() per character.
        total = sum(map(mul, first17.encode("ascii"), _WEIGHTS)) - _ASCII_ZERO_EXCESS
    else:  # anything else keeps its old answer or ValueError
        total = sum(int(c) * w for c, w in zip(first17, _WEIGHTS, strict=True))
    return _CHECK_CHARS[total % 11]


def parse_identity(id_type: object, number: object, *, today: date | None = None) -> Identity:
    if not isinstance(id_type, str) or id_type not in ID_TYPES:
        raise InvalidIdentity("id_type", "unknown_id_type", f"id_type must be one of {', '.join(ID_TYPES)}")
    if not isinstance(number, str):
        raise InvalidIdentity("id_number", "missing", "id_number must be a string")
    normalised = number.strip().replace(" ", "").upper()
    if id_type == "resident":
        _check_resident(normalised, today or _today())
    elif not _OTHER_SHAPES[id_type].fullmatch(normalised):
        raise InvalidIdentity("id_number", "bad_format", f"id_number is not a well-formed {id_type} number")
    return Identity(id_type, normalised)


class _Today:
    """`date.today()`, recomputed only once local midnight has passed (it costs a microsecond a call)."""

    __slots__ = ("_today", "_until")

    def __init__(self) -> None:
        self._until = 0.0  # epoch of the next local midnight
        self._today = date.min

    def __call__(self) -> date:
        now = time.time()
        if now >= self._until:
            today = date.fromtimestamp(now)
            self._until = datetime.combine(today + timedelta(days=1), datetime.min.time()).timestamp()
            self._today = today
        return self._today


_today = _Today()


def _check_resident(number: str, today: date) -> None:
    if len(number) != 18:
        raise InvalidIdentity(
            "id_number", "wrong_length", f"a resident identity number has 18 characters, got {len(number)}"
        )
    # isascii first: isdigit alone accepts digits of other scripts.
    if not (number.isascii() and number[:17].isdigit() and (number[17].isdigit() or number[17] == "X")):
        raise InvalidIdentity("id_number", "bad_characters", "a resident identity number is 17 digits and a digit or X")
    if number[:2] not in _PROVINCE_PREFIXES:
        raise InvalidIdentity("id_number", "unknown_region", f"region code {number[:6]} is not a known region")
    try:
        born = date(int(number[6:10]), int(number[10:12]), int(number[12:14]))
    except ValueError:
        raise InvalidIdentity(
            "id_number", "impossible_birth_date", f"birth date {number[6:14]} is not a calendar date"
        ) from None
    if not _EARLIEST_BIRTH <= born <= today:
        raise InvalidIdentity(
            "id_number", "impossible_birth_date", f"birth date {number[6:14]} is outside 1900 to today"
        )
    expected = resident_check_char(number[:17])
    if number[17] != expected:
        raise InvalidIdentity("id_number", "bad_checksum", "the check character does not match the first 17 digits")


class _PepperedHmac:
    """HMAC-SHA-256 keyed once: copying a keyed object is faster than keying a new one per call.

    One pepper per process in practice; a call with another pepper (tests) re-keys it.
    """

    __slots__ = ("_state",)

    def __init__(self) -> None:
        # One tuple, replaced whole, so that a pepper is never paired with another pepper's key.
        self._state = (b"", hmac.new(b"", digestmod=sha256))

    def digest(self, pepper: bytes, message: bytes) -> bytes:
        known, keyed = self._state
        if pepper != known:
            keyed = hmac.new(pepper, digestmod=sha256)
            self._state = (pepper, keyed)
        h = keyed.copy()
        h.update(message)
        return h.digest()


_hmac = _PepperedHmac()


def pseudonym(identity: Identity, pepper: bytes) -> bytes:
    return _hmac.digest(pepper, identity.canonical)[:PSEUDONYM_BYTES]


def mask_number(number: str) -> str:
    """First two and last two characters, the rest hidden: 50**************1X."""
    if len(number) <= 4:
        return "*" * len(number)
    return number[:2] + "*" * (len(number) - 4) + number[-2:]


def mask_name(name: str) -> str:
    """Surname plus `*`: 张三 becomes 张*; a Latin name keeps its first letter."""
    name = name.strip()
    if not name:
        return ""
    return name[0] + "*"
