"""What an appeal and a decision are made of: the names they use and the checks every caller shares."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from app.appeals.errors import IdentityNumberInText, InvalidAppealField
from app.appeals.free_text import identity_number_in
from signing.colours import COLOURS

# Why a person appeals. sql/010_appeals.sql checks the same list.
CATEGORIES: Final = (
    "wrong_test_result",  # a test result that is not theirs or not what the lab found
    "not_in_risk_area",  # an arrival or visit that did not happen
    "not_a_contact",  # a close- or secondary-contact designation in error
    "quarantine_completed",  # a designation that should have ended
    "not_my_record",  # records of another person under their number
    "other",
)
# open → proposed (a colour change awaits a second operator) → upheld (an override is in force or was);
# open or proposed → rejected. A new proposal may replace a pending one.
STATES: Final = ("open", "proposed", "upheld", "rejected")
ACTIONS: Final = ("propose", "approve", "reject", "end")

MAX_TEXT: Final = 2000
MAX_CONTACT: Final = 200
MIN_REASON: Final = 3
MAX_REASON: Final = 500
# An appeal's override is a correction while the records are put right, not a standing status.
MAX_OVERRIDE_SECONDS: Final = 30 * 24 * 3600


@dataclass(frozen=True, slots=True)
class Filing:
    category: str
    text: str
    contact_ref: str


@dataclass(frozen=True, slots=True)
class Decision:
    action: str
    reason: str
    colour: str | None = None  # propose
    expires_at: datetime | None = None  # propose
    proposal_id: int | None = None  # approve


@dataclass(frozen=True, slots=True)
class Operator:
    """An operator client: one person, so that two of them are two people."""

    id: int
    name: str


def free_text(field: str, value: object, *, max_length: int, min_length: int = 1) -> str:
    """A bounded string that holds nothing shaped like an identity number; stripped of outer blanks."""
    if value is None:
        raise InvalidAppealField(field, "missing", f"{field} is required")
    if not isinstance(value, str):
        raise InvalidAppealField(field, "wrong_type", f"{field} must be a string")
    text = value.strip()
    if len(text) < min_length:
        raise InvalidAppealField(field, "too_short", f"{field} must be at least {min_length} characters")
    if len(text) > max_length:
        raise InvalidAppealField(field, "too_long", f"{field} must be at most {max_length} characters")
    found = identity_number_in(text)
    if found is not None:
        raise IdentityNumberInText(field, found.id_type, found.offset)
    return text


def filing(category: object, text: object, contact_ref: object) -> Filing:
    if category not in CATEGORIES:
        raise InvalidAppealField("category", "unknown_category", f"category must be one of {', '.join(CATEGORIES)}")
    assert isinstance(category, str)
    return Filing(
        category,
        free_text("text", text, max_length=MAX_TEXT),
        free_text("contact_ref", contact_ref, max_length=MAX_CONTACT),
    )


def decision(
    action: object, reason: object, *, colour: object = None, expires_at: object = None, proposal_id: object = None
) -> Decision:
    """A decision as a caller gave it (`expires_at` in Unix seconds), checked field by field."""
    if action not in ACTIONS:
        raise InvalidAppealField("action", "unknown_action", f"action must be one of {', '.join(ACTIONS)}")
    assert isinstance(action, str)
    why = free_text("reason", reason, min_length=MIN_REASON, max_length=MAX_REASON)
    if action == "propose":
        if colour not in COLOURS:
            raise InvalidAppealField("colour", "unknown_colour", f"colour must be one of {', '.join(COLOURS)}")
        assert isinstance(colour, str)
        return Decision(action, why, colour=colour, expires_at=_instant("expires_at", expires_at))
    if action == "approve":
        return Decision(action, why, proposal_id=_positive_int("proposal_id", proposal_id))
    return Decision(action, why)


def _instant(field: str, value: object) -> datetime:
    if value is None:
        raise InvalidAppealField(field, "missing", f"{field} is required (Unix seconds)")
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidAppealField(field, "wrong_type", f"{field} must be an integer (Unix seconds)")
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):
        raise InvalidAppealField(field, "out_of_range", f"{field} is not a representable time") from None


def _positive_int(field: str, value: object) -> int:
    if value is None:
        raise InvalidAppealField(field, "missing", f"{field} is required")
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidAppealField(field, "wrong_type", f"{field} must be an integer")
    if not 0 < value < 2**63:
        raise InvalidAppealField(field, "out_of_range", f"{field} must be a positive id")
    return value
