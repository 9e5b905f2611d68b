"""The test-registration code's `sub` is a per-token handle like the status token's: two codes of one
person share nothing, neither carries the pseudonym, and only sample registration opens it."""

from __future__ import annotations

import os
import time

import asyncpg
import orjson
import pytest

from app.clients import add_client
from app.http.appkeys import HANDLES, SIGNER
from app.http.handlers.samples import TEST_CODE_PURPOSE, TEST_CODE_TYP
from app.identity import Identity, pseudonym
from app.settings import Settings
from signing import BadHandle
from signing.encoding import b64url_decode, b64url_encode
from signing.handles import HandleCipher
from signing.qr import module_matrix
from tests.conftest import AppFactory
from tests.support import bearer
from tests.test_ingest_helpers import number
from tests.test_samples import issue_code


def claims_of(token: str) -> dict[str, object]:
    claims: dict[str, object] = orjson.loads(b64url_decode(token.split(".")[1]))
    return claims


async def test_two_codes_of_one_person_do_not_link_and_still_register_the_sample(
    make_client: AppFactory, db: asyncpg.Connection, client_keys: dict[str, str], settings: Settings
) -> None:
    collector = (await add_client(db, "collector", "agency", ("test",))).secret
    api = await make_client()
    subject = pseudonym(Identity("resident", number(1)), settings.pepper)
    first, second = [await issue_code(api, client_keys["citizen-backend"], 1) for _ in range(2)]

    subs = [str(claims_of(token)["sub"]) for token in (first, second)]
    assert subs[0] != subs[1]
    for token, sub in zip((first, second), subs, strict=True):
        assert b64url_encode(subject) not in token and subject.hex() not in token
        assert subject not in b64url_decode(sub)
        assert api.app[HANDLES].open(sub, int(str(claims_of(token)["iat"])), TEST_CODE_PURPOSE) == subject

    # The handle makes the code longer (294 characters, QR version 13, with the bare pseudonym); it stays
    # within version 15 at error correction M, like the status token.
    side = len(module_matrix(first)) - 8  # without the quiet zone
    assert (side - 17) // 4 <= 15

    for token, sample in ((first, "S-1"), (second, "S-2")):
        r = await api.post("/v1/samples", json={"token": token, "sample_id": sample}, headers=bearer(collector))
        assert r.status == 201, await r.text()
    stored = await db.fetch("SELECT pseudonym FROM samples ORDER BY sample_id")
    assert [bytes(r["pseudonym"]) for r in stored] == [subject, subject]


@pytest.mark.parametrize("sub", ["bare", "status_handle", "other_key"])
async def test_a_code_whose_handle_does_not_open_is_refused(
    make_client: AppFactory, db: asyncpg.Connection, settings: Settings, sub: str
) -> None:
    collector = (await add_client(db, "collector", "agency", ("test",))).secret
    api = await make_client()
    subject = pseudonym(Identity("resident", number(2)), settings.pepper)
    now = int(time.time())
    handles = {
        "bare": b64url_encode(subject),  # codes made before handles
        "status_handle": api.app[HANDLES].seal(subject, now),  # a status token's handle: another purpose
        "other_key": HandleCipher(os.urandom(32)).seal(subject, now, TEST_CODE_PURPOSE),
    }
    token = api.app[SIGNER].signer_for(TEST_CODE_TYP, 300).sign({"sub": handles[sub], "cid": "c1"}, now)
    r = await api.post("/v1/samples", json={"token": token, "sample_id": "S-9"}, headers=bearer(collector))
    assert r.status == 422, await r.text()
    problem = await r.json(content_type=None)
    assert (problem["field"], problem["code"]) == ("token", "bad_handle")
    assert await db.fetchval("SELECT count(*) FROM samples") == 0


def test_a_handle_opens_only_for_its_purpose() -> None:
    cipher = HandleCipher(os.urandom(16))
    subject = bytes(range(16))
    handle = cipher.seal(subject, 1_700_000_000, TEST_CODE_PURPOSE)
    assert cipher.open(handle, 1_700_000_000, TEST_CODE_PURPOSE) == subject
    with pytest.raises(BadHandle):
        cipher.open(handle, 1_700_000_000)
    with pytest.raises(BadHandle):
        cipher.open(cipher.seal(subject, 1_700_000_000), 1_700_000_000, TEST_CODE_PURPOSE)
