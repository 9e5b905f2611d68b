"""Recomputing statuses: records from Postgres, through the rules engine, back into `statuses`.

Set-based: one query per record kind for a whole chunk of people, one upsert for their statuses.
`fetch_records`, `evaluate_fetched` and `store_statuses` are the three steps, so that a caller can
let Postgres work on one chunk while Python evaluates another (app.ingest.process).
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import asyncpg

from app.rules.areas import RiskAreaIndex
from app.rules.engine import evaluate
from app.rules.records import (
    Arrival,
    Designation,
    NucleicTest,
    Override,
    RiskArea,
    SubjectRecords,
    Vaccination,
)
from app.rules.ruleset import RuleSet
from cache.entry import StatusEntry

# A plain connection or one lent by a pool.
Connection = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy

_EPOCH = "extract(epoch FROM {})::bigint"
# Keys are joined from an unnested array, not matched with `= ANY($1)`: on hash-partitioned tables an
# ANY over thousands of values costs ~35 ms of planning and pruning per table per 10,000 keys, the
# join ~1 ms (each key one index probe of its own partition). Run with a generic plan (see _fetch).
_KEYS = "unnest($1::bytea[]) AS k(p) JOIN {} ON {}.pseudonym = k.p"
_SUBJECTS = f"SELECT s.pseudonym, id_type, masked_name, masked_number FROM {_KEYS.format('subjects s', 's')}"
_VACCINATIONS = f"""SELECT r.pseudonym, product, dose, {_EPOCH.format("vaccinated_on::timestamptz")}
    FROM {_KEYS.format("vaccinations r", "r")}"""
_TESTS = f"""SELECT r.pseudonym, {_EPOCH.format("sampled_at")}, result, {_EPOCH.format("reported_at")}
    FROM {_KEYS.format("nucleic_tests r", "r")}"""
_ARRIVALS = f"""SELECT r.pseudonym, area_code, {_EPOCH.format("arrived_at")}, mode
    FROM {_KEYS.format("travel_arrivals r", "r")}"""
_DESIGNATIONS = f"""SELECT r.pseudonym, kind, {_EPOCH.format("valid_from")}, {_EPOCH.format("valid_until")}
    FROM {_KEYS.format("designations r", "r")}"""
_OVERRIDES = f"""SELECT DISTINCT ON (r.pseudonym) r.pseudonym, colour, reason, {_EPOCH.format("expires_at")}
    FROM {_KEYS.format("status_overrides r", "r")} WHERE expires_at > to_timestamp($2)
    ORDER BY r.pseudonym, created_at DESC"""
# A generic plan keeps the key joins as index probes whatever the array's length (a custom plan of a
# 10,000-key array picks a sort-merge over whole tables); JIT compiling costs ~15 ms per query here
# and these queries run in a few milliseconds.
_PLAN_SETTINGS = "SET LOCAL plan_cache_mode = force_generic_plan; SET LOCAL jit = off"
# Below this many keys the default plans are as good, and the status read on a cache miss (one key)
# saves the transaction's round trips.
_BULK_KEYS = 100
_RISK_AREAS = f"""SELECT area_code, level, {_EPOCH.format("valid_from")} AS since,
    {_EPOCH.format("valid_until")} AS until FROM risk_areas"""
_ON_CONFLICT = """ON CONFLICT (pseudonym) DO UPDATE SET
    colour = excluded.colour, reasons = excluded.reasons, popup = excluded.popup,
    vaccine_doses = excluded.vaccine_doses, vaccine_complete = excluded.vaccine_complete,
    last_test_at = excluded.last_test_at, last_test_result = excluded.last_test_result,
    ruleset = excluded.ruleset, computed_at = excluded.computed_at, valid_until = excluded.valid_until"""
_INSERT = """INSERT INTO statuses (pseudonym, colour, reasons, popup, vaccine_doses, vaccine_complete, last_test_at,
                      last_test_result, ruleset, computed_at, valid_until)"""
_UPSERT = f"""{_INSERT}
SELECT p, c, string_to_array(r, ','), pop, d, vc, to_timestamp(lt), ltr, $9, to_timestamp($10), to_timestamp(vu)
FROM unnest($1::bytea[], $2::text[], $3::text[], $4::bool[], $5::int[], $6::bool[], $7::bigint[], $8::text[],
            $11::bigint[]) AS t(p, c, r, pop, d, vc, lt, ltr, vu)
{_ON_CONFLICT}"""
# Many statuses go by COPY into a temporary table and one upsert from it: asyncpg encodes a record per
# row far cheaper than eleven arrays (an isinstance check through abc per element: 15% of a
# recompute's Python time), and Postgres reads it faster than unnest. Measured per 20,000 statuses:
# 0.31-0.47 s through arrays, 0.25-0.3 s staged.
_STAGE = """CREATE TEMPORARY TABLE IF NOT EXISTS status_stage (
    p bytea, c text, r text, pop boolean, d integer, vc boolean, lt bigint, ltr text, vu bigint
) ON COMMIT DELETE ROWS;
DELETE FROM status_stage"""
_STAGE_COLUMNS = ("p", "c", "r", "pop", "d", "vc", "lt", "ltr", "vu")
_UPSERT_STAGED = f"""{_INSERT}
SELECT p, c, string_to_array(r, ','), pop, d, vc, to_timestamp(lt), ltr, $1, to_timestamp($2), to_timestamp(vu)
FROM status_stage
{_ON_CONFLICT}"""


@dataclass(slots=True)
class Fetched:
    """One chunk's subjects and their records, as `fetch_records` read them."""

    subjects: list[asyncpg.Record]
    vaccinations: dict[bytes, list[Vaccination]]
    tests: dict[bytes, list[NucleicTest]]
    arrivals: dict[bytes, list[Arrival]]
    designations: dict[bytes, list[Designation]]
    overrides: dict[bytes, Override]


