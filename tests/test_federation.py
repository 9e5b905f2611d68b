"""Two deployments on loopback (tests/federation_world.py): mutual recognition of codes, the peer
vaccination API and its authentication, a status that counts a peer's vaccinations, a peer that is
down or slow, and the signed trust list."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path

import asyncpg
import jwt
import pytest
from redis.asyncio import Redis

from app.db import connect, drop_database, recreate_database
from app.federation import identity
from app.federation.assertion import ASSERTION_TYP, make_assertion
from app.federation.keys import EXPIRED, FRESH, STALE, PeerKeys
from app.federation.peers import add_peer
from app.federation.service import Federation
from app.http.app import create_app
from app.http.appkeys import FEDERATION, PG, SIGNER
from app.identity import Identity, pseudonym
from app.keys.lifecycle import activate, new_key
from app.settings import Settings
from cache.federation import peer_lookup_key
from signing.jws import STATUS_TYP, TokenSigner
from signing.keys import generate_private_key
from signing.records import KeyRecord
from tests.conftest import _CLEAN, TEST_DATABASE, _with_path
from tests.federation_world import (
    A_ISSUER,
    B_ISSUER,
    B_REDIS_DB,
    FEDERATION_KEY,
    Api,
    Deployment,
    client_secrets,
)
from tests.support import bearer
from tests.test_ingest_helpers import csv_body, number, upload
from tests.test_openapi import assert_documented


@pytest.fixture(scope="session")
def b_database_url(server_urls: tuple[str, str]) -> Iterator[str]:
    """B's own scratch database, migrated once for the session."""
    url = _with_path(server_urls[0], f"/{TEST_DATABASE}_b")
    asyncio.run(recreate_database(url))
    yield url
    asyncio.run(drop_database(url))


@pytest.fixture
def a_settings(settings: Settings) -> Settings:
    return replace(settings, issuer=A_ISSUER, region_code="CN-CQ", federation_key=FEDERATION_KEY)


@pytest.fixture
async def deployment_a(
    aiohttp_client: Callable[..., Awaitable[Api]],
    a_settings: Settings,
    db: asyncpg.Connection,
    redis: Redis,
    signing_key: str,
    client_keys: dict[str, str],
) -> Deployment:
    api = await aiohttp_client(create_app(a_settings, background=False))
    return Deployment(api, a_settings, db, client_keys)


@pytest.fixture
async def deployment_b(
    aiohttp_client: Callable[..., Awaitable[Api]],
    b_database_url: str,
    server_urls: tuple[str, str],
    tmp_path: Path,
    settings: Settings,
) -> AsyncIterator[Deployment]:
    b_settings = replace(
        settings,
        database_url=b_database_url,
        redis_url=_with_path(server_urls[1], f"/{B_REDIS_DB}"),
        pepper=secrets.token_bytes(32),
        handle_key=secrets.token_bytes(32),
        keys_dir=tmp_path / "keys-b",
        issuer=B_ISSUER,
        region_code="CN-SC",
        federation_key=FEDERATION_KEY,
    )
    conn = await connect(b_database_url)
    await conn.execute(_CLEAN)
    redis = Redis.from_url(b_settings.redis_url)
    await redis.flushdb()
    try:
        await activate(conn, await new_key(conn, b_settings.keys_dir))
        keys = await client_secrets(conn)
        api = await aiohttp_client(create_app(b_settings, background=False))
        yield Deployment(api, b_settings, conn, keys)
    finally:
        await redis.flushdb()
        await redis.aclose()
        await conn.close()


@pytest.fixture
async def federated(deployment_a: Deployment, deployment_b: Deployment) -> tuple[Deployment, Deployment]:
    """A and B trusting each other; B is a vaccination source for A (and A for B)."""
    await deployment_a.trust(deployment_b.peer(name="Sichuan 天府健康通"))
    await deployment_b.trust(deployment_a.peer(name="Chongqing 渝康码"))
    return deployment_a, deployment_b


