"""POST /v1/verify against the real app: every kind of token, every refusal, and the recorded scan."""

from __future__ import annotations

import time
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from app.http.appkeys import HANDLES, PG, SCANS, SIGNER, STATUS_LOADER
from app.identity import Identity, mask_name, mask_number, pseudonym
from app.scan_refusals import OVERFLOW_CHECKPOINT, RefusalCounts
from app.scans import ScanWriter
from app.settings import Settings
from cache.connection import open_redis
from cache.keys import SCAN_STREAM
from cache.scan_stream import ScanStream
from signing.encoding import b64url_decode, b64url_encode
from signing.handles import HandleCipher
from signing.jws import TokenSigner
from signing.keys import generate_private_key
from signing.records import KeyRecord
from tests.conftest import AppFactory
from tests.support import bearer

Api = TestClient[web.Request, web.Application]
PROBLEM = "application/problem+json"
NUMBER = "500103199003071239"
CHECKPOINT = "cq-jiefangbei-gate-3"
HOUR = 3600


async def insert_person(
    db: asyncpg.Connection,
    pepper: bytes,
    *,
    colour: str = "green",
    reasons: tuple[str, ...] = (),
    doses: int = 0,
    complete: bool = False,
    last_test: tuple[int, str] | None = None,
) -> bytes:
    subject = pseudonym(Identity("resident", NUMBER), pepper)
    await db.execute(
        "INSERT INTO subjects (pseudonym, id_type, masked_name, masked_number) VALUES ($1, 'resident', $2, $3)",
        subject,
        mask_name("王五"),
        mask_number(NUMBER),
    )
    await db.execute(
        """INSERT INTO statuses (pseudonym, colour, reasons, vaccine_doses, vaccine_complete, last_test_at,
                                 last_test_result, ruleset, computed_at, valid_until)
           VALUES ($1, $2, $3, $4, $5, to_timestamp($6), $7, 'default-2022', now(), now() + interval '1 hour')""",
        subject,
        colour,
        list(reasons),
        doses,
        complete,
        None if last_test is None else last_test[0],
        None if last_test is None else last_test[1],
    )
    return subject


def signer(api: Api) -> TokenSigner:
    state = api.app[SIGNER].signer
    assert state is not None
    return state


def token_for(
    api: Api,
    subject: bytes,
    st: str = "G",
    *,
    now: int | None = None,
    vac: int = 1,
    negative_test_at: int | None = None,
) -> str:
    """A status token as /v1/status makes it: `sub` a handle sealed with the app's key."""
    now = int(time.time()) if now is None else now
    sub = api.app[HANDLES].seal(subject, now)
    return signer(api).sign_status(sub, st, 0, vac, now, ver=1, negative_test_at=negative_test_at)


async def post_verify(api: Api, key: str, body: object) -> Any:
    return await api.post(
        "/v1/verify", data=orjson.dumps(body), headers={**bearer(key), "Content-Type": "application/json"}
    )


async def verify_ok(api: Api, key: str, token: str, policy: dict[str, Any] | None = None) -> dict[str, Any]:
    request: dict[str, Any] = {"token": token, "checkpoint": CHECKPOINT}
    if policy is not None:
        request["policy"] = policy
    r = await post_verify(api, key, request)
    assert r.status == 200, await r.text()
    assert r.content_type == "application/json"
    body: dict[str, Any] = await r.json()
    scanned_at = body.pop("scanned_at")
    assert abs(scanned_at - time.time()) < 5
    assert (body.pop("scan_id"), body.pop("duplicate")) == (None, False)  # no scan_id sent (test_verify_scan_id)
    return body


def refused(reason: str) -> dict[str, Any]:
    return {
        "valid": False,
        "reason": reason,
        "issuer": None,
        "issuer_name": None,
        "checkpoint": CHECKPOINT,
        "token_colour": None,
        "current_colour": None,
        "token_version": None,
        "current_version": None,
        "name": None,
        "id_number": None,
        "vaccination": None,
        "last_test": None,
        "meets_policy": None,
        "failed_rules": None,
    }