@contextlib.asynccontextmanager
async def _bulk_plans(conn: Connection, keys: int) -> AsyncIterator[None]:
    if keys < _BULK_KEYS:
        yield
        return
    async with conn.transaction():
        await conn.execute(_PLAN_SETTINGS)
        yield


async def load_risk_areas(conn: Connection | asyncpg.Pool) -> RiskAreaIndex:
    rows = await conn.fetch(_RISK_AREAS)
    return RiskAreaIndex([RiskArea(r["area_code"], r["level"], r["since"], r["until"]) for r in rows])


async def recompute_subjects(
    conn: Connection,
    pseudonyms: Sequence[bytes],
    ruleset: RuleSet,
    now: int,
    areas: RiskAreaIndex | None = None,
) -> dict[bytes, StatusEntry]:
    """Evaluate and store the status of each known subject among `pseudonyms`; unknown ones are skipped."""
    fetched = await fetch_records(conn, pseudonyms, now)
    if not fetched.subjects:
        return {}
    if areas is None:
        areas = await load_risk_areas(conn)
    entries = evaluate_fetched(fetched, areas, ruleset, now)
    await store_statuses(conn, entries, ruleset.version, now)
    return entries


async def fetch_records(conn: Connection, pseudonyms: Sequence[bytes], now: int) -> Fetched:
    """Every record of the known subjects among `pseudonyms`, one query per table."""
    keys = list(dict.fromkeys(pseudonyms))  # a key twice would join its records twice
    async with _bulk_plans(conn, len(keys)):
        subjects = await conn.fetch(_SUBJECTS, keys)
        if not subjects:
            return Fetched([], {}, {}, {}, {}, {})
        vaccinations: defaultdict[bytes, list[Vaccination]] = defaultdict(list)
        for p, product, dose, at in await conn.fetch(_VACCINATIONS, keys):
            vaccinations[p].append(Vaccination(product, dose, at))
        tests: defaultdict[bytes, list[NucleicTest]] = defaultdict(list)
        for p, sampled, result, reported in await conn.fetch(_TESTS, keys):
            tests[p].append(NucleicTest(sampled, result, reported))
        arrivals: defaultdict[bytes, list[Arrival]] = defaultdict(list)
        for p, code, at, mode in await conn.fetch(_ARRIVALS, keys):
            arrivals[p].append(Arrival(code, at, mode))
        designations: defaultdict[bytes, list[Designation]] = defaultdict(list)
        for p, kind, since, until in await conn.fetch(_DESIGNATIONS, keys):
            designations[p].append(Designation(kind, since, until))
        overrides = {
            p: Override(colour, reason, until) for p, colour, reason, until in await conn.fetch(_OVERRIDES, keys, now)
        }
    return Fetched(subjects, vaccinations, tests, arrivals, designations, overrides)


def evaluate_fetched(
    fetched: Fetched, areas: RiskAreaIndex, ruleset: RuleSet, now: int, subjects: slice = slice(None)
) -> dict[bytes, StatusEntry]:
    """Statuses of the fetched subjects (a slice of them, so a caller can yield between slices)."""
    vaccinations, tests, arrivals = fetched.vaccinations, fetched.tests, fetched.arrivals
    designations, overrides = fetched.designations, fetched.overrides
    entries: dict[bytes, StatusEntry] = {}
    for p, id_type, masked_name, masked_number in fetched.subjects[subjects]:
        records = SubjectRecords(
            tuple(vaccinations.get(p, ())),
            tuple(tests.get(p, ())),
            tuple(arrivals.get(p, ())),
            tuple(designations.get(p, ())),
            overrides.get(p),
        )
        e = evaluate(records, areas, ruleset, now)
        # Positional: this runs once per subject, and keywords cost a measurable share.
        entries[p] = StatusEntry(
            e.colour,
            e.reasons,
            e.popup,
            e.vaccine_doses,
            e.vaccine_complete,
            e.last_test_at,
            e.last_test_result,
            e.ruleset,
            now,
            e.valid_until,
            id_type,
            masked_name,
            masked_number,
        )
    return entries


async def store_statuses(conn: Connection, entries: dict[bytes, StatusEntry], ruleset_version: str, now: int) -> None:
    if len(entries) >= _BULK_KEYS:
        await _store_staged(conn, entries, ruleset_version, now)
        return
    values = list(entries.values())
    await conn.execute(
        _UPSERT,
        list(entries),
        [e.colour for e in values],
        [",".join(e.reasons) for e in values],
        [e.popup for e in values],
        [e.vaccine_doses for e in values],
        [e.vaccine_complete for e in values],
        [e.last_test_at for e in values],
        [e.last_test_result for e in values],
        ruleset_version,
        now,
        [e.valid_until for e in values],
    )


async def _store_staged(conn: Connection, entries: dict[bytes, StatusEntry], ruleset_version: str, now: int) -> None:
    records = [
        (
            p,
            e.colour,
            ",".join(e.reasons),
            e.popup,
            e.vaccine_doses,
            e.vaccine_complete,
            e.last_test_at,
            e.last_test_result,
            e.valid_until,
        )
        for p, e in entries.items()
    ]
    async with _bulk_plans(conn, len(records)):
        # Emptied first: inside a caller's transaction, ON COMMIT has not emptied it yet.
        await conn.execute(_STAGE)
        await conn.copy_records_to_table("status_stage", records=records, columns=_STAGE_COLUMNS)
        await conn.execute(_UPSERT_STAGED, ruleset_version, now)
