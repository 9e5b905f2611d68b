"""POST /v1/status against the real app, Postgres and Redis: answers, tokens, every refusal, the hot path."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import jwt
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from app.clients import revoke_client
from app.dev.demo import load_population
from app.dev.population import synthetic_people
from app.http.appkeys import CLIENTS, PG, STATUS_CACHE, STATUS_LOADER
from app.identity import Identity, mask_name, mask_number, pseudonym
from app.rules.ruleset import load_ruleset
from app.settings import Settings
from app.statuses.publish import StatusPublisher
from cache.status_writer import StatusWriter
from signing.encoding import b64url_encode
from signing.handles import HandleCipher
from tests.conftest import AppFactory
from tests.support import bearer

PROBLEM = "application/problem+json"
NUMBER = "500103199003071239"
NUMBER_X = "11010519491231002X"
UNKNOWN = "440305200002294564"
HOUR = 3600

Api = TestClient[web.Request, web.Application]


async def insert_status(
    db: asyncpg.Connection,
    pepper: bytes,
    number: str,
    *,
    id_type: str = "resident",
    name: str = "张三",
    colour: str = "green",
    reasons: tuple[str, ...] = (),
    popup: bool = False,
    doses: int = 2,
    complete: bool = True,
    last_test: tuple[int, str] | None = None,
    computed_at: int | None = None,
    valid_until: int | None = None,
    version: int = 0,
) -> bytes:
    """A subject and its computed status, written straight into Postgres; returns the pseudonym."""
    now = int(time.time())
    subject = pseudonym(Identity(id_type, number), pepper)
    await db.execute(
        "INSERT INTO subjects (pseudonym, id_type, masked_name, masked_number) VALUES ($1, $2, $3, $4)",
        subject,
        id_type,
        mask_name(name),
        mask_number(number),
    )
    await db.execute(
        """INSERT INTO statuses (pseudonym, colour, reasons, popup, vaccine_doses, vaccine_complete,
               last_test_at, last_test_result, ruleset, computed_at, valid_until, version)
           VALUES ($1, $2, $3, $4, $5, $6, to_timestamp($7), $8, 'default-2022', to_timestamp($9),
                   to_timestamp($10), $11)""",
        subject,
        colour,
        list(reasons),
        popup,
        doses,
        complete,
        None if last_test is None else last_test[0],
        None if last_test is None else last_test[1],
        computed_at if computed_at is not None else now - 60,
        valid_until if valid_until is not None else now + HOUR,
        version,
    )
    return subject


async def post_status(api: Api, key: str, body: object) -> Any:
    return await api.post(
        "/v1/status", data=orjson.dumps(body), headers={**bearer(key), "Content-Type": "application/json"}
    )


async def public_keys(api: Api) -> dict[str, jwt.PyJWK]:
    r = await api.get("/.well-known/jwks.json")
    assert r.status == 200, await r.text()
    return {k["kid"]: jwt.PyJWK(k) for k in (await r.json(content_type=None))["keys"]}


async def pyjwt_claims(api: Api, token: str) -> dict[str, Any]:
    """Verify a token with PyJWT (an independent JOSE implementation) and the published key."""
    header = jwt.get_unverified_header(token)
    key = (await public_keys(api))[header["kid"]]
    claims: dict[str, Any] = jwt.decode(
        token, key=key, algorithms=["ES256", "EdDSA"], issuer="healthcode", options={"require": ["exp", "iat"]}
    )
    return claims


def handle_subject(settings: Settings, claims: dict[str, Any]) -> bytes:
    """The pseudonym inside a token's `sub`, opened as online verification opens it."""
    return HandleCipher(settings.handle_key).open(claims["sub"], claims["iat"])


async def token_subject(api: Api, settings: Settings, body: dict[str, Any]) -> bytes:
    return handle_subject(settings, await pyjwt_claims(api, body["token"]))


async def assert_problem(r: Any, status: int, body: dict[str, Any]) -> dict[str, Any]:
    assert r.status == status, await r.text()
    assert r.content_type == PROBLEM
    payload: dict[str, Any] = await r.json(content_type=PROBLEM)
    assert payload == body
    return payload