async def drain_scans(api: Api, settings: Settings) -> int:
    redis = open_redis(settings.redis_url)
    try:
        writer = ScanWriter(ScanStream(redis), api.app[PG], consumer="test")
        await writer.stream.ensure_group()
        return await writer.drain_once(block_ms=0)
    finally:
        await redis.aclose()


async def scan_rows(db: asyncpg.Connection) -> list[dict[str, Any]]:
    rows = await db.fetch(
        """SELECT extract(epoch FROM scanned_at)::bigint AS at, checkpoint, client_id, pseudonym, valid, reason,
                  token_colour, current_colour
           FROM scan_events ORDER BY scanned_at, stream_id"""
    )
    return [dict(r) for r in rows]


async def scanner_id(db: asyncpg.Connection) -> int:
    value = await db.fetchval("SELECT id FROM api_clients WHERE name = 'test-scanner'")
    assert isinstance(value, int)
    return value


# --- valid tokens and the recorded scan ------------------------------------------------------------------


async def test_a_valid_token_shows_both_colours_and_the_masked_person(
    api: Api, db: asyncpg.Connection, settings: Settings, client_keys: dict[str, str]
) -> None:
    tested = int(time.time()) - 26 * HOUR
    subject = await insert_person(
        db,
        settings.pepper,
        colour="red",
        reasons=("close_contact",),
        doses=3,
        complete=True,
        last_test=(tested, "negative"),
    )
    body = await verify_ok(api, client_keys["scanner"], token_for(api, subject, "G"))
    assert body == {
        "valid": True,
        "reason": "ok",
        "issuer": "healthcode",
        "issuer_name": None,
        "checkpoint": CHECKPOINT,
        "token_colour": "green",
        "current_colour": "red",
        "token_version": 1,
        "current_version": 0,
        "name": "王*",
        "id_number": "50**************39",
        "vaccination": {"doses": 3, "complete": True},
        "last_test": {"sampled_at": tested, "result": "negative", "hours_ago": 26},
        "meets_policy": None,
        "failed_rules": None,
    }


async def test_a_token_from_the_status_endpoint_verifies(
    api: Api, db: asyncpg.Connection, settings: Settings, client_keys: dict[str, str]
) -> None:
    await insert_person(db, settings.pepper, colour="yellow", reasons=("secondary_contact",))
    r = await api.post("/v1/status", json={"id_number": NUMBER}, headers=bearer(client_keys["citizen-backend"]))
    assert r.status == 200, await r.text()
    token = (await r.json())["token"]
    for _ in range(3):
        body = await verify_ok(api, client_keys["scanner"], token)
        assert (body["valid"], body["token_colour"], body["current_colour"]) == (True, "yellow", "yellow")
    # The status query filled Redis; verifying reads the current colour from there, never from Postgres.
    assert api.app[STATUS_LOADER].reads == 1


async def test_a_valid_token_for_someone_no_longer_known(
    api: Api, db: asyncpg.Connection, settings: Settings, client_keys: dict[str, str]
) -> None:
    subject = pseudonym(Identity("resident", NUMBER), settings.pepper)
    body = await verify_ok(api, client_keys["scanner"], token_for(api, subject, "Y"))
    assert body == {
        **refused("ok"),
        "valid": True,
        "issuer": "healthcode",
        "token_colour": "yellow",
        "token_version": 1,
    }


async def test_the_scan_is_recorded_against_the_checkpoint(
    api: Api, db: asyncpg.Connection, settings: Settings, client_keys: dict[str, str]
) -> None:
    subject = await insert_person(db, settings.pepper, colour="yellow", reasons=("secondary_contact",))
    key = client_keys["scanner"]
    await verify_ok(api, key, token_for(api, subject, "G"))
    assert await scan_rows(db) == []  # on the stream, not yet in Postgres
    assert await drain_scans(api, settings) == 1
    rows = await scan_rows(db)
    for row in rows:
        assert abs(row.pop("at") - time.time()) < 5
    assert rows == [
        {
            "checkpoint": CHECKPOINT,
            "client_id": await scanner_id(db),
            "pseudonym": subject,
            "valid": True,
            "reason": "ok",
            "token_colour": "green",
            "current_colour": "yellow",
        }
    ]


