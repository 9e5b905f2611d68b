"""Identity documents: GB 11643-1999 validation, other document shapes, pseudonyms and masking."""

from __future__ import annotations

import hashlib
import hmac
from datetime import date

import pytest

from app.identity import (
    ID_TYPES,
    Identity,
    InvalidIdentity,
    mask_name,
    mask_number,
    parse_identity,
    pseudonym,
    resident_check_char,
)

TODAY = date(2022, 6, 1)
PEPPER = bytes(range(32))
# Valid numbers (checksums computed by hand from the ISO 7064 MOD 11-2 weights).
WITH_X = "11010519491231002X"
WITH_DIGIT = "500103199003071239"
LEAP_DAY = "440305200002294564"


def parse(id_type: object, number: object) -> Identity:
    return parse_identity(id_type, number, today=TODAY)


def refusal(id_type: object, number: object) -> tuple[str, str]:
    with pytest.raises(InvalidIdentity) as caught:
        parse(id_type, number)
    return caught.value.field, caught.value.code


@pytest.mark.parametrize(
    ("first17", "check"),
    [("11010519491231002", "X"), ("50010319900307123", "9"), ("44030520000229456", "4")],
)
def test_check_character_follows_iso_7064_mod_11_2(first17: str, check: str) -> None:
    assert resident_check_char(first17) == check
    weights = [pow(2, 17 - i, 11) for i in range(17)]  # the standard's definition of the weights
    total = sum(int(c) * w for c, w in zip(first17, weights, strict=True))
    assert "10X98765432"[total % 11] == check


@pytest.mark.parametrize("number", [WITH_X, WITH_DIGIT, LEAP_DAY])
def test_valid_resident_numbers_are_accepted(number: str) -> None:
    assert parse("resident", number) == Identity("resident", number)


def test_lower_case_x_is_normalised_to_upper_case() -> None:
    lower = parse("resident", WITH_X.lower())
    assert lower == Identity("resident", WITH_X)
    assert pseudonym(lower, PEPPER) == pseudonym(parse("resident", WITH_X), PEPPER)


def test_surrounding_and_inner_spaces_are_dropped() -> None:
    assert parse("resident", f"  {WITH_DIGIT[:6]} {WITH_DIGIT[6:14]} {WITH_DIGIT[14:]} ").number == WITH_DIGIT


@pytest.mark.parametrize(
    ("number", "code"),
    [
        (WITH_DIGIT[:-1] + "0", "bad_checksum"),
        (WITH_X[:-1] + "1", "bad_checksum"),
        (WITH_DIGIT[:17], "wrong_length"),
        (WITH_DIGIT + "0", "wrong_length"),
        ("", "wrong_length"),
        ("5001031990030712X9", "bad_characters"),
        ("50010319900307123Y", "bad_characters"),
        ("99" + WITH_DIGIT[2:17] + resident_check_char("99" + WITH_DIGIT[2:17]), "unknown_region"),
        ("110105199902301237", "impossible_birth_date"),  # 30 February 1999, valid checksum
        ("110105199913011230", "impossible_birth_date"),  # month 13
        ("11010518991231" + "123" + resident_check_char("11010518991231123"), "impossible_birth_date"),
        ("11010520220602" + "123" + resident_check_char("11010520220602123"), "impossible_birth_date"),
    ],
)
def test_malformed_resident_numbers_say_what_is_wrong(number: str, code: str) -> None:
    assert refusal("resident", number) == ("id_number", code)


def test_messages_name_the_problem() -> None:
    with pytest.raises(InvalidIdentity, match="18 characters, got 17"):
        parse("resident", WITH_DIGIT[:17])
    with pytest.raises(InvalidIdentity, match="19990230 is not a calendar date"):
        parse("resident", "110105199902301237")
    with pytest.raises(InvalidIdentity, match="check character"):
        parse("resident", WITH_DIGIT[:-1] + "0")


@pytest.mark.parametrize("id_type", ["driving_licence", "", None, 3, "RESIDENT"])
def test_unknown_id_types_are_refused(id_type: object) -> None:
    assert refusal(id_type, WITH_DIGIT) == ("id_type", "unknown_id_type")


@pytest.mark.parametrize("number", [None, 500103199003071239, ["x"]])
def test_a_number_must_be_a_string(number: object) -> None:
    assert refusal("resident", number) == ("id_number", "missing")


@pytest.mark.parametrize(
    ("id_type", "good", "bad"),
    [
        ("passport", "e12345678", "E12"),
        ("hk_macao_permit", "h12345678", "X12345678"),
        ("taiwan_permit", "12345678", "1234567"),
        ("foreign_permanent", "usa123456789012", "US123456789012"),
    ],
)
def test_other_documents_have_their_own_shapes(id_type: str, good: str, bad: str) -> None:
    assert parse(id_type, good) == Identity(id_type, good.upper())
    assert refusal(id_type, bad) == ("id_number", "bad_format")


def test_every_document_type_is_covered() -> None:
    assert set(ID_TYPES) == {"resident", "passport", "hk_macao_permit", "taiwan_permit", "foreign_permanent"}


def test_pseudonym_is_truncated_hmac_sha256_of_type_and_number() -> None:
    identity = parse("resident", WITH_X)
    expected = hmac.new(PEPPER, f"resident:{WITH_X}".encode(), hashlib.sha256).digest()[:16]
    assert pseudonym(identity, PEPPER) == expected
    assert len(expected) == 16


def test_pseudonym_depends_on_pepper_and_document_type() -> None:
    passport = parse("passport", "E12345678")
    permit = parse("taiwan_permit", "12345678")
    other_pepper = bytes(32)
    assert pseudonym(passport, PEPPER) != pseudonym(passport, other_pepper)
    assert pseudonym(parse("passport", "12345678"), PEPPER) != pseudonym(permit, PEPPER)


def test_the_raw_number_is_not_in_its_pseudonym() -> None:
    assert WITH_DIGIT.encode() not in pseudonym(parse("resident", WITH_DIGIT), PEPPER)


@pytest.mark.parametrize(
    ("number", "masked"),
    [(WITH_X, "11**************2X"), ("E12345678", "E1*****78"), ("1234", "****"), ("12345", "12*45")],
)
def test_masked_number_keeps_first_two_and_last_two(number: str, masked: str) -> None:
    assert mask_number(number) == masked


@pytest.mark.parametrize(("name", "masked"), [("张三", "张*"), ("欧阳娜娜", "欧*"), (" Smith ", "S*"), ("", "")])
def test_masked_name_is_surname_plus_star(name: str, masked: str) -> None:
    assert mask_name(name) == masked