def foreign_signer(issuer: str, typ: str = STATUS_TYP, ttl: int = 300) -> TokenSigner:
    """A signer with a key nobody published."""
    return TokenSigner(KeyRecord.from_private_key(generate_private_key()), issuer, ttl, typ)


# Mutual recognition (互认)


async def test_a_token_from_b_verifies_at_a_and_names_its_issuer(federated: tuple[Deployment, Deployment]) -> None:
    a, b = federated
    await b.register(1)
    token = (await b.status(1))["token"]
    answer = await a.verify(token)
    assert answer["valid"] is True, answer
    assert (answer["reason"], answer["issuer"], answer["issuer_name"]) == ("ok", B_ISSUER, "Sichuan 天府健康通")
    assert answer["token_colour"] == "green"
    # B's person is not A's to look up: only the token speaks for them here.
    assert (answer["current_colour"], answer["name"], answer["vaccination"]) == (None, None, None)


async def test_the_checkpoint_policy_decides_whether_peer_codes_are_accepted(
    federated: tuple[Deployment, Deployment],
) -> None:
    a, b = federated
    await b.register(1)
    token = (await b.status(1))["token"]
    accepting = await a.verify(token, policy={"accept_peer_codes": True})
    assert (accepting["meets_policy"], accepting["failed_rules"]) == (True, [])
    own_only = await a.verify(token, policy={"accept_peer_codes": False, "require_vaccination": True})
    assert (own_only["valid"], own_only["meets_policy"]) == (True, False)
    assert own_only["failed_rules"] == ["vaccination", "peer_code"]


async def test_a_token_whose_issuer_is_not_trusted_is_invalid_with_its_own_reason(
    federated: tuple[Deployment, Deployment],
) -> None:
    a, b = federated
    stranger = foreign_signer("xz-unknown").sign_status("h", "G", 0, 1, int(time.time()), ver=1)
    answer = await a.verify(stranger)
    assert (answer["valid"], answer["reason"], answer["issuer"]) == (False, "untrusted_issuer", None)
    # B removed from A's trust list: B's codes are refused the same way from then on.
    await b.register(1)
    token = (await b.status(1))["token"]
    await a.distrust(B_ISSUER)
    assert (await a.verify(token))["reason"] == "untrusted_issuer"


async def test_a_token_claiming_a_trusted_issuer_but_signed_by_another_key_is_refused(
    federated: tuple[Deployment, Deployment],
) -> None:
    a, _ = federated
    forged = foreign_signer(B_ISSUER).sign_status("h", "G", 0, 1, int(time.time()), ver=1)
    answer = await a.verify(forged)
    assert (answer["valid"], answer["reason"]) == (False, "unknown_key")


async def test_the_trust_list_is_signed_for_offline_scanners(federated: tuple[Deployment, Deployment]) -> None:
    a, b = federated
    r = await a.api.get("/.well-known/trust-list.json")
    assert r.status == 200
    assert r.headers["Content-Type"] == "application/jose+json"
    document = await r.json()
    compact = f"{document['protected']}.{document['payload']}.{document['signature']}"
    # Checked by an independent JOSE implementation against A's published keys.
    jwks = await (await a.api.get("/.well-known/jwks.json")).json()
    header = jwt.get_unverified_header(compact)
    key = next(jwt.PyJWK(k) for k in jwks["keys"] if k["kid"] == header["kid"])
    claims = jwt.decode(compact, key, algorithms=["ES256"], options={"verify_aud": False})
    assert claims["iss"] == A_ISSUER and header["typ"] == "hctl+jwt"
    [peer] = claims["peers"]
    assert (peer["iss"], peer["name"], peer["vaccination_source"]) == (B_ISSUER, "Sichuan 天府健康通", True)
    b_jwks = await (await b.api.get("/.well-known/jwks.json")).json()
    assert {k["kid"] for k in peer["keys"]} == {k["kid"] for k in b_jwks["keys"]}


# Peers' keys: cached, refreshed, kept through an outage until they expire


