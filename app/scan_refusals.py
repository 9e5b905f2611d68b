"""Refused scans, counted in memory per hour, checkpoint, client and reason, and added to Postgres.

Counting costs a dict update and no I/O on the request path; a flush every few seconds turns each
distinct key into one upserted row. A flush that fails keeps its counts for the next one. The number
of distinct keys between flushes is capped, so a scanner inventing checkpoints cannot grow memory:
past the cap new checkpoints are counted under OVERFLOW_CHECKPOINT.
"""

from __future__ import annotations

from collections import Counter
from typing import Final

import asyncpg

OVERFLOW_CHECKPOINT: Final = "(overflow)"
DEFAULT_MAX_KEYS: Final = 50_000

Key = tuple[int, str, int, str]  # hour (Unix seconds), checkpoint, client id, reason

_UPSERT = """
INSERT INTO scan_refusals (hour, checkpoint, client_id, reason, scans)
SELECT to_timestamp(t.hour), t.checkpoint, t.client_id, t.reason, t.scans
FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::text[], $5::bigint[])
     AS t(hour, checkpoint, client_id, reason, scans)
ON CONFLICT (hour, checkpoint, client_id, reason) DO UPDATE SET scans = scan_refusals.scans + excluded.scans
"""


class RefusalCounts:
    def __init__(self, max_keys: int = DEFAULT_MAX_KEYS) -> None:
        self.max_keys = max_keys
        self.counted = 0  # refused scans counted by this process
        self.flushed = 0  # of them, added to Postgres
        self._counts: Counter[Key] = Counter()

    def add(self, scanned_at: int, checkpoint: str, client_id: int, reason: str) -> None:
        key = (scanned_at - scanned_at % 3600, checkpoint, client_id, reason)
        if key not in self._counts and len(self._counts) >= self.max_keys:
            key = (key[0], OVERFLOW_CHECKPOINT, client_id, reason)
        self._counts[key] += 1
        self.counted += 1

    @property
    def unflushed(self) -> int:
        return self.counted - self.flushed

    async def flush(self, pool: asyncpg.Pool | asyncpg.Connection) -> int:
        """Add the counts so far to Postgres; returns how many scans they held."""
        if not self._counts:
            return 0
        counts, self._counts = self._counts, Counter()  # scans counted meanwhile go to the next flush
        # Sorted: processes flushing at once lock rows in one order, so they cannot deadlock.
        rows = sorted(counts.items())
        try:
            await pool.execute(
                _UPSERT,
                [k[0] for k, _ in rows],
                [k[1] for k, _ in rows],
                [k[2] for k, _ in rows],
                [k[3] for k, _ in rows],
                [n for _, n in rows],
            )
        except BaseException:
            self._counts.update(counts)  # kept for the next flush (the cap may be exceeded once here)
            raise
        total = sum(counts.values())
        self.flushed += total
        return total
