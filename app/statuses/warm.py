"""Rebuilding Redis from Postgres: every status entry, recomputed where it has expired."""

from __future__ import annotations

import time

from tqdm import tqdm

from app.db import Conn
from app.statuses.compute import load_risk_areas
from app.statuses.publish import StatusPublisher
from app.statuses.stored import STATUS_SELECT, entry_from_row, is_fresh

CHUNK = 5000

_PAGE = STATUS_SELECT + "WHERE sub.pseudonym > $1 ORDER BY sub.pseudonym LIMIT $2"


async def warm_cache(conn: Conn, publisher: StatusPublisher, *, progress: bool = False) -> int:
    """Walk every subject in pseudonym order; returns the number of entries written to Redis.

    A page read here may be overtaken by a batch before it reaches Redis; the publisher's version
    guard keeps the newer status there.
    """
    written = 0
    total = await conn.fetchval("SELECT count(*) FROM subjects")
    areas = await load_risk_areas(conn)
    after = b""
    with tqdm(total=total, unit="people", disable=not progress) as bar:
        while rows := await conn.fetch(_PAGE, after, CHUNK):
            now = int(time.time())
            fresh = {bytes(r["pseudonym"]): entry_from_row(r) for r in rows if is_fresh(r, now)}
            stale = [bytes(r["pseudonym"]) for r in rows if bytes(r["pseudonym"]) not in fresh]
            written += await publisher.publish_stored(fresh)
            if stale:
                recomputed = await publisher.recompute(conn, stale, now, areas)
                written += len(recomputed)
            after = bytes(rows[-1]["pseudonym"])
            bar.update(len(rows))
    return written
