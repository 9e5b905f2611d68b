"""Merging a staged batch into the record tables: set-based SQL, one statement per step.

The natural key of each record table decides what is a duplicate: ``ON CONFLICT DO NOTHING`` stores a
record once however often it is sent, and the difference between valid rows and inserted rows is the
duplicate count. Rows that can only be judged against stored data (a test naming an unknown sample)
are rejected here, in SQL, into ``batch_rejections``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from app.db import Conn
from app.rules.areas import area_prefix


@dataclass(frozen=True, slots=True)
class Merged:
    accepted: int  # records inserted (or, for population and risk areas, changed)
    rejected: int  # rows rejected by the merge itself
    duplicates: int


# People named by identity in any kind but population become subjects if they are not yet known, so a
# lab's result for someone the registry has not sent yet still gives that person a status. Known ones
# get their revision bumped in the merge's transaction: their inputs change with it, and every status
# computed from the new records must outrank any computed before (sql/004_status_versions.sql).
_SUBJECTS_FROM = """INSERT INTO subjects (pseudonym, id_type, masked_number)
    SELECT DISTINCT ON (pseudonym) pseudonym, id_type, masked_number
    FROM {table} WHERE batch_id = $1 AND pseudonym IS NOT NULL
    ORDER BY pseudonym, row_no
    ON CONFLICT (pseudonym) DO UPDATE SET revision = subjects.revision + 1"""
# Test results named by a registered sample only: their people are known (a sample names one).
_SAMPLE_SUBJECTS_REVISED = """UPDATE subjects s SET revision = s.revision + 1
    FROM (SELECT DISTINCT m.pseudonym FROM staging_test t JOIN samples m ON m.sample_id = t.sample_id
          WHERE t.batch_id = $1 AND t.pseudonym IS NULL) r
    WHERE s.pseudonym = r.pseudonym"""
# Risk areas are everyone's input: one revision for all of them.
_AREAS_REVISED = "UPDATE input_revisions SET value = value + 1 WHERE name = 'risk_areas'"

_MERGE: Final[dict[str, str]] = {
    "population": """INSERT INTO subjects (pseudonym, id_type, masked_name, masked_number)
        SELECT DISTINCT ON (pseudonym) pseudonym, id_type, masked_name, masked_number
        FROM staging_population WHERE batch_id = $1 ORDER BY pseudonym, row_no DESC
        ON CONFLICT (pseudonym) DO UPDATE SET masked_name = excluded.masked_name,
            masked_number = excluded.masked_number, updated_at = now(), revision = subjects.revision + 1
        WHERE subjects.masked_name IS DISTINCT FROM excluded.masked_name
           OR subjects.masked_number IS DISTINCT FROM excluded.masked_number""",
    "vaccination": """INSERT INTO vaccinations (pseudonym, product, dose, vaccinated_on, site, batch_id)
        SELECT pseudonym, product, dose, vaccinated_on, site, $1 FROM staging_vaccination WHERE batch_id = $1
        ORDER BY pseudonym, row_no
        ON CONFLICT DO NOTHING""",
    "test": """INSERT INTO nucleic_tests (pseudonym, sampled_at, result, lab, reported_at, sample_id, batch_id)
        SELECT coalesce(s.pseudonym, m.pseudonym), s.sampled_at, s.result, s.lab, s.reported_at, s.sample_id, $1
        FROM staging_test s LEFT JOIN samples m ON m.sample_id = s.sample_id
        WHERE s.batch_id = $1 AND (s.pseudonym IS NOT NULL OR m.pseudonym IS NOT NULL)
          AND (s.pseudonym IS NULL OR m.pseudonym IS NULL OR s.pseudonym = m.pseudonym)
        ORDER BY 1, s.row_no
        ON CONFLICT DO NOTHING""",
    "travel": """INSERT INTO travel_arrivals (pseudonym, area_code, arrived_at, mode, batch_id)
        SELECT pseudonym, area_code, arrived_at, mode, $1 FROM staging_travel WHERE batch_id = $1
        ORDER BY pseudonym, row_no
        ON CONFLICT DO NOTHING""",
    "designation": """INSERT INTO designations (pseudonym, kind, valid_from, valid_until, authority, reason, batch_id)
        SELECT pseudonym, kind, valid_from, valid_until, authority, reason, $1
        FROM staging_designation WHERE batch_id = $1
        ORDER BY pseudonym, row_no
        ON CONFLICT DO NOTHING""",
    # A risk area sent again with another level or end replaces the old record: areas are announced
    # and then changed, and the change must take effect.
    "risk_area": """INSERT INTO risk_areas (area_code, level, valid_from, valid_until, batch_id)
        SELECT DISTINCT ON (area_code, valid_from) area_code, level, valid_from, valid_until, $1
        FROM staging_risk_area WHERE batch_id = $1 ORDER BY area_code, valid_from, row_no DESC
        ON CONFLICT (area_code, valid_from) DO UPDATE SET level = excluded.level,
            valid_until = excluded.valid_until, batch_id = excluded.batch_id
        WHERE risk_areas.level IS DISTINCT FROM excluded.level
           OR risk_areas.valid_until IS DISTINCT FROM excluded.valid_until""",
}

_TEST_REJECTIONS = """INSERT INTO batch_rejections (batch_id, row_no, field, code, message)
    SELECT $1, s.row_no, 'sample_id',
           CASE WHEN m.pseudonym IS NULL THEN 'unknown_sample' ELSE 'sample_mismatch' END,
           CASE WHEN m.pseudonym IS NULL THEN 'sample ' || s.sample_id || ' was never registered'
                ELSE 'sample ' || s.sample_id || ' was registered for another person' END
    FROM staging_test s LEFT JOIN samples m ON m.sample_id = s.sample_id
    WHERE s.batch_id = $1 AND s.sample_id IS NOT NULL
      AND ((s.pseudonym IS NULL AND m.pseudonym IS NULL) OR (s.pseudonym IS NOT NULL AND m.pseudonym <> s.pseudonym))"""


_SORT_MEMORY: Final = "256MB"


def _count(status: str) -> int:
    """Rows affected, from a command tag such as ``INSERT 0 42``."""
    return int(status.rsplit(" ", 1)[-1])


async def merge_batch(conn: Conn, batch_id: int, kind: str) -> Merged:
    """Run inside the caller's transaction; bumps the revision of every subject the batch names."""
    # Rows go in in key order (and, within a key, in row order, so the first of two rows with one
    # natural key is the one stored): index insertions then walk each index once instead of touching
    # pages all over it. The sort needs memory of its own, or it spills to disk.
    await conn.execute(f"SET LOCAL work_mem = '{_SORT_MEMORY}'")
    staged = await conn.fetchval(f"SELECT count(*) FROM staging_{kind} WHERE batch_id = $1", batch_id)
    rejected = 0
    if kind == "test":
        rejected = _count(await conn.execute(_TEST_REJECTIONS, batch_id))
    if kind not in ("population", "risk_area"):
        await conn.execute(_SUBJECTS_FROM.format(table=f"staging_{kind}"), batch_id)
    if kind == "test":
        await conn.execute(_SAMPLE_SUBJECTS_REVISED, batch_id)
    accepted = _count(await conn.execute(_MERGE[kind], batch_id))
    if kind == "risk_area" and accepted:
        await conn.execute(_AREAS_REVISED)
    return Merged(accepted, rejected, staged - rejected - accepted)