async def test_peer_keys_follow_cache_headers_and_etag_and_survive_an_outage_until_they_expire(
    federated: tuple[Deployment, Deployment],
) -> None:
    a, b = federated
    now = [time.time()]
    keys = PeerKeys(max_stale_seconds=600, clock=lambda: now[0])
    peer = b.peer()
    keys.set_peers([peer])
    session = a.api.app[FEDERATION].session
    await keys.fetch(session, peer)
    assert keys.state(B_ISSUER) == FRESH
    kid = next(iter(keys.sets[B_ISSUER].by_kid))
    assert keys.sets[B_ISSUER].etag is not None
    # B's JWKS says max-age=60: not due before then; a re-fetch after it is answered 304 and renews it.
    await keys.refresh(session)
    assert keys.fetches[B_ISSUER, "ok"] == 1
    now[0] += 61
    await keys.refresh(session)
    assert keys.fetches[B_ISSUER, "ok"] == 2 and keys.candidates(B_ISSUER, kid)
    await b.api.close()  # B goes down
    now[0] += 61
    await keys.refresh(session)
    assert keys.state(B_ISSUER) == STALE and keys.fetches[B_ISSUER, "failed"] == 1
    assert keys.candidates(B_ISSUER, kid), "the last good keys are kept"
    now[0] += 600
    await keys.refresh(session)
    assert keys.state(B_ISSUER) == EXPIRED
    assert keys.candidates(B_ISSUER, kid) == ()


# The peer API and its authentication


async def peer_call(a: Deployment, token: str | None, fp: str) -> tuple[int, dict[str, object]]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    r = await a.api.post("/v1/peer/vaccinations", json={"federation_pseudonym": fp}, headers=headers)
    return r.status, await r.json()


def fp_of(i: int) -> str:
    return identity.encode(identity.federation_pseudonym(Identity("resident", number(i)), FEDERATION_KEY))


async def test_a_peer_answers_vaccinations_by_federation_pseudonym_signed(
    federated: tuple[Deployment, Deployment],
) -> None:
    a, b = federated
    await b.register(7)
    await b.vaccinate((7, "sinovac-coronavac", 1, "2021-05-01"), (7, "sinovac-coronavac", 2, "2021-06-01"))
    signer = a.api.app[SIGNER].signer_for(ASSERTION_TYP, 60)
    status, body = await peer_call(b, make_assertion(signer, B_ISSUER, int(time.time())), fp_of(7))
    assert status == 200, body
    records = str(body["records"])
    b_jwks = await (await b.api.get("/.well-known/jwks.json")).json()
    key = next(jwt.PyJWK(k) for k in b_jwks["keys"] if k["kid"] == jwt.get_unverified_header(records)["kid"])
    claims = jwt.decode(records, key, algorithms=["ES256"], audience=A_ISSUER)
    assert claims["iss"] == B_ISSUER and claims["fp"] == fp_of(7)
    origin = {"product": "sinovac-coronavac", "origin": "CN-SC", "agency": "test-agency"}
    assert claims["vaccinations"] == [
        {**origin, "dose": 1, "vaccinated_on": "2021-05-01"},
        {**origin, "dose": 2, "vaccinated_on": "2021-06-01"},
    ]
    # The raw number never crossed, and B stores only the federation pseudonym beside its own.
    stored = await b.db.fetchval("SELECT count(*) FROM federation_subjects")
    assert stored == 1


async def test_a_peer_not_on_the_trust_list_is_refused(federated: tuple[Deployment, Deployment]) -> None:
    _, b = federated
    stranger = foreign_signer("xz-unknown", ASSERTION_TYP, 60)
    status, body = await peer_call(b, make_assertion(stranger, B_ISSUER, int(time.time())), fp_of(1))
    assert (status, body["type"], body["reason"]) == (401, "/problems/peer-unauthorized", "untrusted_issuer")


