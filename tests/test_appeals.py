"""The whole life of an appeal against the real app, Postgres and Redis: filing, refusals, review by two
operators, the override in Postgres, Redis and the next token, ending it early, and rejection."""

from __future__ import annotations

import time
from typing import Any

import asyncpg

from app.appeals import errors
from app.appeals.model import CATEGORIES
from app.http.problems import InvalidField, appeal_problem
from app.identity import mask_number
from tests import appeals_world
from tests.appeals_world import NUMBER, OTHER_NUMBER, World
from tests.test_openapi import assert_documented

world = appeals_world.world  # the fixture, shared with the other appeals tests
PROBLEM = "application/problem+json"
HOUR = 3600
DECIDE = ("/v1/appeals/{appeal_id}/decisions", "post")


async def audit(db: asyncpg.Connection, subject: bytes) -> list[tuple[str, str, dict[str, Any]]]:
    rows = await db.fetch("SELECT actor, action, detail FROM audit_log WHERE pseudonym = $1 ORDER BY id", subject)
    return [(r["actor"], r["action"], r["detail"]) for r in rows]


async def assert_audited(world: World, subject: bytes, appeal_id: int) -> None:
    """Who, why and when of every step of a filed, proposed, approved and ended appeal; pseudonyms only."""
    steps = await audit(world.db, subject)
    assert [(actor, action) for actor, action, _ in steps] == [
        ("test-citizen-backend", "appeal.file"),
        ("test-operator", "appeal.propose"),
        ("test-operator (proposed), bob (approved)", "status.override"),
        ("bob", "appeal.approve"),
        ("test-operator", "status.override.end"),
        ("test-operator", "appeal.end"),
    ]
    assert [detail.get("reason") for _, _, detail in steps][1:] == [
        "lab confirms a mix-up",
        f"appeal {appeal_id} (wrong_test_result): lab confirms a mix-up",
        "checked the lab's log",
        "lab retracted its note",
        "lab retracted its note",
    ]
    assert all(detail.get("appeal_id", appeal_id) == appeal_id for _, _, detail in steps)
    everything = str(await world.db.fetch("SELECT * FROM audit_log")) + str(
        await world.db.fetch("SELECT * FROM appeals")
    )
    assert NUMBER not in everything


