"""Names shared across packages have one home each; what must agree with it does."""

from __future__ import annotations

from datetime import date
from typing import get_args

from app.identity import ID_TYPES, Identity, pseudonym
from app.ingest.fields import Pseudonymiser
from app.ingest.kinds import KINDS
from app.rules.engine import REASON_CODES
from app.rules.records import SEVERITY
from app.rules.ruleset import load_ruleset
from app.scopes import RECORD_KINDS
from cache.entry import WORDS
from cache.keys import PSEUDONYM_BYTES
from signing.colours import COLOUR_LETTER, COLOURS, STATUS_LETTERS, Colour


def test_colours_their_type_and_their_letters_agree() -> None:
    assert get_args(Colour) == COLOURS
    assert tuple(COLOUR_LETTER) == COLOURS
    assert sorted(STATUS_LETTERS) == ["G", "R", "Y"]
    assert sorted(SEVERITY, key=SEVERITY.__getitem__) == list(COLOURS)


def test_every_record_kind_is_defined_for_ingestion() -> None:
    assert tuple(KINDS) == RECORD_KINDS


def test_pseudonyms_have_the_length_of_the_cache_keys() -> None:
    identity = Identity("resident", "11010519491231002X")
    pepper = bytes(range(32))
    assert len(pseudonym(identity, pepper)) == PSEUDONYM_BYTES
    digest, _, _ = Pseudonymiser(pepper, date.today())("resident", identity.number)
    assert digest == pseudonym(identity, pepper)


def test_the_cache_entry_has_a_one_byte_word_for_every_code_a_status_carries() -> None:
    # cache/ imports nothing of ours, so its word table repeats these; a code missing there would still
    # be stored (spelt out), only larger. Words are append-only: never reorder them.
    assert set(ID_TYPES) <= set(WORDS)
    assert set(REASON_CODES) <= set(WORDS)
    assert load_ruleset().version in WORDS
