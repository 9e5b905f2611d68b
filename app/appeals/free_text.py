"""Finding identity numbers in free text, which is stored as given and so must never hold one.

Shapes, not validity: a mistyped number identifies a person nearly as well as a correct one, so a
resident number with a wrong check character is refused too. The shapes are the identity module's
(app.identity); the only exceptions are the digit runs people write for other things and no document
of ours is easily confused with: a calendar date (20220315) and a mainland mobile number.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import date
from typing import Final

from app.identity import DOCUMENT_SHAPES

# 17 digits and a digit or X, allowing one space or hyphen between characters ("5001 0119 ..."), and not
# part of a longer run of letters and digits (a 19-digit bank card is not one).
_RESIDENT: Final = re.compile(r"(?<![0-9A-Z])(?:[0-9][ -]?){17}[0-9X](?![0-9A-Z])")
_TOKEN: Final = re.compile(r"[0-9A-Z]+")
_MOBILE: Final = re.compile(r"1[3-9][0-9]{9}")
# A passport number is letters and digits; a word with a few digits in it (COVID19) is not one. The
# shortest passport numbers in use carry 7 digits (EA1234567).
_PASSPORT_MIN_DIGITS: Final = 7
# The order matters: the narrower shapes name the document better than the passport's catch-all.
_ORDER: Final = ("hk_macao_permit", "foreign_permanent", "taiwan_permit", "passport")


@dataclass(frozen=True, slots=True)
class Found:
    """What kind of document a piece of text looks like, and where it starts (never the number itself)."""

    id_type: str
    offset: int


def identity_number_in(text: str) -> Found | None:
    """The first thing in `text` shaped like an identity document number, or None."""
    # Full-width digits and letters (５００１…) are the same number to a reader; NFKC keeps offsets of
    # such characters, so the offset still points at the place in what the person wrote.
    normalised = unicodedata.normalize("NFKC", text).upper()
    first: Found | None = None
    resident = _RESIDENT.search(normalised)
    if resident is not None:
        first = Found("resident", resident.start())
    for token in _TOKEN.finditer(normalised):
        if first is not None and token.start() >= first.offset:
            break
        kind = _document_shape(token.group())
        if kind is not None:
            return Found(kind, token.start())
    return first


def _document_shape(token: str) -> str | None:
    for id_type in _ORDER:
        if not DOCUMENT_SHAPES[id_type].fullmatch(token):
            continue
        if id_type == "taiwan_permit" and (_is_date(token) or _MOBILE.fullmatch(token)):
            return None
        if id_type == "passport" and sum(c.isdigit() for c in token) < _PASSPORT_MIN_DIGITS:
            return None
        return id_type
    return None


def _is_date(token: str) -> bool:
    if len(token) != 8:
        return False
    try:
        day = date(int(token[:4]), int(token[4:6]), int(token[6:]))
    except ValueError:
        return False
    return 1900 <= day.year <= 2100
