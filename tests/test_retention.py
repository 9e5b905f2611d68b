"""`healthcode sweep` deletes scan events, place-code visits and look-ups on behalf of others past the
retention period (whole days by dropping partitions where there are some) and keeps everything younger."""

from __future__ import annotations

import argparse
import io
from contextlib import redirect_stdout
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import asyncpg

from app.cli.batches import sweep
from app.retention import ensure_daily_partitions
from app.settings import Settings

DAY = timedelta(days=1)


async def partitions(db: asyncpg.Connection, table: str) -> set[str]:
    rows = await db.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = $1::regclass",
        table,
    )
    return {r["relname"] for r in rows}


async def add(db: asyncpg.Connection, at: datetime, n: int) -> None:
    await db.execute(
        """INSERT INTO scan_events (scanned_at, checkpoint, client_id, valid, reason, stream_id)
           VALUES ($1, 'gate-1', 1, true, 'ok', $2)""",
        at,
        f"{at.timestamp():.0f}-{n}",
    )
    await db.execute(
        """INSERT INTO venue_visits (visited_at, venue_id, pseudonym, id_type, masked_number, client_id)
           VALUES ($1, 'vVenue000001', $2, 'resident', '5****************9', 1)""",
        at,
        n.to_bytes(16, "big"),
    )
    await db.execute(
        "INSERT INTO scan_refusals (hour, checkpoint, client_id, reason, scans) VALUES ($1, 'gate-1', 1, 'expired', 1)",
        at.replace(minute=0, second=0, microsecond=0) - timedelta(hours=n),  # distinct hours
    )


async def add_lookup(db: asyncpg.Connection, at: datetime) -> None:
    """A look-up on behalf of a relative (app/relations), through a relation made for it."""
    holder, relative = b"h" * 16, b"r" * 16
    relation = await db.fetchval(
        """INSERT INTO relations (holder, relative, kind, holder_id_type, holder_masked_number, relative_id_type,
                                  relative_masked_number, attestation_ref, client_id)
           VALUES ($1, $2, 'carer', 'resident', '5****************9', 'resident', '5****************1', 'poa-1', 1)
           ON CONFLICT (holder, relative) WHERE ended_at IS NULL DO UPDATE SET kind = excluded.kind
           RETURNING id""",
        holder,
        relative,
    )
    await db.execute(
        """INSERT INTO relation_lookups (relation_id, relative, holder, kind, client_id, looked_at)
           VALUES ($1, $2, $3, 'carer', 1, $4)""",
        relation,
        relative,
        holder,
        at,
    )


async def test_sweep_drops_expired_days_and_keeps_the_retention_period(
    db: asyncpg.Connection, settings: Settings
) -> None:
    now = datetime.now(UTC)
    old_day = (now - 40 * DAY).date()
    for table in ("scan_events", "venue_visits"):
        await ensure_daily_partitions(db, table, old_day, days_ahead=1)
        await ensure_daily_partitions(db, table, now.date(), days_ahead=0)
    old = datetime(old_day.year, old_day.month, old_day.day, 12, tzinfo=UTC)
    await add(db, old, 1)  # in a partition of its own, 40 days ago
    await add(db, now - 35 * DAY, 2)  # no partition of its day: in the default partition
    await add(db, now - 27 * DAY, 3)  # within 28 days: kept
    await add(db, now - timedelta(minutes=5), 4)  # today: kept
    for at in (now - 40 * DAY, now - 29 * DAY, now - 27 * DAY, now - timedelta(minutes=5)):
        await add_lookup(db, at)
    out = io.StringIO()
    with redirect_stdout(out):
        assert await sweep(argparse.Namespace(), replace(settings, retention_days=28)) == 0
    assert f"scan_events_{old_day:%Y%m%d}" not in await partitions(db, "scan_events")
    assert f"venue_visits_{old_day:%Y%m%d}" not in await partitions(db, "venue_visits")
    assert f"venue_visits_{now.date():%Y%m%d}" in await partitions(db, "venue_visits")
    assert "dropped 4 partitions" in out.getvalue(), out.getvalue()  # two days of each table
    cutoff = now - 28 * DAY
    kept = (
        ("scan_events", "scanned_at"),
        ("venue_visits", "visited_at"),
        ("scan_refusals", "hour"),
        ("relation_lookups", "looked_at"),
    )
    for table, column in kept:
        times = [r[0] for r in await db.fetch(f"SELECT {column} FROM {table} ORDER BY 1")]
        assert len(times) == 2, (table, times)
        assert all(t >= cutoff - timedelta(hours=1) for t in times), (table, times)
    # A second sweep finds nothing more to do.
    out = io.StringIO()
    with redirect_stdout(out):
        await sweep(argparse.Namespace(), replace(settings, retention_days=28))
    assert "dropped 0 partitions, deleted 0 rows" in out.getvalue()