async def test_forged_and_replayed_peer_requests_are_refused(federated: tuple[Deployment, Deployment]) -> None:
    a, b = federated
    now = int(time.time())
    forged = make_assertion(foreign_signer(A_ISSUER, ASSERTION_TYP, 60), B_ISSUER, now)  # A's name, not A's key
    assert (await peer_call(b, forged, fp_of(1)))[1]["reason"] == "unknown_key"
    signer = a.api.app[SIGNER].signer_for(ASSERTION_TYP, 60)
    wrong_audience = make_assertion(signer, "cn-bj", now)
    assert (await peer_call(b, wrong_audience, fp_of(1)))[1]["reason"] == "wrong_audience"
    assert (await peer_call(b, None, fp_of(1)))[1]["reason"] == "missing_assertion"
    good = make_assertion(signer, B_ISSUER, now)
    assert (await peer_call(b, good, fp_of(1)))[0] == 200
    status, body = await peer_call(b, good, fp_of(1))
    assert (status, body["reason"]) == (401, "replayed")
    # A tampered payload (another audience spliced in) no longer matches A's signature.
    header, _, signature = make_assertion(signer, "cn-bj", now).split(".")
    spliced = ".".join((header, good.split(".")[1], signature))
    assert (await peer_call(b, spliced, fp_of(1)))[1]["reason"] == "bad_signature"
    status, body = await peer_call(b, make_assertion(signer, B_ISSUER, now), "not-a-pseudonym")
    assert (status, body["field"], body["code"]) == (422, "federation_pseudonym", "bad_pseudonym")


# A status that counts a peer's vaccinations


async def test_a_vaccination_given_in_b_counts_in_as_umbrella_mark(federated: tuple[Deployment, Deployment]) -> None:
    a, b = federated
    await a.register(3)
    await a.vaccinate((3, "sinovac-coronavac", 1, "2021-05-01"))
    await b.register(3)
    await b.vaccinate((3, "sinovac-coronavac", 2, "2021-06-01"))
    local = await a.status(3)
    assert local["vaccination"] == {"doses": 1, "complete": False} and "peer_vaccinations" not in local
    answer = await a.status(3, include_peer_vaccinations=True)
    assert answer["vaccination"] == {"doses": 2, "complete": True}
    report = answer["peer_vaccinations"]
    assert (report["reached"], report["not_reached"]) == ([B_ISSUER], [])
    assert (report["cached"], report["stored"]) == (False, True)
    assert jwt.decode(answer["token"], options={"verify_signature": False})["vac"] == 1
    assert answer["version"] > local["version"]
    # Stored as a record of origin B, through the write path: every later answer agrees without asking B.
    row = await a.db.fetchrow("SELECT origin_code, source_agency, origin_peer FROM vaccinations WHERE dose = 2")
    assert row is not None
    assert dict(row) == {"origin_code": "CN-SC", "source_agency": "test-agency", "origin_peer": B_ISSUER}
    again = await a.status(3, include_peer_vaccinations=True)
    assert again["peer_vaccinations"]["cached"] is True and again["vaccination"]["complete"] is True
    assert (await a.status(3))["vaccination"]["complete"] is True


async def test_a_person_without_local_vaccinations_is_looked_up_at_the_peers(
    federated: tuple[Deployment, Deployment],
) -> None:
    a, b = federated
    await a.register(4)
    await b.register(4)
    await b.vaccinate((4, "pfizer-comirnaty", 1, "2021-07-01"), (4, "pfizer-comirnaty", 2, "2021-08-01"))
    answer = await a.status(4)
    assert answer["vaccination"] == {"doses": 2, "complete": True}
    assert answer["peer_vaccinations"]["reached"] == [B_ISSUER]
    # A later correction at B (dose 2 withdrawn) reaches A the next time A asks.
    retract = "id_number,product,dose,vaccinated_on,action\n" + f"{number(4)},pfizer-comirnaty,2,2021-08-01,retract\n"
    await upload(b.api, b.keys["agency"], "vaccination", retract.encode())
    await forget_lookup(a, 4)  # as if peer_cache_seconds had passed
    assert (await a.status(4, include_peer_vaccinations=True))["vaccination"] == {"doses": 1, "complete": False}


