"""Free text of an appeal never holds identity numbers: what the detector finds, and what it lets through."""

from __future__ import annotations

import pytest

from app.appeals.errors import IdentityNumberInText, InvalidAppealField
from app.appeals.free_text import Found, identity_number_in
from app.appeals.model import MAX_TEXT, decision, filing, free_text
from app.identity import parse_identity

RESIDENT = "500103199003071239"


def test_the_resident_number_used_here_is_a_valid_one() -> None:
    assert parse_identity("resident", RESIDENT).number == RESIDENT


@pytest.mark.parametrize(
    ("text", "found"),
    [
        (f"my number is {RESIDENT}, the test was not mine", Found("resident", 13)),
        (f"身份证{RESIDENT}的核酸结果有误", Found("resident", 3)),
        ("11010519491231002x is my mother", Found("resident", 0)),  # lower-case x
        ("５００１０３１９９００３０７１２３９", Found("resident", 0)),  # full-width digits
        ("id 5001 0319 9003 0712 39 please", Found("resident", 3)),  # grouped with spaces
        ("id 500103-19900307-1239", Found("resident", 3)),  # grouped with hyphens
        (RESIDENT[:-1] + "0 has a wrong check character", Found("resident", 0)),  # a shape, not a valid one
        ("passport E12345678 was used at the border", Found("passport", 9)),
        ("passport ea1234567", Found("passport", 9)),
        ("permit H12345678 for Hong Kong", Found("hk_macao_permit", 7)),
        ("permit M1234567801", Found("hk_macao_permit", 7)),
        ("台胞证 12345678", Found("taiwan_permit", 4)),
        ("permit 1234567890", Found("taiwan_permit", 7)),
        ("card ABC123456789012", Found("foreign_permanent", 5)),
        ("passport 123456789", Found("passport", 9)),  # all digits, the length of many passports
        ("first E12345678 then " + RESIDENT, Found("passport", 6)),  # the earlier one
    ],
)
def test_identity_shaped_text_is_found(text: str, found: Found) -> None:
    assert identity_number_in(text) == found


@pytest.mark.parametrize(
    "text",
    [
        "I was never in the risk area; my test on 2022-03-15 was negative",
        "sampled 20220315 at the clinic",  # a date written as eight digits
        "call 13812345678 after six",  # a mainland mobile number
        "COVID19 PCR test at site 4000",
        "postcode 400010, building 12, room 3",
        "我没有去过风险地区，请复核",
        RESIDENT + "1 is my bank card",  # 19 digits: longer than any identity number
        "",
    ],
)
def test_ordinary_text_passes(text: str) -> None:
    assert identity_number_in(text) is None


def test_the_refusal_names_the_field_and_the_kind_but_never_repeats_the_number() -> None:
    with pytest.raises(IdentityNumberInText) as caught:
        free_text("text", f"mine is {RESIDENT}", max_length=MAX_TEXT)
    error = caught.value
    assert (error.field, error.code, error.id_type, error.offset) == ("text", "identity_number_in_text", "resident", 8)
    assert RESIDENT not in error.detail and "text holds something shaped like a resident" in error.detail


def test_every_stored_field_is_checked() -> None:
    with pytest.raises(IdentityNumberInText) as caught:
        filing("other", "fine", "passport E12345678")
    assert caught.value.field == "contact_ref"
    with pytest.raises(IdentityNumberInText) as caught:
        decision("reject", f"the records of {RESIDENT} are right")
    assert caught.value.field == "reason"


@pytest.mark.parametrize(
    ("args", "field", "code"),
    [
        (("nonsense", "t", "c"), "category", "unknown_category"),
        (("other", None, "c"), "text", "missing"),
        (("other", 12, "c"), "text", "wrong_type"),
        (("other", "   ", "c"), "text", "too_short"),
        (("other", "x" * (MAX_TEXT + 1), "c"), "text", "too_long"),
        (("other", "t", "c" * 201), "contact_ref", "too_long"),
    ],
)
def test_filing_fields_are_checked(args: tuple[object, object, object], field: str, code: str) -> None:
    with pytest.raises(InvalidAppealField) as caught:
        filing(*args)
    assert (caught.value.field, caught.value.code) == (field, code)


def test_decision_fields_are_checked() -> None:
    green = {"action": "propose", "reason": "lab error", "colour": "green"}
    cases: list[tuple[dict[str, object], str, str]] = [
        ({"action": "upgrade", "reason": "why not"}, "action", "unknown_action"),
        ({"action": "reject", "reason": "no"}, "reason", "too_short"),
        ({"action": "propose", "reason": "lab error", "colour": "blue"}, "colour", "unknown_colour"),
        ({"action": "propose", "reason": "lab error", "colour": "green"}, "expires_at", "missing"),
        ({**green, "expires_at": "soon"}, "expires_at", "wrong_type"),
        ({**green, "expires_at": 10**20}, "expires_at", "out_of_range"),
        ({"action": "approve", "reason": "checked"}, "proposal_id", "missing"),
        ({"action": "approve", "reason": "checked", "proposal_id": True}, "proposal_id", "wrong_type"),
        ({"action": "approve", "reason": "checked", "proposal_id": 0}, "proposal_id", "out_of_range"),
    ]  # fmt: skip
    for given, field, code in cases:
        with pytest.raises(InvalidAppealField) as caught:
            decision(
                given["action"],
                given["reason"],
                colour=given.get("colour"),
                expires_at=given.get("expires_at"),
                proposal_id=given.get("proposal_id"),
            )
        assert (caught.value.field, caught.value.code) == (field, code), given
    made = decision("propose", " lab error ", colour="green", expires_at=1_700_000_000)
    assert (made.reason, made.colour, int(made.expires_at.timestamp()) if made.expires_at else 0) == (
        "lab error",
        "green",
        1_700_000_000,
    )