async def refusal_rows(db: asyncpg.Connection) -> list[tuple[int, str, int, str, int]]:
    rows = await db.fetch(
        """SELECT extract(epoch FROM hour)::bigint AS hour, checkpoint, client_id, reason, scans
           FROM scan_refusals ORDER BY checkpoint, reason"""
    )
    return [(r["hour"], r["checkpoint"], r["client_id"], r["reason"], r["scans"]) for r in rows]


async def test_refused_tokens_are_counted_per_checkpoint_not_streamed(
    api: Api, db: asyncpg.Connection, redis: Redis, client_keys: dict[str, str]
) -> None:
    key = client_keys["scanner"]
    expired = token_for(api, bytes(16), now=int(time.time()) - 3600)
    for token, checkpoint in [("junk", "gate-1")] * 50 + [("junk", "gate-2"), (expired, "gate-1")]:
        r = await post_verify(api, key, {"token": token, "checkpoint": checkpoint})
        assert r.status == 200, await r.text()
    # Junk adds nothing to the capped stream, so it cannot push real scans out of it.
    assert await redis.xlen(SCAN_STREAM) == 0
    recorder = api.app[SCANS]
    assert (recorder.refusals.counted, recorder.refusals.unflushed) == (52, 52)

    assert await recorder.refusals.flush(api.app[PG]) == 52
    hour = int(time.time()) // 3600 * 3600
    client_id = await scanner_id(db)
    assert await refusal_rows(db) == [
        (hour, "gate-1", client_id, "expired", 1),
        (hour, "gate-1", client_id, "malformed", 50),
        (hour, "gate-2", client_id, "malformed", 1),
    ]
    await post_verify(api, key, {"token": "junk", "checkpoint": "gate-1"})
    assert await recorder.refusals.flush(api.app[PG]) == 1  # added to the row, not a second row
    assert (await refusal_rows(db))[1] == (hour, "gate-1", client_id, "malformed", 51)
    assert await scan_rows(db) == []


async def test_refused_counts_survive_a_failed_flush(
    api: Api, db: asyncpg.Connection, settings: Settings, client_keys: dict[str, str]
) -> None:
    await post_verify(api, client_keys["scanner"], {"token": "junk", "checkpoint": "gate-1"})
    refusals = api.app[SCANS].refusals
    broken = await asyncpg.connect(settings.database_url, server_settings={"search_path": "nowhere"})
    try:
        with pytest.raises(asyncpg.UndefinedTableError):
            await refusals.flush(broken)
    finally:
        await broken.close()
    assert refusals.unflushed == 1
    assert await refusals.flush(api.app[PG]) == 1
    assert [row[-1] for row in await refusal_rows(db)] == [1]


def test_refusal_keys_are_capped() -> None:
    counts = RefusalCounts(max_keys=2)
    for checkpoint in ("a", "b", "c", "d", "a"):
        counts.add(7205, checkpoint, 1, "malformed")
    assert counts.counted == 5
    assert dict(counts._counts) == {
        (7200, "a", 1, "malformed"): 2,
        (7200, "b", 1, "malformed"): 1,
        (7200, OVERFLOW_CHECKPOINT, 1, "malformed"): 2,
    }


async def test_redis_down_writes_the_scan_straight_to_postgres(
    make_client: AppFactory, db: asyncpg.Connection, settings: Settings, client_keys: dict[str, str]
) -> None:
    subject = await insert_person(db, settings.pepper, colour="red", reasons=("confirmed",))
    api = await make_client(redis_url="redis://127.0.0.1:1/0")
    body = await verify_ok(api, client_keys["scanner"], token_for(api, subject, "R"))
    assert (body["valid"], body["token_colour"], body["current_colour"]) == (True, "red", "red")
    assert api.app[STATUS_LOADER].reads == 1
    rows = await scan_rows(db)
    assert [(r["checkpoint"], r["pseudonym"], r["valid"], r["reason"], r["current_colour"]) for r in rows] == [
        (CHECKPOINT, subject, True, "ok", "red")
    ]


# --- tokens refused (200, valid false, with the reason) --------------------------------------------------


