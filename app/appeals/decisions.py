"""Deciding an appeal: propose and approve a colour change (two operators), reject, or end a change early.

Each decision is one transaction: the appeal row is locked, the decision recorded beside its audit entry,
and for an approval the override stored (app.statuses.overrides, which bumps the subject's revision).
Only after it commits is the person's status recomputed and published through the one write path, so
Redis never shows a change that Postgres rolled back.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from app.appeals.errors import (
    AppealNotFound,
    InvalidAppealField,
    SecondOperatorRequired,
    StaleProposal,
    SubjectUnknown,
    WrongState,
)
from app.appeals.model import MAX_OVERRIDE_SECONDS, Decision, Operator
from app.appeals.store import MAX_ID
from app.db import Conn
from app.statuses.overrides import OverrideError, end_override, record_override
from app.statuses.publish import StatusPublisher


async def decide(
    conn: Conn, appeal_id: int, operator: Operator, decision: Decision, *, publisher: StatusPublisher, now: int
) -> int:
    """Apply one operator's decision; returns the decision's id."""
    async with conn.transaction():
        appeal = await _locked(conn, appeal_id)
        if decision.action == "propose":
            decision_id = await _propose(conn, appeal, operator, decision, now)
        elif decision.action == "approve":
            decision_id = await _approve(conn, appeal, operator, decision, now)
        elif decision.action == "reject":
            decision_id = await _reject(conn, appeal, operator, decision)
        else:
            decision_id = await _end(conn, appeal, operator, decision)
    if decision.action in ("approve", "end"):
        await publisher.recompute(conn, [bytes(appeal["pseudonym"])], now)
    return decision_id


async def _locked(conn: Conn, appeal_id: int) -> asyncpg.Record:
    # Two operators deciding at once take turns: the second sees the first one's outcome.
    row = await conn.fetchrow(
        "SELECT id, pseudonym, category, state, override_id FROM appeals WHERE id = $1 FOR UPDATE",
        appeal_id if 0 < appeal_id <= MAX_ID else 0,
    )
    if row is None:
        raise AppealNotFound(f"no appeal {appeal_id}")
    return row


async def _propose(conn: Conn, appeal: asyncpg.Record, operator: Operator, decision: Decision, now: int) -> int:
    _expect(appeal, ("open", "proposed"), "propose a colour change for")
    assert decision.colour is not None and decision.expires_at is not None
    seconds = decision.expires_at.timestamp() - now
    if not 0 < seconds <= MAX_OVERRIDE_SECONDS:
        raise InvalidAppealField(
            "expires_at",
            "out_of_range",
            f"expires_at must be in the future and at most {MAX_OVERRIDE_SECONDS // 86400} days ahead",
        )
    replaced = await _pending_proposal(conn, appeal) if appeal["state"] == "proposed" else None
    decision_id = await _record(conn, appeal, operator, decision)
    await conn.execute("UPDATE appeals SET state = 'proposed' WHERE id = $1", appeal["id"])
    await _audit(
        conn,
        operator,
        "appeal.propose",
        appeal,
        decision_id=decision_id,
        reason=decision.reason,
        colour=decision.colour,
        expires_at=decision.expires_at.isoformat(),
        replaces=None if replaced is None else replaced["id"],
    )
    return decision_id


async def _approve(conn: Conn, appeal: asyncpg.Record, operator: Operator, decision: Decision, now: int) -> int:
    _expect(appeal, ("proposed",), "approve a proposal for")
    proposal = await _pending_proposal(conn, appeal)
    if decision.proposal_id != proposal["id"]:
        raise StaleProposal(
            appeal["state"],
            f"proposal {decision.proposal_id} is not the pending one of appeal {appeal['id']} (that is "
            f"{proposal['id']}); review the pending proposal and approve it by its id",
        )
    if proposal["operator_id"] == operator.id:
        raise SecondOperatorRequired(f"operator {operator.name} proposed this change; another operator must approve it")
    if proposal["expires_at"].timestamp() <= now:
        raise WrongState(appeal["state"], "the proposed change would already have expired; propose it again")
    decision_id = await _record(conn, appeal, operator, decision)
    try:
        override_id = await record_override(
            conn,
            bytes(appeal["pseudonym"]),
            colour=proposal["colour"],
            reason=f"appeal {appeal['id']} ({appeal['category']}): {proposal['reason']}",
            expires_at=proposal["expires_at"],
            actor=f"{proposal['operator']} (proposed), {operator.name} (approved)",
            now=now,
        )
    except OverrideError as exc:  # the person is no longer registered
        raise SubjectUnknown(str(exc)) from None
    await conn.execute(
        "UPDATE appeals SET state = 'upheld', override_id = $2, decided_at = now() WHERE id = $1",
        appeal["id"],
        override_id,
    )
    await _audit(
        conn,
        operator,
        "appeal.approve",
        appeal,
        decision_id=decision_id,
        reason=decision.reason,
        proposal_id=proposal["id"],
        proposed_by=proposal["operator"],
        override_id=override_id,
        colour=proposal["colour"],
        expires_at=proposal["expires_at"].isoformat(),
    )
    return decision_id


async def _reject(conn: Conn, appeal: asyncpg.Record, operator: Operator, decision: Decision) -> int:
    _expect(appeal, ("open", "proposed"), "reject")
    decision_id = await _record(conn, appeal, operator, decision)
    await conn.execute("UPDATE appeals SET state = 'rejected', decided_at = now() WHERE id = $1", appeal["id"])
    await _audit(conn, operator, "appeal.reject", appeal, decision_id=decision_id, reason=decision.reason)
    return decision_id


async def _end(conn: Conn, appeal: asyncpg.Record, operator: Operator, decision: Decision) -> int:
    """End the appeal's override early. One operator suffices: it sets no colour of anyone's choosing,
    it returns the person to what their records say."""
    _expect(appeal, ("upheld",), "end the colour change of")
    decision_id = await _record(conn, appeal, operator, decision)
    try:
        await end_override(conn, appeal["override_id"], reason=decision.reason, actor=operator.name)
    except OverrideError as exc:
        raise WrongState(appeal["state"], f"nothing to end: {exc}") from None
    await _audit(
        conn,
        operator,
        "appeal.end",
        appeal,
        decision_id=decision_id,
        reason=decision.reason,
        override_id=appeal["override_id"],
    )
    return decision_id


def _expect(appeal: asyncpg.Record, states: tuple[str, ...], doing: str) -> None:
    if appeal["state"] not in states:
        raise WrongState(
            appeal["state"],
            f"cannot {doing} appeal {appeal['id']}: it is {appeal['state']} (this needs {' or '.join(states)})",
        )


async def _pending_proposal(conn: Conn, appeal: asyncpg.Record) -> asyncpg.Record:
    row = await conn.fetchrow(
        """SELECT d.id, d.operator_id, c.name AS operator, d.colour, d.reason, d.expires_at
           FROM appeal_decisions d JOIN api_clients c ON c.id = d.operator_id
           WHERE d.appeal_id = $1 AND d.action = 'propose' ORDER BY d.id DESC LIMIT 1""",
        appeal["id"],
    )
    assert row is not None, "a proposed appeal has a proposal"
    return row


async def _record(conn: Conn, appeal: asyncpg.Record, operator: Operator, decision: Decision) -> int:
    decision_id: int = await conn.fetchval(
        """INSERT INTO appeal_decisions (appeal_id, action, operator_id, reason, colour, expires_at, proposal_id)
           VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id""",
        appeal["id"],
        decision.action,
        operator.id,
        decision.reason,
        decision.colour,
        decision.expires_at,
        decision.proposal_id,
    )
    return decision_id


async def _audit(conn: Conn, operator: Operator, action: str, appeal: asyncpg.Record, **detail: Any) -> None:
    """Who (the operator), why (the reason in `detail`), when (the row's time); the person by pseudonym."""
    await conn.execute(
        "INSERT INTO audit_log (actor, action, pseudonym, detail) VALUES ($1, $2, $3, $4)",
        operator.name,
        action,
        appeal["pseudonym"],
        {"appeal_id": appeal["id"], "operator_id": operator.id, **detail},
    )