# --- success ---------------------------------------------------------------------------------------------


async def test_status_answers_everything_and_a_token_pyjwt_verifies(
    api: Api, db: asyncpg.Connection, settings: Settings, client_keys: dict[str, str], signing_key: str
) -> None:
    now = int(time.time())
    tested = now - 20 * HOUR
    subject = await insert_status(
        db,
        settings.pepper,
        NUMBER,
        name="李四",
        colour="yellow",
        reasons=("risk_area_arrival",),
        popup=True,
        doses=3,
        complete=True,
        last_test=(tested, "negative"),
        computed_at=now - 30,
        valid_until=now + 2 * HOUR,
        version=3,
    )
    r = await post_status(api, client_keys["citizen-backend"], {"id_type": "resident", "id_number": NUMBER})
    assert r.status == 200, await r.text()
    assert r.content_type == "application/json"
    body = await r.json()
    token = body.pop("token")
    expires_at = body.pop("token_expires_at")
    assert body == {
        "id_type": "resident",
        "name": "李*",
        "id_number": "50**************39",
        "colour": "yellow",
        "reasons": ["risk_area_arrival"],
        "popup": True,
        "vaccination": {"doses": 3, "complete": True},
        "last_test": {"sampled_at": tested, "result": "negative", "hours_ago": 20},
        "ruleset": "default-2022",
        "version": 3,
        "computed_at": now - 30,
        "valid_until": now + 2 * HOUR,
    }
    claims = await pyjwt_claims(api, token)
    assert claims == {
        "iss": "healthcode",
        "sub": claims["sub"],
        "st": "Y",
        "pop": 1,
        "vac": 1,
        "nt": tested,
        "ver": 3,
        "iat": claims["iat"],
        "exp": claims["iat"] + settings.token_ttl_seconds,
    }
    assert handle_subject(settings, claims) == subject
    assert now <= claims["iat"] <= int(time.time())
    assert expires_at == claims["exp"]
    assert jwt.get_unverified_header(token) == {"alg": "ES256", "kid": signing_key[:8], "typ": "hcs+jwt"}
    # Neither the number nor the pseudonym, in any spelling, is in the answer or its token.
    text = await r.text()
    for secret in (NUMBER, b64url_encode(subject), subject.hex()):
        assert secret not in text and secret not in claims["sub"]


async def test_every_token_of_one_person_has_another_sub(
    api: Api, db: asyncpg.Connection, settings: Settings, client_keys: dict[str, str]
) -> None:
    subject = await insert_status(db, settings.pepper, NUMBER)
    key = client_keys["citizen-backend"]
    claims = []
    for _ in range(5):
        r = await post_status(api, key, {"id_number": NUMBER})
        assert r.status == 200, await r.text()
        claims.append(await pyjwt_claims(api, (await r.json())["token"]))
    # Five tokens, most of them issued within one second: five unrelated handles, each opening to the person.
    assert len({c["sub"] for c in claims}) == 5
    assert {handle_subject(settings, c) for c in claims} == {subject}


@pytest.mark.parametrize(
    ("last_test", "nt"),
    [(None, None), ((-30 * HOUR, "negative"), -30 * HOUR), ((-2 * HOUR, "positive"), None)],
)
async def test_nt_is_the_last_test_only_when_negative(
    api: Api,
    db: asyncpg.Connection,
    settings: Settings,
    client_keys: dict[str, str],
    last_test: tuple[int, str] | None,
    nt: int | None,
) -> None:
    now = int(time.time())
    at = None if last_test is None else (now + last_test[0], last_test[1])
    await insert_status(
        db, settings.pepper, NUMBER, last_test=at, colour="red" if at and at[1] == "positive" else "green"
    )
    r = await post_status(api, client_keys["citizen-backend"], {"id_number": NUMBER})
    assert r.status == 200, await r.text()
    claims = await pyjwt_claims(api, (await r.json())["token"])
    assert claims.get("nt") == (None if nt is None else now + nt)