def _resign(token: str, header: dict[str, Any] | None = None, claims: dict[str, Any] | None = None) -> str:
    h, p, s = token.split(".")
    if header is not None:
        h = b64url_encode(orjson.dumps({**orjson.loads(b64url_decode(h)), **header}))
    if claims is not None:
        p = b64url_encode(orjson.dumps({**orjson.loads(b64url_decode(p)), **claims}))
    return f"{h}.{p}.{s}"


async def test_an_expired_token_is_refused(api: Api, settings: Settings, client_keys: dict[str, str]) -> None:
    subject = pseudonym(Identity("resident", NUMBER), settings.pepper)
    token = token_for(api, subject, now=int(time.time()) - settings.token_ttl_seconds - 1)
    assert await verify_ok(api, client_keys["scanner"], token) == refused("expired")


async def test_a_token_past_a_short_ttl_is_refused(make_client: AppFactory, client_keys: dict[str, str]) -> None:
    api = await make_client(token_ttl_seconds=30)
    token = token_for(api, bytes(16), now=int(time.time()) - 31)
    assert await verify_ok(api, client_keys["scanner"], token) == refused("expired")


async def test_a_token_from_the_future_is_not_yet_valid(api: Api, client_keys: dict[str, str]) -> None:
    token = token_for(api, bytes(16), now=int(time.time()) + 120)
    assert await verify_ok(api, client_keys["scanner"], token) == refused("not_yet_valid")


async def test_a_tampered_payload_is_a_bad_signature(api: Api, client_keys: dict[str, str]) -> None:
    token = _resign(token_for(api, bytes(16), "R"), claims={"st": "G"})
    assert await verify_ok(api, client_keys["scanner"], token) == refused("bad_signature")


async def test_a_swapped_signature_is_a_bad_signature(api: Api, client_keys: dict[str, str]) -> None:
    mine = token_for(api, bytes(16), "R")
    other = token_for(api, bytes(range(16)), "G")
    swapped = ".".join(mine.split(".")[:2] + other.split(".")[2:])
    assert await verify_ok(api, client_keys["scanner"], swapped) == refused("bad_signature")


async def test_a_damaged_signature_is_a_bad_signature(api: Api, client_keys: dict[str, str]) -> None:
    h, p, s = token_for(api, bytes(16)).split(".")
    flipped = bytearray(b64url_decode(s))
    flipped[10] ^= 0x01
    assert await verify_ok(api, client_keys["scanner"], f"{h}.{p}.{b64url_encode(bytes(flipped))}") == refused(
        "bad_signature"
    )


async def test_a_token_signed_by_an_unknown_key_is_refused(api: Api, client_keys: dict[str, str]) -> None:
    stranger = TokenSigner(KeyRecord.from_private_key(generate_private_key()), "healthcode", 300)
    token = stranger.sign_status(b64url_encode(bytes(16)), "G", 0, 1, int(time.time()), ver=1)
    assert await verify_ok(api, client_keys["scanner"], token) == refused("unknown_key")


async def test_a_stranger_using_our_kid_is_a_bad_signature(api: Api, client_keys: dict[str, str]) -> None:
    record = KeyRecord.from_private_key(generate_private_key())
    forged = KeyRecord(
        kid=signer(api).kid,
        thumbprint=record.thumbprint,
        alg=record.alg,
        public_jwk={**record.public_jwk, "kid": signer(api).kid},
        state="active",
        private_key=record.private_key,
    )
    token = TokenSigner(forged, "healthcode", 300).sign_status(
        b64url_encode(bytes(16)), "G", 0, 1, int(time.time()), ver=1
    )
    assert await verify_ok(api, client_keys["scanner"], token) == refused("bad_signature")


async def test_alg_none_is_refused(api: Api, client_keys: dict[str, str]) -> None:
    h, p, _ = _resign(token_for(api, bytes(16)), header={"alg": "none"}).split(".")
    for token in (f"{h}.{p}.", f"{h}.{p}"):
        body = await verify_ok(api, client_keys["scanner"], token)
        assert body["valid"] is False
        assert body["reason"] in {"bad_signature", "malformed"}
        assert body == refused(body["reason"])
    assert (await verify_ok(api, client_keys["scanner"], f"{h}.{p}."))["reason"] == "bad_signature"