async def test_a_colour_change_needs_two_operators_and_can_be_ended_early(world: World) -> None:
    subject = await world.red_person()
    filed = await world.file()
    appeal_id = filed["id"]
    assert filed == {
        "id": appeal_id,
        "state": "open",
        "category": "wrong_test_result",
        "filed_at": filed["filed_at"],
        "decided_at": None,
        "outcome": None,
    }
    assert abs(filed["filed_at"] - time.time()) < 60

    # Operators see it, with the person masked and their current status.
    shown = await world.show(world.alice, appeal_id)
    assert shown["person"] == {
        "id_type": "resident",
        "name": "王*",
        "id_number": mask_number(NUMBER),
        "colour": "red",
        "reasons": shown["person"]["reasons"],
        "version": shown["person"]["version"],
    }
    assert (shown["state"], shown["filed_by"], shown["contact_ref"]) == ("open", "test-citizen-backend", "wx-msg-7f3a")
    assert (shown["pending_proposal"], shown["override"], shown["decisions"]) == (None, None, [])

    until = int(time.time()) + 2 * HOUR
    proposed = await world.decide(
        world.alice, appeal_id, 201, action="propose", colour="green", reason="lab confirms a mix-up", expires_at=until
    )
    proposal = proposed["appeal"]["pending_proposal"]
    assert proposal["id"] == proposed["decision_id"]
    assert (proposal["operator"], proposal["colour"], proposal["expires_at"]) == ("test-operator", "green", until)
    assert proposed["appeal"]["state"] == "proposed"
    assert (await world.show(world.citizen, appeal_id))["state"] == "proposed"

    # The proposer cannot approve their own proposal: nothing changes.
    r = await world.api.post(
        f"/v1/appeals/{appeal_id}/decisions",
        json={"action": "approve", "proposal_id": proposal["id"], "reason": "looks right to me"},
        headers=world.alice,
    )
    assert (r.status, r.content_type) == (403, PROBLEM)
    refused = await r.json()
    assert refused["type"] == "/problems/second-operator-required"
    assert refused["code"] == "second_operator_required" and "test-operator proposed" in refused["detail"]
    assert await world.db.fetchval("SELECT count(*) FROM status_overrides") == 0
    assert await world.colours(subject) == ("red", "red", "R")

    # An approval must name the pending proposal.
    stale = await world.decide(
        world.bob, appeal_id, 409, action="approve", proposal_id=proposal["id"] + 1, reason="approved"
    )
    assert stale == {**stale, "type": "/problems/appeal-state", "code": "stale_proposal", "state": "proposed"}

    approved = await world.decide(
        world.bob, appeal_id, 201, action="approve", proposal_id=proposal["id"], reason="checked the lab's log"
    )
    assert approved["appeal"]["state"] == "upheld"
    override = approved["appeal"]["override"]
    assert (override["colour"], override["expires_at"], override["ended_at"]) == ("green", until, None)
    assert await world.colours(subject) == ("green", "green", "G")
    status = await world.db.fetchrow("SELECT reasons, valid_until FROM statuses WHERE pseudonym = $1", subject)
    assert status is not None and status["reasons"] == ["override"]
    assert int(status["valid_until"].timestamp()) == until  # the change ends with its expiry
    citizen = await world.show(world.citizen, appeal_id)
    assert citizen["state"] == "upheld" and citizen["decided_at"] is not None
    assert citizen["outcome"] == {"decision": "colour_changed", "colour": "green", "until": until, "ended_at": None}

    # Upheld is final: no new proposal, no rejection.
    await world.decide(world.alice, appeal_id, 409, action="reject", reason="changed my mind")

    # Ended early by a later decision: the status is recomputed at once from the records.
    ended = await world.decide(world.alice, appeal_id, 201, action="end", reason="lab retracted its note")
    assert ended["appeal"]["override"]["ended_at"] is not None
    assert await world.colours(subject) == ("red", "red", "R")
    outcome = (await world.show(world.citizen, appeal_id))["outcome"]
    assert outcome["ended_at"] == ended["appeal"]["override"]["ended_at"]
    again = await world.decide(world.bob, appeal_id, 409, action="end", reason="end it twice")
    assert again["code"] == "wrong_state"

    await assert_audited(world, subject, appeal_id)
    decisions = (await world.show(world.alice, appeal_id))["decisions"]
    assert [(d["action"], d["operator"]) for d in decisions] == [
        ("propose", "test-operator"),
        ("approve", "bob"),
        ("end", "test-operator"),
    ]


async def test_a_new_proposal_replaces_the_pending_one(world: World) -> None:
    subject = await world.red_person()
    appeal_id = (await world.file())["id"]
    until = int(time.time()) + HOUR
    first = await world.decide(
        world.alice, appeal_id, 201, action="propose", colour="yellow", reason="unsure", expires_at=until
    )
    second = await world.decide(
        world.bob, appeal_id, 201, action="propose", colour="green", reason="sure now", expires_at=until
    )
    assert second["appeal"]["pending_proposal"]["id"] == second["decision_id"]
    # The first proposal can no longer be approved; the second can, by the other operator.
    await world.decide(world.bob, appeal_id, 409, action="approve", proposal_id=first["decision_id"], reason="approved")
    await world.decide(
        world.bob, appeal_id, 403, action="approve", proposal_id=second["decision_id"], reason="approved"
    )
    await world.decide(
        world.alice, appeal_id, 201, action="approve", proposal_id=second["decision_id"], reason="approved"
    )
    assert await world.colours(subject) == ("green", "green", "G")
    replaced = [d for _, action, d in await audit(world.db, subject) if action == "appeal.propose"][1]
    assert replaced["replaces"] == first["decision_id"]