async def test_green_without_a_test_and_default_id_type(
    api: Api, db: asyncpg.Connection, settings: Settings, client_keys: dict[str, str]
) -> None:
    await insert_status(db, settings.pepper, NUMBER, doses=0, complete=False)
    r = await post_status(api, client_keys["citizen-backend"], {"id_number": NUMBER})
    assert r.status == 200, await r.text()
    body = await r.json()
    assert (body["colour"], body["reasons"], body["popup"], body["last_test"]) == ("green", [], False, None)
    assert body["vaccination"] == {"doses": 0, "complete": False}
    claims = await pyjwt_claims(api, body["token"])
    assert (claims["st"], claims["pop"], claims["vac"]) == ("G", 0, 0)


async def test_red_for_a_passport_holder(
    api: Api, db: asyncpg.Connection, settings: Settings, client_keys: dict[str, str]
) -> None:
    subject = await insert_status(
        db, settings.pepper, "E12345678", id_type="passport", name="Smith", colour="red", reasons=("confirmed",)
    )
    r = await post_status(api, client_keys["citizen-backend"], {"id_type": "passport", "id_number": "e12345678"})
    assert r.status == 200, await r.text()
    body = await r.json()
    assert (body["id_type"], body["name"], body["id_number"]) == ("passport", "S*", "E1*****78")
    assert await token_subject(api, settings, body) == subject
    assert (await pyjwt_claims(api, body["token"]))["st"] == "R"


async def test_lower_case_x_finds_the_same_person(
    api: Api, db: asyncpg.Connection, settings: Settings, client_keys: dict[str, str]
) -> None:
    subject = await insert_status(db, settings.pepper, NUMBER_X)
    key = client_keys["citizen-backend"]
    upper = await post_status(api, key, {"id_type": "resident", "id_number": NUMBER_X})
    lower = await post_status(api, key, {"id_type": "resident", "id_number": NUMBER_X.lower()})
    assert upper.status == lower.status == 200, await lower.text()
    assert await token_subject(api, settings, await upper.json()) == subject
    assert await token_subject(api, settings, await lower.json()) == subject


# Demo situations and what the default rule set makes of them.
SITUATIONS = {
    "vaccinated_negative": ("green", [], False),
    "secondary_contact": ("yellow", ["secondary_contact"], False),
    "arrival_pending": ("yellow", ["risk_area_arrival"], True),
    "close_contact": ("red", ["close_contact"], False),
    "quarantine": ("red", ["quarantine"], False),
    "positive_test": ("red", ["positive_test"], False),
    "confirmed": ("red", ["confirmed"], False),
}


async def test_people_computed_from_records_get_the_rule_sets_answer(
    api: Api, db: asyncpg.Connection, redis: Redis, settings: Settings, client_keys: dict[str, str]
) -> None:
    people = list(synthetic_people(200, 7))
    now = int(time.time())
    pseudonyms = await load_population(db, people, settings.pepper, now)
    await StatusPublisher(StatusWriter(redis), load_ruleset(settings.ruleset)).recompute(db, pseudonyms, now)
    first = {p.situation: p for p in reversed(people)}
    for situation, (colour, reasons, popup) in SITUATIONS.items():
        person = first[situation]
        r = await post_status(api, client_keys["citizen-backend"], {"id_number": person.number})
        assert r.status == 200, await r.text()
        body = await r.json()
        assert (body["colour"], body["reasons"], body["popup"]) == (colour, reasons, popup), situation
        assert body["name"] == mask_name(person.name)
        claims = await pyjwt_claims(api, body["token"])
        assert (claims["st"], claims["pop"]) == (colour[0].upper(), int(popup))


async def test_a_stored_status_past_valid_until_is_recomputed(
    api: Api, db: asyncpg.Connection, settings: Settings, client_keys: dict[str, str]
) -> None:
    now = int(time.time())
    subject = await insert_status(
        db, settings.pepper, NUMBER, colour="red", reasons=("quarantine",), valid_until=now - 1
    )
    r = await post_status(api, client_keys["citizen-backend"], {"id_number": NUMBER})
    assert r.status == 200, await r.text()
    body = await r.json()
    # No records: the rules say green, and the stored row is brought up to date.
    assert (body["colour"], body["reasons"]) == ("green", [])
    assert body["valid_until"] > now
    assert await db.fetchval("SELECT colour FROM statuses WHERE pseudonym = $1", subject) == "green"


