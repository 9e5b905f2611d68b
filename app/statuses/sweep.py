"""The sweeper: statuses whose valid_until has passed (a test aged, a quarantine ended) recomputed."""

from __future__ import annotations

from typing import Final

from app.db import Conn
from app.statuses.compute import load_risk_areas
from app.statuses.publish import StatusPublisher

CHUNK: Final = 10_000


async def sweep_expired(conn: Conn, publisher: StatusPublisher, now: int) -> int:
    """Recompute statuses whose valid_until is at or before ``now``, a chunk at a time; returns how many."""
    areas = await load_risk_areas(conn)
    total = 0
    while True:
        rows = await conn.fetch(
            "SELECT pseudonym FROM statuses WHERE valid_until <= to_timestamp($1) ORDER BY valid_until LIMIT $2",
            now,
            CHUNK,
        )
        if not rows:
            return total
        subjects = [bytes(r["pseudonym"]) for r in rows]
        count = await publisher.refresh(conn, subjects, now, areas)
        total += len(rows)
        if count < len(rows):
            await publisher.drop_orphans(conn, subjects)