async def test_a_rejection_needs_one_operator_and_changes_nothing(world: World) -> None:
    subject = await world.red_person()
    appeal_id = (await world.file(category="not_a_contact"))["id"]
    until = int(time.time()) + HOUR
    await world.decide(world.alice, appeal_id, 201, action="propose", colour="green", reason="maybe", expires_at=until)
    rejected = await world.decide(world.alice, appeal_id, 201, action="reject", reason="the re-test was positive too")
    assert (rejected["appeal"]["state"], rejected["appeal"]["pending_proposal"]) == ("rejected", None)
    assert await world.colours(subject) == ("red", "red", "R")
    assert await world.db.fetchval("SELECT count(*) FROM status_overrides") == 0
    citizen = await world.show(world.citizen, appeal_id)
    assert citizen["outcome"] == {"decision": "rejected", "reason": "the re-test was positive too"}
    for body in (
        {"action": "propose", "colour": "green", "reason": "try again", "expires_at": until},
        {"action": "reject", "reason": "twice"},
        {"action": "end", "reason": "nothing to end"},
    ):
        problem = await world.decide(world.bob, appeal_id, 409, **body)
        assert (problem["state"], problem["code"]) == ("rejected", "wrong_state")
    actions = [(actor, action) for actor, action, _ in await audit(world.db, subject)]
    assert actions[-1] == ("test-operator", "appeal.reject")


async def test_text_with_an_identity_number_is_refused_naming_the_field(world: World) -> None:
    await world.red_person()
    cases = {
        "text": f"please check {OTHER_NUMBER}, my mother's code",
        "contact_ref": "passport E12345678",
    }
    for field, value in cases.items():
        body = {"id_number": NUMBER, "category": "other", "text": "please check", "contact_ref": "wx-1", field: value}
        r = await world.api.post("/v1/appeals", json=body, headers=world.citizen)
        assert (r.status, r.content_type) == (422, PROBLEM)
        problem = await r.json()
        assert problem == {
            "type": "/problems/identity-number-in-text",
            "title": "Free text must not hold an identity number",
            "status": 422,
            "detail": problem["detail"],
            "instance": "/v1/appeals",
            "field": field,
            "code": "identity_number_in_text",
        }
        assert OTHER_NUMBER not in problem["detail"] and "E12345678" not in problem["detail"]
    assert await world.db.fetchval("SELECT count(*) FROM appeals") == 0
    # An operator's reason is stored and audited too.
    appeal_id = (await world.file())["id"]
    problem = await world.decide(world.alice, appeal_id, 422, action="reject", reason=f"{OTHER_NUMBER} is right")
    assert (problem["field"], problem["code"]) == ("reason", "identity_number_in_text")


async def test_refusals_of_filing(world: World) -> None:
    await world.red_person()
    good = {"id_number": NUMBER, "category": "other", "text": "please check", "contact_ref": "wx-1"}
    cases: list[tuple[dict[str, str], dict[str, Any], int, str]] = [
        (world.citizen, {**good, "id_number": OTHER_NUMBER}, 404, "/problems/subject-not-found"),
        (world.citizen, {**good, "id_number": NUMBER[:-1] + "0"}, 422, "/problems/invalid-identity"),
        (world.citizen, {**good, "category": "bribery"}, 422, "/problems/invalid-field"),
        (world.citizen, {**good, "text": "x" * 2001}, 422, "/problems/invalid-field"),
        (world.citizen, {k: v for k, v in good.items() if k != "contact_ref"}, 422, "/problems/invalid-field"),
        (world.scanner, good, 403, "/problems/forbidden"),
        (world.alice, good, 403, "/problems/forbidden"),
        ({}, good, 401, "/problems/unauthenticated"),
    ]
    for headers, body, status, kind in cases:
        r = await world.api.post("/v1/appeals", json=body, headers=headers)
        assert (r.status, r.content_type, (await r.json())["type"]) == (status, PROBLEM, kind), body
    assert await world.db.fetchval("SELECT count(*) FROM appeals") == 0