# --- refusals --------------------------------------------------------------------------------------------


def invalid_identity(field: str, code: str, detail: str) -> dict[str, Any]:
    return {
        "type": "/problems/invalid-identity",
        "title": "The identity document number is invalid",
        "status": 422,
        "detail": detail,
        "instance": "/v1/status",
        "field": field,
        "code": code,
    }


@pytest.mark.parametrize(
    ("body", "field", "code", "detail"),
    [
        (
            {"id_number": NUMBER[:-1] + "0"},
            "id_number",
            "bad_checksum",
            "the check character does not match the first 17 digits",
        ),
        (
            {"id_number": NUMBER[:-1]},
            "id_number",
            "wrong_length",
            "a resident identity number has 18 characters, got 17",
        ),
        (
            {"id_number": "110105199902301237"},
            "id_number",
            "impossible_birth_date",
            "birth date 19990230 is not a calendar date",
        ),
        (
            {"id_number": "990105199001011234"},
            "id_number",
            "unknown_region",
            "region code 990105 is not a known region",
        ),
        (
            {"id_number": "5001031990O3071239"},
            "id_number",
            "bad_characters",
            "a resident identity number is 17 digits and a digit or X",
        ),
        (
            {"id_type": "driving_licence", "id_number": NUMBER},
            "id_type",
            "unknown_id_type",
            "id_type must be one of resident, passport, hk_macao_permit, taiwan_permit, foreign_permanent",
        ),
        ({"id_type": "resident"}, "id_number", "missing", "id_number must be a string"),
        ({"id_number": 500103199003071239}, "id_number", "missing", "id_number must be a string"),
        (
            {"id_type": "passport", "id_number": "E1"},
            "id_number",
            "bad_format",
            "id_number is not a well-formed passport number",
        ),
    ],
)
async def test_malformed_documents_are_422_saying_what_is_wrong(
    api: Api, client_keys: dict[str, str], body: dict[str, Any], field: str, code: str, detail: str
) -> None:
    r = await post_status(api, client_keys["citizen-backend"], body)
    await assert_problem(r, 422, invalid_identity(field, code, detail))


async def test_unknown_person_is_404_with_its_own_type(api: Api, client_keys: dict[str, str]) -> None:
    r = await post_status(api, client_keys["citizen-backend"], {"id_number": UNKNOWN})
    await assert_problem(
        r,
        404,
        {
            "type": "/problems/subject-not-found",
            "title": "No status is held for this person",
            "status": 404,
            "detail": "no status is held for this document; the person may not be registered yet",
            "instance": "/v1/status",
        },
    )


def unauthenticated(detail: str) -> dict[str, Any]:
    return {
        "type": "/problems/unauthenticated",
        "title": "A valid client key is required",
        "status": 401,
        "detail": detail,
        "instance": "/v1/status",
    }


@pytest.mark.parametrize(
    ("headers", "detail"),
    [
        ({}, "send the client key as 'Authorization: Bearer <key>'"),
        ({"Authorization": "Bearer hc_not-a-key"}, "the client key is unknown or revoked"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "the Authorization header must use the Bearer scheme"),
        ({"Authorization": "Bearer"}, "the Authorization header must use the Bearer scheme"),
    ],
)
async def test_missing_or_wrong_key_is_401(api: Api, headers: dict[str, str], detail: str) -> None:
    r = await api.post("/v1/status", json={"id_number": NUMBER}, headers=headers)
    await assert_problem(r, 401, unauthenticated(detail))
    assert r.headers["WWW-Authenticate"] == 'Bearer realm="healthcode"'