async def forget_lookup(a: Deployment, i: int) -> None:
    redis = Redis.from_url(a.settings.redis_url)
    try:
        await redis.delete(peer_lookup_key(pseudonym(Identity("resident", number(i)), a.settings.pepper)))
    finally:
        await redis.aclose()


async def test_b_stopped_a_still_answers_within_its_budget_from_local_data(
    federated: tuple[Deployment, Deployment],
) -> None:
    a, b = federated
    await a.register(5)
    await a.vaccinate((5, "sinovac-coronavac", 1, "2021-05-01"))
    await b.api.close()  # B is stopped: its port refuses connections
    started = time.monotonic()
    answer = await a.status(5, include_peer_vaccinations=True)
    elapsed = time.monotonic() - started
    assert answer["vaccination"] == {"doses": 1, "complete": False}
    assert answer["peer_vaccinations"]["reached"] == []
    assert answer["peer_vaccinations"]["not_reached"] == [{"issuer": B_ISSUER, "reason": "unavailable"}]
    assert elapsed < a.settings.peer_timeout_seconds + 1.0
    # Not asked again while its breaker is open, and not remembered as asked.
    again = await a.status(5, include_peer_vaccinations=True)
    assert again["peer_vaccinations"]["not_reached"] == [{"issuer": B_ISSUER, "reason": "skipped"}]


async def test_a_peer_that_accepts_but_never_answers_costs_at_most_the_budget(
    deployment_a: Deployment, deployment_b: Deployment
) -> None:
    a = deployment_a
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # the kernel accepts connections; nobody ever reads or answers
    try:
        port = silent.getsockname()[1]
        slow = replace(deployment_b.peer(), api_base_url=f"http://127.0.0.1:{port}")
        await a.trust(slow)
        await a.register(6)
        started = time.monotonic()
        answer = await a.status(6, include_peer_vaccinations=True)
        elapsed = time.monotonic() - started
        assert answer["peer_vaccinations"]["not_reached"] == [{"issuer": B_ISSUER, "reason": "timeout"}]
        assert elapsed < a.settings.peer_timeout_seconds + 1.0
    finally:
        silent.close()


async def test_include_peer_vaccinations_must_be_a_boolean(federated: tuple[Deployment, Deployment]) -> None:
    a, _ = federated
    r = await a.api.post(
        "/v1/status",
        json={"id_number": number(1), "include_peer_vaccinations": "yes"},
        headers=bearer(a.keys["citizen-backend"]),
    )
    body = await r.json()
    assert (r.status, body["field"], body["code"]) == (422, "include_peer_vaccinations", "wrong_type")


async def test_federation_answers_fit_the_openapi_document(federated: tuple[Deployment, Deployment]) -> None:
    a, b = federated
    await a.register(8)
    await b.register(8)
    await b.vaccinate((8, "janssen-ad26", 1, "2021-07-01"))
    r = await a.api.post("/v1/status", json={"id_number": number(8)}, headers=bearer(a.keys["citizen-backend"]))
    assert (await assert_documented(r, "/v1/status", "post"))["vaccination"]["complete"] is True
    r = await b.api.post("/v1/status", json={"id_number": number(8)}, headers=bearer(b.keys["citizen-backend"]))
    token = (await r.json())["token"]
    for policy in ({}, {"policy": {"accept_peer_codes": False}}):
        r = await a.api.post(
            "/v1/verify", json={"token": token, "checkpoint": "g", **policy}, headers=bearer(a.keys["scanner"])
        )
        assert (await assert_documented(r, "/v1/verify", "post"))["issuer"] == B_ISSUER
    r = await a.api.post("/v1/verify", json={"token": "x.y.z", "checkpoint": "g"}, headers=bearer(a.keys["scanner"]))
    await assert_documented(r, "/v1/verify", "post")
    await assert_documented(await a.api.get("/.well-known/trust-list.json"), "/.well-known/trust-list.json", "get")
    signer = a.api.app[SIGNER].signer_for(ASSERTION_TYP, 60)
    path = "/v1/peer/vaccinations"
    for token in (make_assertion(signer, B_ISSUER, int(time.time())), "bogus"):
        r = await b.api.post(
            path, json={"federation_pseudonym": fp_of(8)}, headers={"Authorization": f"Bearer {token}"}
        )
        await assert_documented(r, path, "post")