async def test_another_client_and_other_kinds_cannot_see_an_appeal(world: World) -> None:
    await world.red_person()
    appeal_id = (await world.file())["id"]
    for path in (f"/v1/appeals/{appeal_id}", f"/v1/appeals/{appeal_id + 1}", "/v1/appeals/abc", f"/v1/appeals/{2**64}"):
        r = await world.api.get(path, headers=world.other_citizen if path.endswith(str(appeal_id)) else world.citizen)
        assert (r.status, r.content_type, (await r.json())["type"]) == (404, PROBLEM, "/problems/not-found"), path
    r = await world.api.get(f"/v1/appeals/{appeal_id}", headers=world.scanner)
    assert r.status == 403
    # Citizens neither list nor decide.
    assert (await world.api.get("/v1/appeals", headers=world.citizen)).status == 403
    await world.decide(world.citizen, appeal_id, 403, action="reject", reason="not allowed")
    # The filing client sees no operator detail.
    assert set(await world.show(world.citizen, appeal_id)) == {
        "id",
        "state",
        "category",
        "filed_at",
        "decided_at",
        "outcome",
    }


async def test_operators_list_with_filters_and_pages(world: World) -> None:
    await world.red_person()
    await world.red_person(OTHER_NUMBER)
    ids = [(await world.file(category=c))["id"] for c in ("other", "not_a_contact", "other")]
    ids.append((await world.file(OTHER_NUMBER, category="quarantine_completed"))["id"])
    await world.decide(world.alice, ids[1], 201, action="reject", reason="designation stands")

    async def listed(query: str) -> dict[str, Any]:
        r = await world.api.get(f"/v1/appeals{query}", headers=world.bob)
        assert r.status == 200, await r.text()
        answer: dict[str, Any] = await r.json()
        return answer

    everything = await listed("")
    assert [a["id"] for a in everything["appeals"]] == ids[::-1] and everything["next_before"] is None
    assert {a["person"]["id_number"] for a in everything["appeals"]} == {mask_number(NUMBER), mask_number(OTHER_NUMBER)}
    assert [a["id"] for a in (await listed("?state=open"))["appeals"]] == [ids[3], ids[2], ids[0]]
    assert [a["id"] for a in (await listed("?category=other&state=open"))["appeals"]] == [ids[2], ids[0]]
    assert [a["id"] for a in (await listed("?state=rejected"))["appeals"]] == [ids[1]]
    page = await listed("?limit=2")
    assert ([a["id"] for a in page["appeals"]], page["next_before"]) == ([ids[3], ids[2]], ids[2])
    page = await listed(f"?limit=2&before={page['next_before']}")
    assert [a["id"] for a in page["appeals"]] == [ids[1], ids[0]]
    for query, field in (
        ("?state=lost", "state"),
        ("?category=x", "category"),
        ("?limit=0", "limit"),
        ("?limit=201", "limit"),
        ("?before=-1", "before"),
        ("?before=" + "9" * 5000, "before"),
    ):
        r = await world.api.get(f"/v1/appeals{query}", headers=world.bob)
        assert (r.status, (await r.json())["field"]) == (422, field), query


async def test_refusals_of_decisions(world: World) -> None:
    await world.red_person()
    appeal_id = (await world.file())["id"]
    now = int(time.time())
    green = {"action": "propose", "reason": "lab mix-up", "colour": "green"}
    cases: list[tuple[int, dict[str, Any], int, str]] = [
        (appeal_id + 1, {"action": "reject", "reason": "no such appeal"}, 404, "/problems/not-found"),
        (appeal_id, {"action": "approve", "reason": "none proposed", "proposal_id": 1}, 409, "/problems/appeal-state"),
        (appeal_id, {"action": "end", "reason": "nothing upheld"}, 409, "/problems/appeal-state"),
        (appeal_id, {**green, "expires_at": now - 1}, 422, "/problems/invalid-field"),
        (appeal_id, {**green, "expires_at": now + 31 * 24 * HOUR}, 422, "/problems/invalid-field"),
        (appeal_id, {**green, "colour": None, "expires_at": now + HOUR}, 422, "/problems/invalid-field"),
    ]
    for target, body, status, kind in cases:
        problem = await world.decide(world.alice, target, status, **body)
        assert problem["type"] == kind, body
    assert (await world.show(world.alice, appeal_id))["decisions"] == []