async def test_a_revoked_key_is_401_once_clients_are_reloaded(
    api: Api, db: asyncpg.Connection, settings: Settings, client_keys: dict[str, str]
) -> None:
    await insert_status(db, settings.pepper, NUMBER)
    key = client_keys["citizen-backend"]
    assert (await post_status(api, key, {"id_number": NUMBER})).status == 200
    assert await revoke_client(db, "test-citizen-backend")
    await api.app[CLIENTS].refresh(api.app[PG])
    r = await post_status(api, key, {"id_number": NUMBER})
    await assert_problem(r, 401, unauthenticated("the client key is unknown or revoked"))
    assert r.headers["WWW-Authenticate"] == 'Bearer realm="healthcode"'


@pytest.mark.parametrize("kind", ["scanner", "agency"])
async def test_other_client_kinds_are_403(api: Api, client_keys: dict[str, str], kind: str) -> None:
    r = await post_status(api, client_keys[kind], {"id_number": NUMBER})
    await assert_problem(
        r,
        403,
        {
            "type": "/problems/forbidden",
            "title": "This client may not use this endpoint",
            "status": 403,
            "detail": f"a {kind} client may not call this endpoint; it needs a citizen-backend client",
            "instance": "/v1/status",
        },
    )


@pytest.mark.parametrize(
    ("content_type", "shown"), [("text/plain", "text/plain"), ("application/x-www-form-urlencoded", None)]
)
async def test_wrong_content_type_is_415(
    api: Api, client_keys: dict[str, str], content_type: str, shown: str | None
) -> None:
    r = await api.post(
        "/v1/status",
        data=b'{"id_number": "500103199003071239"}',
        headers={**bearer(client_keys["citizen-backend"]), "Content-Type": content_type},
    )
    await assert_problem(
        r,
        415,
        {
            "type": "/problems/unsupported-media-type",
            "title": "The request body has an unsupported content type",
            "status": 415,
            "detail": f"send the body as application/json, not {shown or content_type}",
            "instance": "/v1/status",
        },
    )


async def test_invalid_json_is_400(api: Api, client_keys: dict[str, str]) -> None:
    r = await api.post(
        "/v1/status",
        data=b'{"id_number": ',
        headers={**bearer(client_keys["citizen-backend"]), "Content-Type": "application/json"},
    )
    assert r.status == 400, await r.text()
    body = await r.json(content_type=PROBLEM)
    assert body.pop("detail").startswith("the body is not valid JSON")
    assert body == {
        "type": "/problems/malformed-request",
        "title": "The request body is not valid JSON of the expected shape",
        "status": 400,
        "instance": "/v1/status",
    }


@pytest.mark.parametrize("payload", [[NUMBER], "x", 1, None])
async def test_json_that_is_not_an_object_is_400(api: Api, client_keys: dict[str, str], payload: object) -> None:
    r = await post_status(api, client_keys["citizen-backend"], payload)
    await assert_problem(
        r,
        400,
        {
            "type": "/problems/malformed-request",
            "title": "The request body is not valid JSON of the expected shape",
            "status": 400,
            "detail": "the body must be a JSON object",
            "instance": "/v1/status",
        },
    )


async def test_oversized_body_is_413(make_client: AppFactory, client_keys: dict[str, str]) -> None:
    api = await make_client(max_body_bytes=1024)
    r = await post_status(api, client_keys["citizen-backend"], {"id_number": NUMBER, "pad": "x" * 2000})
    assert r.status == 413, await r.text()
    assert r.content_type == PROBLEM
    body = await r.json(content_type=PROBLEM)
    assert body.pop("detail")
    assert body == {
        "type": "/problems/payload-too-large",
        "title": "The request body is larger than allowed",
        "status": 413,
        "instance": "/v1/status",
    }


async def test_wrong_method_is_405_problem(api: Api) -> None:
    r = await api.get("/v1/status")
    await assert_problem(
        r,
        405,
        {
            "type": "/problems/method-not-allowed",
            "title": "Method not allowed",
            "status": 405,
            "detail": "GET is not allowed on /v1/status",
            "instance": "/v1/status",
        },
    )
    assert r.headers["Allow"] == "POST"