async def test_without_a_federation_key_no_federation_pseudonym_is_stored(
    api: Api, db: asyncpg.Connection, client_keys: dict[str, str]
) -> None:
    await upload(api, client_keys["agency"], "population", csv_body("id_number,name", f"{number(9)},张九"))
    assert await db.fetchval("SELECT count(*) FROM subjects") == 1
    assert await db.fetchval("SELECT count(*) FROM federation_subjects") == 0


async def test_nul_in_a_peer_request_is_422_once_the_peer_is_authenticated(
    federated: tuple[Deployment, Deployment],
) -> None:
    a, b = federated
    signer = a.api.app[SIGNER].signer_for(ASSERTION_TYP, 60)
    status, body = await peer_call(b, make_assertion(signer, B_ISSUER, int(time.time())), "abc\x00def")
    assert (status, body["field"], body["code"]) == (422, "federation_pseudonym", "nul_character")


async def test_a_peer_key_rotation_is_picked_up_by_the_first_token_that_names_the_new_key(
    federated: tuple[Deployment, Deployment],
) -> None:
    a, b = federated
    await b.register(1)
    await activate(b.db, await new_key(b.db, b.settings.keys_dir))  # B rotates; A has not re-fetched
    await b.api.app[SIGNER].refresh(b.api.app[PG])
    fetched = a.api.app[FEDERATION].keys.fetches[B_ISSUER, "ok"]
    # (B's status asks A for vaccinations with an assertion of the new key: A may re-fetch there first.)
    token = (await b.status(1))["token"]
    answer = await a.verify(token)
    assert (answer["valid"], answer["issuer"]) == (True, B_ISSUER)
    assert a.api.app[FEDERATION].keys.fetches[B_ISSUER, "ok"] == fetched + 1
    # A kid nobody published does not make A fetch again and again: at most once per window.
    forged = foreign_signer(B_ISSUER).sign_status("h", "G", 0, 1, int(time.time()), ver=1)
    assert (await a.verify(forged))["reason"] == "unknown_key"
    assert (await a.verify(forged))["reason"] == "unknown_key"
    assert a.api.app[FEDERATION].keys.fetches[B_ISSUER, "ok"] == fetched + 1


async def test_without_a_key_or_peers_the_status_says_nobody_was_asked(api: Api, client_keys: dict[str, str]) -> None:
    await upload(api, client_keys["agency"], "population", csv_body("id_number,name", f"{number(2)},张二"))
    r = await api.post(
        "/v1/status",
        json={"id_number": number(2), "include_peer_vaccinations": True},
        headers=bearer(client_keys["citizen-backend"]),
    )
    report = (await assert_documented(r, "/v1/status", "post"))["peer_vaccinations"]
    assert report == {"consulted": False, "reason": "no federation key configured", "reached": [], "not_reached": []}
    r = await api.post("/v1/status", json={"id_number": number(2)}, headers=bearer(client_keys["citizen-backend"]))
    assert "peer_vaccinations" not in await r.json()


async def test_the_background_task_reads_the_trust_list_and_fetches_new_peers_keys(
    deployment_a: Deployment, deployment_b: Deployment
) -> None:
    a, b = deployment_a, deployment_b
    app = a.api.app
    federation = Federation(
        replace(a.settings, peer_refresh_seconds=1.0),
        app[FEDERATION].session,
        lambda ttl: app[SIGNER].signer_for(ASSERTION_TYP, ttl),
    )
    task = asyncio.create_task(federation.run(app[PG]))
    try:
        await add_peer(a.db, b.peer())  # as `healthcode peers add` would, from another process
        deadline = time.monotonic() + 10
        while federation.keys.state(B_ISSUER) != FRESH:
            assert time.monotonic() < deadline, "the new peer's keys were not fetched"
            await asyncio.sleep(0.02)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert federation.keys.trusted(B_ISSUER) == b.peer()
