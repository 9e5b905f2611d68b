"""Retention of scan events, place-code visits and look-ups on behalf of others: daily partitions made
ahead, old ones dropped.

Both tables are range-partitioned by day (`<table>_YYYYMMDD`, made here and by app.scans); a day past
the retention period is dropped whole, which costs no dead tuples and no vacuum. Rows older than the
cut-off that sit elsewhere (the default partition, the day the cut-off falls in) are deleted, so what
is kept is exactly the period. Refused-scan counts (per hour, not partitioned) are deleted by hour, and
the log of look-ups on behalf of another person (`relation_lookups`: who looked, kept so the person
looked up can see it) by row: it is small, one row per such look-up.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Final

import asyncpg

from app.db import Conn

log = logging.getLogger(__name__)

# (table, time column) of every partitioned table whose rows expire.
PARTITIONED: Final = (("scan_events", "scanned_at"), ("venue_visits", "visited_at"))
_DAY: Final = re.compile(r"_(\d{8})$")


@dataclass(frozen=True, slots=True)
class Swept:
    dropped: tuple[str, ...]  # partitions dropped whole
    deleted: int  # rows deleted one by one (default partitions, the cut-off day, refusal counts)


async def ensure_daily_partitions(conn: Conn | asyncpg.Pool, table: str, today: date, days_ahead: int = 3) -> None:
    """Daily partitions of `table` from today on; made ahead so rows rarely land in the default one."""
    for offset in range(days_ahead + 1):
        day = today + timedelta(days=offset)
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        name = f"{table}_{day:%Y%m%d}"
        try:
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF {table} "
                f"FOR VALUES FROM ('{start.isoformat()}') TO ('{(start + timedelta(days=1)).isoformat()}')"
            )
        except asyncpg.PostgresError as exc:
            # Rows of that day already sit in the default partition; they stay there, still queryable.
            log.warning("partition %s not created: %s", name, exc)


async def ensure_partitions_of_every_table(conn: Conn | asyncpg.Pool, today: date) -> None:
    """Daily partitions, from today on, of every table whose rows expire (`PARTITIONED`)."""
    for table, _ in PARTITIONED:
        await ensure_daily_partitions(conn, table, today)


async def _day_partitions(conn: Conn, table: str) -> list[tuple[str, date]]:
    rows = await conn.fetch(
        """SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
           WHERE i.inhparent = $1::regclass""",
        table,
    )
    found = []
    for row in rows:
        name = row["relname"]
        if name.startswith(f"{table}_") and (match := _DAY.search(name)) is not None:
            found.append((name, datetime.strptime(match.group(1), "%Y%m%d").date()))
    return sorted(found, key=lambda item: item[1])


async def sweep_retention(conn: Conn, now: datetime, retention_days: int) -> Swept:
    """Delete scan events, visits and refusal counts older than `retention_days` before `now`."""
    cutoff = now - timedelta(days=retention_days)
    dropped: list[str] = []
    deleted = 0
    for table, column in PARTITIONED:
        for name, day in await _day_partitions(conn, table):
            if datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1) <= cutoff:
                await conn.execute(f"DROP TABLE {name}")  # one day, whole: no row-by-row delete
                dropped.append(name)
        # Partition pruning keeps this to the default partition and the day the cut-off falls in.
        status = await conn.execute(f"DELETE FROM {table} WHERE {column} < $1", cutoff)
        deleted += int(status.split()[-1])
    status = await conn.execute("DELETE FROM scan_refusals WHERE hour + interval '1 hour' <= $1", cutoff)
    deleted += int(status.split()[-1])
    status = await conn.execute("DELETE FROM relation_lookups WHERE looked_at < $1", cutoff)
    deleted += int(status.split()[-1])
    if dropped or deleted:
        log.info("retention: dropped %d partitions, deleted %d rows older than %s", len(dropped), deleted, cutoff)
    return Swept(tuple(dropped), deleted)