async def test_a_high_s_spelling_of_a_valid_token_is_a_bad_signature(
    api: Api, db: asyncpg.Connection, settings: Settings, client_keys: dict[str, str]
) -> None:
    order = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
    token = token_for(api, await insert_person(db, settings.pepper))
    head, _, sig = token.rpartition(".")
    raw = b64url_decode(sig)
    flipped = f"{head}.{b64url_encode(raw[:32] + (order - int.from_bytes(raw[32:], 'big')).to_bytes(32, 'big'))}"
    assert (await verify_ok(api, client_keys["scanner"], token))["valid"] is True
    assert await verify_ok(api, client_keys["scanner"], flipped) == refused("bad_signature")


async def test_a_handle_that_does_not_open_is_a_bad_handle(
    api: Api, db: asyncpg.Connection, settings: Settings, client_keys: dict[str, str]
) -> None:
    subject = await insert_person(db, settings.pepper)
    now = int(time.time())
    # Signed by our key, so only the handle is wrong: another deployment's handle key, a bare pseudonym
    # (the `sub` of tokens before handles), and a handle moved from a token of another second.
    foreign = HandleCipher(bytes(32)).seal(subject, now)
    moved = api.app[HANDLES].seal(subject, now - 1)
    key = client_keys["scanner"]
    for sub in (foreign, b64url_encode(subject), moved):
        token = signer(api).sign_status(sub, "G", 0, 1, now, ver=1)
        assert await verify_ok(api, key, token) == refused("bad_handle")
    assert await verify_ok(api, key, token, {"max_test_age_hours": 24}) == {
        **refused("bad_handle"),
        "meets_policy": False,
        "failed_rules": ["valid_token"],
    }
    recorder = api.app[SCANS]
    assert await recorder.refusals.flush(api.app[PG]) == 4
    assert [(r[3], r[4]) for r in await refusal_rows(db)] == [("bad_handle", 4)]


# --- the checkpoint's policy -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "meets", "failed"),
    [
        ({}, True, []),
        ({"max_test_age_hours": 48}, True, []),
        ({"max_test_age_hours": 24}, False, ["test_age"]),
        ({"require_vaccination": False}, True, []),
        ({"require_vaccination": True}, False, ["vaccination"]),
        ({"max_test_age_hours": 24, "require_vaccination": True}, False, ["test_age", "vaccination"]),
    ],
)
async def test_the_policy_is_applied_to_the_current_status(
    api: Api,
    db: asyncpg.Connection,
    settings: Settings,
    client_keys: dict[str, str],
    policy: dict[str, Any],
    meets: bool,
    failed: list[str],
) -> None:
    now = int(time.time())
    subject = await insert_person(db, settings.pepper, doses=1, last_test=(now - 30 * HOUR, "negative"))
    # The token was issued before the test and claims a complete course: the current status wins online.
    token = token_for(api, subject, vac=1, negative_test_at=None)
    body = await verify_ok(api, client_keys["scanner"], token, policy)
    assert (body["valid"], body["meets_policy"], body["failed_rules"]) == (True, meets, failed)
    assert body["last_test"] == {"sampled_at": now - 30 * HOUR, "result": "negative", "hours_ago": 30}
    assert body["vaccination"] == {"doses": 1, "complete": False}


async def test_a_positive_last_test_never_meets_a_test_age_policy(
    api: Api, db: asyncpg.Connection, settings: Settings, client_keys: dict[str, str]
) -> None:
    now = int(time.time())
    subject = await insert_person(db, settings.pepper, colour="red", last_test=(now - HOUR, "positive"))
    body = await verify_ok(api, client_keys["scanner"], token_for(api, subject, "R"), {"max_test_age_hours": 72})
    assert (body["meets_policy"], body["failed_rules"]) == (False, ["test_age"])
    assert body["last_test"] == {"sampled_at": now - HOUR, "result": "positive", "hours_ago": 1}


