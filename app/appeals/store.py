"""Filing an appeal, and reading appeals back: what the filing client sees, and what operators see."""

from __future__ import annotations

from typing import Any, Final

from app.appeals.errors import AppealNotFound, SubjectUnknown
from app.appeals.model import Filing
from app.db import Conn

# appeals.id is a bigint: a larger id was never issued, and asking Postgres would be an error, not a miss.
MAX_ID: Final = 2**63 - 1
_EPOCH = "extract(epoch FROM {})::bigint"

_SUMMARY = f"""a.id, a.state, a.category, {_EPOCH.format("a.filed_at")} AS filed_at,
       {_EPOCH.format("a.decided_at")} AS decided_at, c.name AS filed_by,
       s.id_type, s.masked_name, s.masked_number, st.colour, st.reasons, st.version"""
# The person's masked display and current status beside each appeal (absent if no longer registered).
_FROM = """FROM appeals a
JOIN api_clients c ON c.id = a.client_id
LEFT JOIN subjects s ON s.pseudonym = a.pseudonym
LEFT JOIN statuses st ON st.pseudonym = a.pseudonym"""
_OVERRIDE = f"""SELECT id, colour, {_EPOCH.format("expires_at")} AS expires_at, {_EPOCH.format("ended_at")} AS ended_at
FROM status_overrides WHERE id = $1"""
_DECISIONS = f"""SELECT d.id, d.action, c.name AS operator, d.reason, d.colour,
       {_EPOCH.format("d.expires_at")} AS expires_at, d.proposal_id, {_EPOCH.format("d.decided_at")} AS decided_at
FROM appeal_decisions d JOIN api_clients c ON c.id = d.operator_id
WHERE d.appeal_id = $1 ORDER BY d.id"""


async def file_appeal(conn: Conn, *, client_id: int, client_name: str, subject: bytes, filing: Filing) -> int:
    """Store the appeal and its audit entry in one transaction; returns its id."""
    async with conn.transaction():
        if await conn.fetchval("SELECT 1 FROM subjects WHERE pseudonym = $1", subject) is None:
            raise SubjectUnknown("no record is held for this document, so there is no code to appeal")
        appeal_id: int = await conn.fetchval(
            """INSERT INTO appeals (client_id, pseudonym, category, text, contact_ref)
               VALUES ($1, $2, $3, $4, $5) RETURNING id""",
            client_id,
            subject,
            filing.category,
            filing.text,
            filing.contact_ref,
        )
        await conn.execute(
            "INSERT INTO audit_log (actor, action, pseudonym, detail) VALUES ($1, 'appeal.file', $2, $3)",
            client_name,
            subject,
            {"appeal_id": appeal_id, "client_id": client_id, "category": filing.category},
        )
    return appeal_id


async def citizen_view(conn: Conn, appeal_id: int, client_id: int) -> dict[str, Any]:
    """State and outcome, for the client that filed the appeal; another client's appeal is not found."""
    row = await conn.fetchrow(
        f"""SELECT id, client_id, state, category, {_EPOCH.format("filed_at")} AS filed_at,
               {_EPOCH.format("decided_at")} AS decided_at, override_id
            FROM appeals WHERE id = $1""",
        _known_id(appeal_id),
    )
    # Another client's appeal is answered like a missing one: its existence is not theirs to learn.
    if row is None or row["client_id"] != client_id:
        raise AppealNotFound(f"no appeal {appeal_id} for this client")
    outcome: dict[str, Any] | None = None
    if row["state"] == "upheld":
        override = await conn.fetchrow(_OVERRIDE, row["override_id"])
        assert override is not None
        outcome = {
            "decision": "colour_changed",
            "colour": override["colour"],
            "until": override["expires_at"],
            "ended_at": override["ended_at"],
        }
    elif row["state"] == "rejected":
        reason = await conn.fetchval(
            "SELECT reason FROM appeal_decisions WHERE appeal_id = $1 AND action = 'reject' ORDER BY id DESC LIMIT 1",
            appeal_id,
        )
        outcome = {"decision": "rejected", "reason": reason}
    return {
        "id": row["id"],
        "state": row["state"],
        "category": row["category"],
        "filed_at": row["filed_at"],
        "decided_at": row["decided_at"],
        "outcome": outcome,
    }


async def operator_view(conn: Conn, appeal_id: int) -> dict[str, Any]:
    """Everything an operator needs to decide: the appeal, the person (masked), their status, every decision."""
    row = await conn.fetchrow(
        f"SELECT {_SUMMARY}, a.text, a.contact_ref, a.override_id {_FROM} WHERE a.id = $1", _known_id(appeal_id)
    )
    if row is None:
        raise AppealNotFound(f"no appeal {appeal_id}")
    decisions = [dict(d) for d in await conn.fetch(_DECISIONS, appeal_id)]
    pending = None
    if row["state"] == "proposed":
        pending = next(d for d in reversed(decisions) if d["action"] == "propose")
    override = None
    if row["override_id"] is not None:
        found = await conn.fetchrow(_OVERRIDE, row["override_id"])
        override = None if found is None else dict(found)
    return {
        **_summary(row),
        "text": row["text"],
        "contact_ref": row["contact_ref"],
        "pending_proposal": pending,
        "override": override,
        "decisions": decisions,
    }


async def list_appeals(
    conn: Conn, *, state: str | None, category: str | None, before: int | None, limit: int
) -> list[dict[str, Any]]:
    """Newest first; `before` (an appeal id) pages back through older ones."""
    rows = await conn.fetch(
        f"""SELECT {_SUMMARY} {_FROM}
            WHERE ($1::text IS NULL OR a.state = $1) AND ($2::text IS NULL OR a.category = $2)
              AND ($3::bigint IS NULL OR a.id < $3)
            ORDER BY a.id DESC LIMIT $4""",
        state,
        category,
        before,
        limit,
    )
    return [_summary(r) for r in rows]


def _known_id(appeal_id: int) -> int:
    """The id, or 0 (never issued) for one no bigint holds: a miss, where Postgres would raise."""
    return appeal_id if 0 < appeal_id <= MAX_ID else 0


def _summary(row: Any) -> dict[str, Any]:
    return {
        "id": row["id"],
        "state": row["state"],
        "category": row["category"],
        "filed_by": row["filed_by"],
        "filed_at": row["filed_at"],
        "decided_at": row["decided_at"],
        "person": {
            "id_type": row["id_type"],
            "name": row["masked_name"],
            "id_number": row["masked_number"],
            "colour": row["colour"],
            "reasons": row["reasons"],
            "version": row["version"],
        },
    }
