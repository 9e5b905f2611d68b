"""What a relation is and who may hold one, checked from the identity documents alone (pure, no I/O).

- `guardian`: a parent or legal guardian of a minor. The relative must hold a resident identity number
  (its birth date is the only age the service can check) and be under 18 today; a holder whose number
  carries a birth date must be 18 or over. The relation lapses by itself at the minor's 18th birthday
  (00:00 China Standard Time): from then on it answers as no relation, and the adult can be reached only
  through a carer relation, which needs their attestation.
- `carer`: someone looking after an adult (an elderly parent). The relative must not be a known minor
  (a minor's relation is guardian), and the registration names an attestation: the citizen backend's own
  reference to the document it checked (a power of attorney, the relative's signed consent). It is
  stored as given, so it must not hold an identity number.

Ages are counted on the calendar of China Standard Time, where the numbers are issued.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Final

from app.appeals.free_text import identity_number_in
from app.identity import Identity
from app.ingest.fields import CHINA_STANDARD_TIME
from app.relations.errors import InvalidRelationField

GUARDIAN: Final = "guardian"
CARER: Final = "carer"
KINDS: Final = (GUARDIAN, CARER)
ADULT_AGE: Final = 18
MAX_ATTESTATION_REF: Final = 200


@dataclass(frozen=True, slots=True)
class Registration:
    kind: str
    attestation_ref: str | None  # a carer's
    valid_until: int | None  # a guardian's: the minor's 18th birthday, Unix seconds


def birth_date(identity: Identity) -> date | None:
    """The birth date a resident identity number carries (already validated), or None for other documents."""
    if identity.id_type != "resident":
        return None
    number = identity.number
    return date(int(number[6:10]), int(number[10:12]), int(number[12:14]))


def birthday(born: date, age: int) -> date:
    """The day one turns `age`; someone born on 29 February has it on 1 March in a common year."""
    try:
        return born.replace(year=born.year + age)
    except ValueError:
        return date(born.year + age, 3, 1)


def is_adult(born: date, today: date) -> bool:
    return today >= birthday(born, ADULT_AGE)


def day_start(day: date) -> int:
    """00:00 China Standard Time of `day`, in Unix seconds."""
    return int(datetime.combine(day, datetime.min.time(), CHINA_STANDARD_TIME).timestamp())


def today_in_china(now: int) -> date:
    return datetime.fromtimestamp(now, CHINA_STANDARD_TIME).date()


def registration(body: dict[str, Any], holder: Identity, relative: Identity, now: int) -> Registration:
    """The relation asked for in `body` (`kind`, `attestation_ref`), checked against the two people."""
    kind = body.get("kind")
    if kind is None:
        raise InvalidRelationField("kind", "missing", f"kind is required: one of {', '.join(KINDS)}")
    if kind not in KINDS:
        raise InvalidRelationField("kind", "unknown_kind", f"kind must be one of {', '.join(KINDS)}")
    if holder == relative:
        raise InvalidRelationField("relative", "same_person", "a person needs no relation to see their own status")
    today = today_in_china(now)
    relative_born = birth_date(relative)
    holder_born = birth_date(holder)
    if kind == GUARDIAN:
        if "attestation_ref" in body:
            raise InvalidRelationField("attestation_ref", "not_allowed", "a guardian relation takes no attestation_ref")
        if relative_born is None:
            raise InvalidRelationField(
                "relative.id_type",
                "no_birth_date",
                "a guardian relation needs the minor's resident identity number: its birth date is how the "
                "service checks that they are a minor",
            )
        if is_adult(relative_born, today):
            raise InvalidRelationField(
                "relative.id_number",
                "not_a_minor",
                f"the relative is {ADULT_AGE} or over: an adult's status is reached through a carer relation",
            )
        if holder_born is not None and not is_adult(holder_born, today):
            raise InvalidRelationField("id_number", "guardian_not_adult", f"a guardian must be {ADULT_AGE} or over")
        return Registration(GUARDIAN, None, day_start(birthday(relative_born, ADULT_AGE)))
    if relative_born is not None and not is_adult(relative_born, today):
        raise InvalidRelationField(
            "kind", "relative_is_a_minor", "the relative is under 18: register a guardian relation instead"
        )
    return Registration(CARER, _attestation(body.get("attestation_ref")), None)


def _attestation(value: object) -> str:
    field = "attestation_ref"
    if value is None:
        raise InvalidRelationField(
            field,
            "missing",
            "a carer relation needs attestation_ref: the backend's reference to the document that attests it "
            "(a power of attorney, the relative's consent)",
        )
    if not isinstance(value, str) or not value.strip():
        raise InvalidRelationField(field, "wrong_type", f"{field} must be a non-empty string")
    if len(value) > MAX_ATTESTATION_REF:
        raise InvalidRelationField(field, "too_long", f"{field} must be at most {MAX_ATTESTATION_REF} characters")
    found = identity_number_in(value)
    if found is not None:
        raise InvalidRelationField(
            field,
            "identity_number_in_text",
            f"{field} holds something shaped like a {found.id_type} document number at character "
            f"{found.offset}; it is stored as given, so it must not hold identity numbers",
        )
    return value.strip()