async def test_without_a_current_status_the_policy_reads_the_token(
    api: Api, settings: Settings, client_keys: dict[str, str]
) -> None:
    subject = pseudonym(Identity("resident", NUMBER), settings.pepper)
    now = int(time.time())
    key = client_keys["scanner"]
    fresh = token_for(api, subject, vac=1, negative_test_at=now - 10 * HOUR)
    body = await verify_ok(api, key, fresh, {"max_test_age_hours": 24, "require_vaccination": True})
    assert (body["valid"], body["current_colour"], body["meets_policy"], body["failed_rules"]) == (True, None, True, [])
    stale = token_for(api, subject, vac=0, negative_test_at=now - 25 * HOUR)
    body = await verify_ok(api, key, stale, {"max_test_age_hours": 24, "require_vaccination": True})
    assert (body["meets_policy"], body["failed_rules"]) == (False, ["test_age", "vaccination"])


async def test_an_invalid_token_never_meets_a_policy(api: Api, client_keys: dict[str, str]) -> None:
    body = await verify_ok(api, client_keys["scanner"], "junk", {"require_vaccination": False})
    assert body == {**refused("malformed"), "meets_policy": False, "failed_rules": ["valid_token"]}


@pytest.mark.parametrize(
    ("policy", "field", "code", "detail"),
    [
        ("48h", "policy", "wrong_type", "policy must be an object"),
        ([48], "policy", "wrong_type", "policy must be an object"),
        (
            {"max_test_age": 48},
            "policy.max_test_age",
            "unknown_member",
            "policy takes only max_test_age_hours, require_vaccination and accept_peer_codes",
        ),
        (None, "policy", "wrong_type", "policy must be an object"),
        *(
            (
                {"max_test_age_hours": hours},
                "policy.max_test_age_hours",
                "out_of_range" if type(hours) is int else "wrong_type",
                "max_test_age_hours must be a whole number of hours from 1 to 720",
            )
            for hours in (0, 721, -24, 1.5, "48", True, None)
        ),
        (
            {"require_vaccination": "yes"},
            "policy.require_vaccination",
            "wrong_type",
            "require_vaccination must be true or false",
        ),
        (
            {"require_vaccination": None},
            "policy.require_vaccination",
            "wrong_type",
            "require_vaccination must be true or false",
        ),
        (
            {"require_vaccination": 1},
            "policy.require_vaccination",
            "wrong_type",
            "require_vaccination must be true or false",
        ),
    ],
)
async def test_a_malformed_policy_is_422(
    api: Api, settings: Settings, client_keys: dict[str, str], policy: object, field: str, code: str, detail: str
) -> None:
    r = await post_verify(api, client_keys["scanner"], {"token": "a.b.c", "checkpoint": CHECKPOINT, "policy": policy})
    assert r.status == 422, await r.text()
    assert await r.json(content_type=PROBLEM) == invalid_field(field, code, detail)
    assert await drain_scans(api, settings) == 0
    assert api.app[SCANS].refusals.counted == 0  # a refused request is no scan


@pytest.mark.parametrize(
    "token",
    ["not-a-token", "a.b.c", "....", "eyJhbGciOiJFUzI1NiJ9.e30.AAAA", "x" * 2048],
)
async def test_malformed_tokens_are_refused(api: Api, client_keys: dict[str, str], token: str) -> None:
    assert await verify_ok(api, client_keys["scanner"], token) == refused("malformed")


# --- requests refused (problem+json) ---------------------------------------------------------------------