async def test_unknown_route_is_404_problem(api: Api) -> None:
    r = await api.post("/v1/stat", json={})
    await assert_problem(
        r,
        404,
        {
            "type": "/problems/not-found",
            "title": "No such resource",
            "status": 404,
            "detail": "no route for /v1/stat",
            "instance": "/v1/stat",
        },
    )


# --- hot path: single-flight, negative cache, hits, Redis down -------------------------------------------


async def test_many_concurrent_misses_read_postgres_once(
    api: Api, db: asyncpg.Connection, settings: Settings, client_keys: dict[str, str]
) -> None:
    subject = await insert_status(db, settings.pepper, NUMBER, colour="yellow", reasons=("secondary_contact",))
    loader = api.app[STATUS_LOADER]
    assert loader.reads == 0
    key = client_keys["citizen-backend"]
    answers = await asyncio.gather(*(post_status(api, key, {"id_number": NUMBER}) for _ in range(50)))
    assert [a.status for a in answers] == [200] * 50
    assert {await token_subject(api, settings, await a.json()) for a in answers} == {subject}
    assert loader.reads == 1


async def test_unknown_person_is_remembered(api: Api, client_keys: dict[str, str]) -> None:
    loader = api.app[STATUS_LOADER]
    key = client_keys["citizen-backend"]
    for _ in range(3):
        r = await post_status(api, key, {"id_number": UNKNOWN})
        assert r.status == 404, await r.text()
    assert loader.reads == 1
    assert api.app[STATUS_CACHE].negative_hits == 2


async def test_concurrent_unknown_misses_read_postgres_once(api: Api, client_keys: dict[str, str]) -> None:
    key = client_keys["citizen-backend"]
    answers = await asyncio.gather(*(post_status(api, key, {"id_number": UNKNOWN}) for _ in range(20)))
    assert [a.status for a in answers] == [404] * 20
    assert api.app[STATUS_LOADER].reads == 1


async def test_a_hit_never_reads_postgres(
    api: Api, db: asyncpg.Connection, settings: Settings, client_keys: dict[str, str]
) -> None:
    await insert_status(db, settings.pepper, NUMBER, colour="red", reasons=("confirmed",))
    key = client_keys["citizen-backend"]
    assert (await post_status(api, key, {"id_number": NUMBER})).status == 200
    assert api.app[STATUS_LOADER].reads == 1
    # With the person gone from Postgres, a hit must still answer, and from Redis alone.
    await db.execute("DELETE FROM statuses")
    await db.execute("DELETE FROM subjects")
    for _ in range(5):
        r = await post_status(api, key, {"id_number": NUMBER})
        assert r.status == 200, await r.text()
        assert (await r.json())["colour"] == "red"
    assert api.app[STATUS_LOADER].reads == 1
    assert api.app[STATUS_CACHE].hits == 5


async def test_redis_down_still_answers_from_postgres(
    make_client: AppFactory, db: asyncpg.Connection, settings: Settings, client_keys: dict[str, str]
) -> None:
    subject = await insert_status(db, settings.pepper, NUMBER, colour="yellow", reasons=("secondary_contact",))
    api = await make_client(redis_url="redis://127.0.0.1:1/0")
    key = client_keys["citizen-backend"]
    for _ in range(2):
        r = await post_status(api, key, {"id_number": NUMBER})
        assert r.status == 200, await r.text()
        body = await r.json()
        assert body["colour"] == "yellow"
        assert await token_subject(api, settings, body) == subject
        assert (await pyjwt_claims(api, body["token"]))["st"] == "Y"
    assert api.app[STATUS_LOADER].reads == 2
    missing = await post_status(api, key, {"id_number": UNKNOWN})
    assert missing.status == 404, await missing.text()


async def test_a_malformed_number_reads_nothing(api: Api, client_keys: dict[str, str]) -> None:
    r = await post_status(api, client_keys["citizen-backend"], {"id_number": NUMBER[:-1] + "0"})
    assert r.status == 422, await r.text()
    assert api.app[STATUS_LOADER].reads == 0
