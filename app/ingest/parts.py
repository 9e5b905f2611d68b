"""A merged batch's recompute, split into parts (ranges of pseudonyms) that several processes share.

The merge writes the parts in its own transaction (sql/014_batch_parts_citus.sql), as many as the batch
has rows per `part_rows`, at most MAX_PARTS. Every process working on the batch then takes the parts no
one holds, one at a time, under a session-level advisory lock per part, and recomputes the batch's
subjects in that range. The lock is the claim: a process that dies (killed, host lost) loses it with its
connection, and the next process that looks takes the part over. Until every part is done, a process
that found nothing free waits and looks again, so whoever is still there finishes what a dead one left.

Pseudonyms are HMAC outputs, uniform over their bytes, so equal ranges of the first two bytes hold
equal shares of the subjects.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from app.db import Conn
from app.ingest.merge import last_row

log = logging.getLogger(__name__)

# Rows of a batch per part, and the most parts a batch is split into (each one a claim to take). A
# part lists its subjects by reading all the batch's staged rows and keeping its range: 0.25 us a row
# a part of Postgres time (200,000 staged tests: 0.5 s for one part, 1.3 s for sixteen), so the cap
# bounds that to ~4 us a row, under a tenth of a recompute's ~45 us a subject, however large the batch.
# Sixteen workers share one batch; more take other batches.
PART_ROWS: Final = 100_000
MAX_PARTS: Final = 16
# A risk-area batch's subjects are arrivals, not its rows: split as if it named this many rows.
RISK_AREA_ROWS: Final = 8 * PART_ROWS
# Advisory lock namespace (first key) for parts; the second key is (batch, part).
_PART_LOCKS: Final = 0x4843_0006
# How long a process with nothing to take waits before it looks at the batch's parts again.
POLL_SECONDS: Final = 0.2


@dataclass(frozen=True, slots=True)
class Part:
    number: int
    lo: bytes
    hi: bytes | None  # excluded; None: to the end


def split(count: int) -> list[Part]:
    """`count` equal ranges of the pseudonyms' first two bytes, covering all of them."""
    count = max(1, min(count, MAX_PARTS))
    bounds = [(i * 65536 // count).to_bytes(2, "big") for i in range(count)]
    return [Part(i, b"" if i == 0 else bounds[i], bounds[i + 1] if i + 1 < count else None) for i in range(count)]


async def write_parts(conn: Conn, batch_id: int, kind: str, part_rows: int = PART_ROWS) -> int:
    """In the merge's transaction: the batch's parts, sized by its rows; returns how many."""
    rows = RISK_AREA_ROWS if kind == "risk_area" else await last_row(conn, batch_id, kind)
    parts = split(-(-max(rows, 1) // part_rows))
    await conn.executemany(
        "INSERT INTO batch_parts (batch_id, part, lo, hi) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        [(batch_id, p.number, p.lo, p.hi) for p in parts],
    )
    return len(parts)


def _lock_key(batch_id: int, part: int) -> tuple[int, int]:
    return _PART_LOCKS, (batch_id * MAX_PARTS + part) % (1 << 31)


# Recomputes one part's subjects (a page at a time) and returns how many it recomputed.
RecomputeRange = Callable[[bytes, bytes | None], Awaitable[int]]


async def recompute_parts(
    conn: Conn, batch_id: int, recompute: RecomputeRange, *, poll_seconds: float = POLL_SECONDS
) -> int:
    """Take and recompute the batch's parts until every one is done; returns the subjects of all parts.

    A batch merged before parts existed gets one part covering everyone. Parts another process holds
    are waited for; if that process dies, its part is taken over here.
    """
    await conn.execute(
        "INSERT INTO batch_parts (batch_id, part, lo, hi) VALUES ($1, 0, '', NULL) ON CONFLICT DO NOTHING", batch_id
    )
    while True:
        open_parts = await conn.fetch(
            "SELECT part, lo, hi FROM batch_parts WHERE batch_id = $1 AND done_at IS NULL ORDER BY part", batch_id
        )
        if not open_parts:
            break
        took = False
        for row in open_parts:
            part = Part(row["part"], bytes(row["lo"]), None if row["hi"] is None else bytes(row["hi"]))
            took = await _take(conn, batch_id, part, recompute) or took
        if not took:
            await asyncio.sleep(poll_seconds)  # every open part is held by a live process: look again soon
    total = await conn.fetchval("SELECT sum(subjects) FROM batch_parts WHERE batch_id = $1", batch_id)
    return int(total or 0)


async def _take(conn: Conn, batch_id: int, part: Part, recompute: RecomputeRange) -> bool:
    """Recompute `part` unless another process holds it or has finished it; True if this one did."""
    key = _lock_key(batch_id, part.number)
    if not await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", *key):
        return False
    try:
        # Checked again under the lock: the process that held it a moment ago may have finished it.
        if await conn.fetchval(
            "SELECT done_at IS NOT NULL FROM batch_parts WHERE batch_id = $1 AND part = $2", batch_id, part.number
        ):
            return False
        subjects = await recompute(part.lo, part.hi)
        await conn.execute(
            """UPDATE batch_parts SET done_at = clock_timestamp(), subjects = $3, done_by = $4
               WHERE batch_id = $1 AND part = $2""",
            batch_id,
            part.number,
            subjects,
            f"{socket.gethostname()}:{os.getpid()}",
        )
        log.debug("batch %d part %d: %d subjects", batch_id, part.number, subjects)
        return True
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1, $2)", *key)


async def claimable(conn: Conn) -> list[int]:
    """Unfinished batches with work a process could start now, oldest first: a merge no one runs (the
    batch row is locked while a merge runs, so SKIP LOCKED passes it by), or a part no one holds."""
    rows = await conn.fetch(
        """SELECT b.id FROM batches b
           WHERE b.state IN ('received', 'loading')
             AND (b.merged_at IS NULL
                  OR NOT EXISTS (SELECT 1 FROM batch_parts p WHERE p.batch_id = b.id)
                  OR EXISTS (SELECT 1 FROM batch_parts p
                             WHERE p.batch_id = b.id AND p.done_at IS NULL
                               AND NOT EXISTS (SELECT 1 FROM pg_locks l
                                               WHERE l.locktype = 'advisory' AND l.classid = $1
                                                 AND l.objid = ((p.batch_id * $2 + p.part) % 2147483648)::oid
                                                 AND l.objsubid = 2)))
           ORDER BY b.id
           FOR SHARE OF b SKIP LOCKED""",
        _PART_LOCKS,
        MAX_PARTS,
    )
    return [r["id"] for r in rows]