def invalid_field(field: str, code: str, detail: str) -> dict[str, Any]:
    return {
        "type": "/problems/invalid-field",
        "title": "A field of the request is invalid",
        "status": 422,
        "detail": detail,
        "instance": "/v1/verify",
        "field": field,
        "code": code,
    }


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"checkpoint": CHECKPOINT}, invalid_field("token", "missing", "token is required")),
        ({"token": None, "checkpoint": CHECKPOINT}, invalid_field("token", "missing", "token is required")),
        (
            {"token": "", "checkpoint": CHECKPOINT},
            invalid_field("token", "wrong_type", "token must be a non-empty string"),
        ),
        (
            {"token": 12, "checkpoint": CHECKPOINT},
            invalid_field("token", "wrong_type", "token must be a non-empty string"),
        ),
        (
            {"token": "x" * 2049, "checkpoint": CHECKPOINT},
            invalid_field("token", "too_long", "token must be at most 2048 characters"),
        ),
        ({"token": "a.b.c"}, invalid_field("checkpoint", "missing", "checkpoint is required")),
        (
            {"token": "a.b.c", "checkpoint": " "},
            invalid_field("checkpoint", "wrong_type", "checkpoint must be a non-empty string"),
        ),
        (
            {"token": "a.b.c", "checkpoint": "c" * 65},
            invalid_field("checkpoint", "too_long", "checkpoint must be at most 64 characters"),
        ),
    ],
)
async def test_missing_or_wrong_fields_are_422(
    api: Api, settings: Settings, client_keys: dict[str, str], body: dict[str, Any], problem: dict[str, Any]
) -> None:
    r = await post_verify(api, client_keys["scanner"], body)
    assert r.status == 422, await r.text()
    assert r.content_type == PROBLEM
    assert await r.json(content_type=PROBLEM) == problem
    assert await drain_scans(api, settings) == 0  # nothing recorded for a request that was refused


@pytest.mark.parametrize(
    ("headers", "detail"),
    [
        ({}, "send the client key as 'Authorization: Bearer <key>'"),
        ({"Authorization": "Bearer hc_wrong"}, "the client key is unknown or revoked"),
    ],
)
async def test_missing_or_wrong_key_is_401(api: Api, headers: dict[str, str], detail: str) -> None:
    r = await api.post("/v1/verify", json={"token": "a.b.c", "checkpoint": CHECKPOINT}, headers=headers)
    assert r.status == 401, await r.text()
    assert r.headers["WWW-Authenticate"] == 'Bearer realm="healthcode"'
    assert await r.json(content_type=PROBLEM) == {
        "type": "/problems/unauthenticated",
        "title": "A valid client key is required",
        "status": 401,
        "detail": detail,
        "instance": "/v1/verify",
    }


@pytest.mark.parametrize("kind", ["citizen-backend", "agency"])
async def test_a_non_scanner_key_is_403(api: Api, client_keys: dict[str, str], kind: str) -> None:
    r = await post_verify(api, client_keys[kind], {"token": "a.b.c", "checkpoint": CHECKPOINT})
    assert r.status == 403, await r.text()
    assert await r.json(content_type=PROBLEM) == {
        "type": "/problems/forbidden",
        "title": "This client may not use this endpoint",
        "status": 403,
        "detail": f"a {kind} client may not call this endpoint; it needs a scanner client",
        "instance": "/v1/verify",
    }


async def test_wrong_content_type_is_415(api: Api, client_keys: dict[str, str]) -> None:
    r = await api.post(
        "/v1/verify", data="token=a.b.c", headers={**bearer(client_keys["scanner"]), "Content-Type": "text/plain"}
    )
    assert r.status == 415, await r.text()
    assert (await r.json(content_type=PROBLEM))["type"] == "/problems/unsupported-media-type"


async def test_invalid_json_is_400(api: Api, client_keys: dict[str, str]) -> None:
    r = await api.post(
        "/v1/verify", data=b"{token", headers={**bearer(client_keys["scanner"]), "Content-Type": "application/json"}
    )
    assert r.status == 400, await r.text()
    assert (await r.json(content_type=PROBLEM))["type"] == "/problems/malformed-request"


async def test_oversized_body_is_413(make_client: AppFactory, client_keys: dict[str, str]) -> None:
    api = await make_client(max_body_bytes=1024)
    r = await post_verify(api, client_keys["scanner"], {"token": "x" * 1500, "checkpoint": CHECKPOINT})
    assert r.status == 413, await r.text()
    body = await r.json(content_type=PROBLEM)
    assert (body["type"], body["status"]) == ("/problems/payload-too-large", 413)


async def test_wrong_method_is_405(api: Api) -> None:
    r = await api.get("/v1/verify")
    assert r.status == 405, await r.text()
    assert r.headers["Allow"] == "POST"
    assert await r.json(content_type=PROBLEM) == {
        "type": "/problems/method-not-allowed",
        "title": "Method not allowed",
        "status": 405,
        "detail": "GET is not allowed on /v1/verify",
        "instance": "/v1/verify",
    }