async def affected_subjects(conn: Conn, batch_id: int, kind: str, arrival_window: int) -> list[bytes]:
    """Every subject whose status the batch may change (read from staging, so it can be re-run)."""
    if kind == "risk_area":
        codes = await conn.fetch("SELECT DISTINCT area_code FROM staging_risk_area WHERE batch_id = $1", batch_id)
        patterns = sorted({area_prefix(r["area_code"]) + "%" for r in codes})
        if not patterns:
            return []
        # Only arrivals still inside the rule set's window can be judged by an area's level.
        rows = await conn.fetch(
            """SELECT DISTINCT pseudonym FROM travel_arrivals
               WHERE area_code LIKE ANY($1::text[]) AND arrived_at > now() - make_interval(secs => $2)""",
            patterns,
            arrival_window,
        )
    elif kind == "test":
        rows = await conn.fetch(
            """SELECT coalesce(s.pseudonym, m.pseudonym) AS pseudonym
               FROM staging_test s LEFT JOIN samples m ON m.sample_id = s.sample_id
               WHERE s.batch_id = $1 AND coalesce(s.pseudonym, m.pseudonym) IS NOT NULL""",
            batch_id,
        )
    else:
        rows = await conn.fetch(f"SELECT pseudonym FROM staging_{kind} WHERE batch_id = $1", batch_id)
    return list(dict.fromkeys(bytes(r["pseudonym"]) for r in rows))