def test_every_refusal_of_the_appeals_domain_has_an_answer_of_its_own() -> None:
    """The fallback of appeal_problem (a 422 naming the body) is for refusals added without one."""
    refusals: list[errors.AppealError] = [
        errors.AppealNotFound("x"),
        errors.SubjectUnknown("x"),
        errors.InvalidAppealField("text", "too_long", "x"),
        errors.IdentityNumberInText("text", "resident", 0),
        errors.WrongState("open", "x"),
        errors.StaleProposal("proposed", "x"),
        errors.SecondOperatorRequired("x"),
    ]
    subclasses: set[type[errors.AppealError]] = set()
    todo: list[type[errors.AppealError]] = [errors.AppealError]
    while todo:
        found = todo.pop().__subclasses__()
        subclasses.update(found)
        todo.extend(found)
    assert {type(e) for e in refusals} == subclasses
    statuses = [appeal_problem(e).status for e in refusals]
    assert statuses == [404, 404, 422, 422, 409, 409, 403]
    assert not any(
        type(appeal_problem(e)) is InvalidField and appeal_problem(e).extra["field"] == "body" for e in refusals
    )


async def test_the_categories_in_the_schema_are_those_of_the_code(db: asyncpg.Connection) -> None:
    definition = await db.fetchval(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'appeals_category_check'"
    )
    assert sorted(set(__import__("re").findall(r"'([a-z_]+)'", definition))) == sorted(CATEGORIES)


async def test_every_appeals_answer_fits_its_documented_schema(world: World) -> None:
    """Each new answer, live, against app/http/openapi.json: successes and every refusal."""
    await world.red_person()
    api, until = world.api, int(time.time()) + HOUR
    good = {"id_number": NUMBER, "category": "other", "text": "please check", "contact_ref": "wx-1"}
    r = await api.post("/v1/appeals", json=good, headers=world.citizen)
    appeal_id = (await assert_documented(r, "/v1/appeals", "post"))["id"]
    one = f"/v1/appeals/{appeal_id}"
    decisions = f"{one}/decisions"
    propose = {"action": "propose", "colour": "green", "expires_at": until, "reason": "lab mix-up"}
    proposed = await assert_documented(await api.post(decisions, json=propose, headers=world.alice), *DECIDE)
    approve = {"action": "approve", "proposal_id": proposed["decision_id"], "reason": "checked the log"}
    answers = [
        (await api.post("/v1/appeals", json={**good, "text": f"id {NUMBER}"}, headers=world.citizen), 422, "post"),
        (await api.post("/v1/appeals", json={**good, "id_number": OTHER_NUMBER}, headers=world.citizen), 404, "post"),
        (await api.post("/v1/appeals", json=good, headers=world.alice), 403, "post"),
        (await api.get("/v1/appeals", headers=world.bob), 200, "get"),
        (await api.get("/v1/appeals?limit=0", headers=world.bob), 422, "get"),
        (await api.get("/v1/appeals", headers=world.citizen), 403, "get"),
    ]
    for r, status, method in answers:
        assert r.status == status, await r.text()
        await assert_documented(r, "/v1/appeals", method)
    for who in (world.citizen, world.alice, world.other_citizen):
        await assert_documented(await api.get(one, headers=who), "/v1/appeals/{appeal_id}", "get")
    for body, who, status in (
        (approve, world.alice, 403),
        ({**approve, "proposal_id": 10**6}, world.bob, 409),
        ({**approve, "reason": f"see {NUMBER}"}, world.bob, 422),
        (approve, world.citizen, 403),
        (approve, world.bob, 201),
    ):
        r = await api.post(decisions, json=body, headers=who)
        assert r.status == status, await r.text()
        await assert_documented(r, *DECIDE)
    r = await api.post("/v1/appeals/999999/decisions", json=approve, headers=world.bob)
    assert r.status == 404
    await assert_documented(r, *DECIDE)
    for who in (world.citizen, world.alice):
        await assert_documented(await api.get(one, headers=who), "/v1/appeals/{appeal_id}", "get")


async def test_an_unknown_list_parameter_is_refused(world: World) -> None:
    r = await world.api.get("/v1/appeals?stat=open", headers=world.bob)
    assert r.status == 422, await r.text()
    body = await r.json()
    assert (body["field"], body["code"]) == ("stat", "unknown_parameter")
