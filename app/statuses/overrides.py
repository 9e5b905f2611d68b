"""An authority's manual status override: stored with who, why and until when, audited, applied at once."""

from __future__ import annotations

from datetime import datetime

from app.db import Conn
from app.statuses.publish import StatusPublisher
from signing.colours import COLOURS

MIN_REASON = 3


class OverrideError(ValueError):
    pass


async def override_status(
    conn: Conn,
    subject: bytes,
    *,
    colour: str,
    reason: str,
    expires_at: datetime,
    actor: str,
    publisher: StatusPublisher,
    now: int,
) -> int:
    """Record the override and its audit entry in one transaction, then recompute; returns its id.

    The transaction bumps the subject's revision, so the recompute's status outranks any computed
    before the override (a sweep running meanwhile cannot put the old colour back).
    """
    async with conn.transaction():
        override_id = await record_override(
            conn, subject, colour=colour, reason=reason, expires_at=expires_at, actor=actor, now=now
        )
    await publisher.recompute(conn, [subject], now)
    return override_id


async def record_override(
    conn: Conn, subject: bytes, *, colour: str, reason: str, expires_at: datetime, actor: str, now: int
) -> int:
    """Store an override and its audit entry, bumping the subject's revision; returns its id.

    Runs inside the caller's transaction (an appeal's approval commits it with the appeal's state);
    the caller recomputes the subject through the write path once that transaction has committed.
    """
    if colour not in COLOURS:
        raise OverrideError(f"colour must be one of {', '.join(COLOURS)}")
    if len(reason.strip()) < MIN_REASON:
        raise OverrideError("give a reason of at least three characters")
    if not actor.strip():
        raise OverrideError("name the actor (the authority making the change)")
    if expires_at.timestamp() <= now:
        raise OverrideError("the override must expire in the future")
    bumped = await conn.fetchval(
        "UPDATE subjects SET revision = revision + 1 WHERE pseudonym = $1 RETURNING revision", subject
    )
    if bumped is None:
        raise OverrideError("no such person is registered")
    override_id = await conn.fetchval(
        """INSERT INTO status_overrides (pseudonym, colour, reason, actor, expires_at)
           VALUES ($1, $2, $3, $4, $5) RETURNING id""",
        subject,
        colour,
        reason.strip(),
        actor.strip(),
        expires_at,
    )
    await conn.execute(
        "INSERT INTO audit_log (actor, action, pseudonym, detail) VALUES ($1, 'status.override', $2, $3)",
        actor.strip(),
        subject,
        {
            "override_id": override_id,
            "colour": colour,
            "reason": reason.strip(),
            "expires_at": expires_at.isoformat(),
        },
    )
    return int(override_id)


async def end_override(conn: Conn, override_id: int, *, reason: str, actor: str) -> bytes:
    """Mark an active override ended and audit it, bumping its subject's revision; returns the subject.

    Inside the caller's transaction, like `record_override`; the caller recomputes once committed, and
    the status computed then no longer sees the override (it reads only overrides not ended).
    """
    subject = await conn.fetchval(
        """UPDATE status_overrides SET ended_at = now()
           WHERE id = $1 AND ended_at IS NULL AND expires_at > now() RETURNING pseudonym""",
        override_id,
    )
    if subject is None:
        raise OverrideError(f"override {override_id} has already ended or expired")
    await conn.execute("UPDATE subjects SET revision = revision + 1 WHERE pseudonym = $1", subject)
    await conn.execute(
        "INSERT INTO audit_log (actor, action, pseudonym, detail) VALUES ($1, 'status.override.end', $2, $3)",
        actor.strip(),
        subject,
        {"override_id": override_id, "reason": reason.strip()},
    )
    return bytes(subject)
