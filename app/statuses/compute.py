"""Computing statuses: a chunk of people's records read from one snapshot, through the rules engine.

Set-based: one query per record kind for a whole chunk of people. Reading only: storing and publishing
what is computed here is app.statuses.publish, the one write path.

Every read of a chunk runs in one REPEATABLE READ snapshot, together with the subjects' revisions and
the risk areas' revision, so a computed status's version (their sum, sql/004_status_versions.sql)
names exactly the inputs it was computed from.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import asyncpg

from app.db import Conn
from app.declarations.model import china_day
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

_EPOCH = "extract(epoch FROM {})::bigint"
# Keys are joined from an unnested array, not matched with `= ANY($1)`: on hash-partitioned tables an
# ANY over thousands of values costs ~35 ms of planning and pruning per table per 10,000 keys, the
# join ~1 ms (each key one index probe of its own partition). Run with a generic plan (see _fetch).
_KEYS = "unnest($1::bytea[]) AS k(p) JOIN {} ON {}.pseudonym = k.p"
_SUBJECTS = f"""SELECT s.pseudonym, id_type, masked_name, masked_number, revision
    FROM {_KEYS.format("subjects s", "s")}"""
_VACCINATIONS = f"""SELECT r.pseudonym, product, dose, {_EPOCH.format("vaccinated_on::timestamptz")}
    FROM {_KEYS.format("vaccinations r", "r")}"""
_TESTS = f"""SELECT r.pseudonym, {_EPOCH.format("sampled_at")}, result, {_EPOCH.format("reported_at")}
    FROM {_KEYS.format("nucleic_tests r", "r")}"""
_ARRIVALS = f"""SELECT r.pseudonym, area_code, {_EPOCH.format("arrived_at")}, mode, source = 'declared'
    FROM {_KEYS.format("travel_arrivals r", "r")}"""
_DESIGNATIONS = f"""SELECT r.pseudonym, kind, {_EPOCH.format("valid_from")}, {_EPOCH.format("valid_until")}
    FROM {_KEYS.format("designations r", "r")}"""
_OVERRIDES = f"""SELECT DISTINCT ON (r.pseudonym) r.pseudonym, colour, reason, {_EPOCH.format("expires_at")}
    FROM {_KEYS.format("status_overrides r", "r")} WHERE expires_at > to_timestamp($2) AND ended_at IS NULL
    ORDER BY r.pseudonym, created_at DESC"""
# A generic plan keeps the key joins as index probes whatever the array's length (a custom plan of a
# 10,000-key array picks a sort-merge over whole tables); JIT compiling costs ~15 ms per query here
# and these queries run in a few milliseconds.
_PLAN_SETTINGS = "SET LOCAL plan_cache_mode = force_generic_plan; SET LOCAL jit = off"
# Below this many keys the default plans are as good.
_BULK_KEYS = 100
_RISK_AREAS = f"""SELECT area_code, level, {_EPOCH.format("valid_from")} AS since,
    {_EPOCH.format("valid_until")} AS until FROM risk_areas"""
_AREAS_REVISION = "SELECT value FROM input_revisions WHERE name = 'risk_areas'"


def declared_not_held(declared: Sequence[Arrival], agency: Sequence[Arrival]) -> list[Arrival]:
    """Declared arrivals an agency does not hold (the same area on the same day): the agency's wins."""
    held = {(a.area_code, china_day(a.arrived_at)) for a in agency}
    return [a for a in declared if (a.area_code, china_day(a.arrived_at)) not in held]


@dataclass(frozen=True, slots=True)
class Areas:
    """The risk areas as of one snapshot, and their revision (part of every status version)."""

    revision: int
    index: RiskAreaIndex


@dataclass(slots=True)
class Fetched:
    """One chunk's subjects and their records, as `fetch_records` read them from one snapshot."""

    areas: Areas
    subjects: list[asyncpg.Record]
    vaccinations: dict[bytes, list[Vaccination]]
    tests: dict[bytes, list[NucleicTest]]
    arrivals: dict[bytes, list[Arrival]]
    designations: dict[bytes, list[Designation]]
    overrides: dict[bytes, Override]


@contextlib.asynccontextmanager
async def _snapshot(conn: Conn, keys: int) -> AsyncIterator[None]:
    """One REPEATABLE READ snapshot for every read of a chunk (inside a caller's transaction, that one)."""
    if conn.is_in_transaction():
        # The caller's transaction decides the snapshot (tests nest; production code never does).
        async with conn.transaction():
            if keys >= _BULK_KEYS:
                await conn.execute(_PLAN_SETTINGS)
            yield
        return
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        if keys >= _BULK_KEYS:
            await conn.execute(_PLAN_SETTINGS)
        yield


async def _read_areas(conn: Conn, known: Areas | None) -> Areas:
    revision = await conn.fetchval(_AREAS_REVISION)
    if known is not None and known.revision == revision:
        return known
    rows = await conn.fetch(_RISK_AREAS)
    return Areas(revision, RiskAreaIndex([RiskArea(r["area_code"], r["level"], r["since"], r["until"]) for r in rows]))


async def load_risk_areas(conn: Conn | asyncpg.Pool) -> Areas:
    """The current risk areas; pass them to `fetch_records`, which re-reads them only if they changed."""
    if isinstance(conn, asyncpg.Pool):
        async with conn.acquire() as acquired:
            return await load_risk_areas(acquired)
    async with _snapshot(conn, 0):
        return await _read_areas(conn, None)


async def fetch_records(conn: Conn, pseudonyms: Sequence[bytes], now: int, areas: Areas | None = None) -> Fetched:
    """Every record of the known subjects among `pseudonyms`, one query per table, from one snapshot.

    `areas`: risk areas read earlier, kept if their revision is still the snapshot's.
    """
    keys = list(dict.fromkeys(pseudonyms))  # a key twice would join its records twice
    async with _snapshot(conn, len(keys)):
        subjects = await conn.fetch(_SUBJECTS, keys)
        areas = await _read_areas(conn, areas)
        if not subjects:
            return Fetched(areas, [], {}, {}, {}, {}, {})
        vaccinations: defaultdict[bytes, list[Vaccination]] = defaultdict(list)
        for p, product, dose, at in await conn.fetch(_VACCINATIONS, keys):
            vaccinations[p].append(Vaccination(product, dose, at))
        tests: defaultdict[bytes, list[NucleicTest]] = defaultdict(list)
        for p, sampled, result, reported in await conn.fetch(_TESTS, keys):
            tests[p].append(NucleicTest(sampled, result, reported))
        arrivals: defaultdict[bytes, list[Arrival]] = defaultdict(list)
        declared: defaultdict[bytes, list[Arrival]] = defaultdict(list)
        for p, code, at, mode, self_declared in await conn.fetch(_ARRIVALS, keys):
            (declared if self_declared else arrivals)[p].append(Arrival(code, at, mode))
        for p, more in declared.items():
            arrivals[p].extend(declared_not_held(more, arrivals.get(p, ())))
        designations: defaultdict[bytes, list[Designation]] = defaultdict(list)
        for p, kind, since, until in await conn.fetch(_DESIGNATIONS, keys):
            designations[p].append(Designation(kind, since, until))
        overrides = {
            p: Override(colour, reason, until) for p, colour, reason, until in await conn.fetch(_OVERRIDES, keys, now)
        }
    return Fetched(areas, subjects, vaccinations, tests, arrivals, designations, overrides)


def evaluate_fetched(
    fetched: Fetched, ruleset: RuleSet, now: int, subjects: slice = slice(None)
) -> dict[bytes, StatusEntry]:
    """Statuses of the fetched subjects (a slice of them, so a caller can yield between slices)."""
    vaccinations, tests, arrivals = fetched.vaccinations, fetched.tests, fetched.arrivals
    designations, overrides = fetched.designations, fetched.overrides
    areas, areas_revision = fetched.areas.index, fetched.areas.revision
    entries: dict[bytes, StatusEntry] = {}
    for p, id_type, masked_name, masked_number, revision in fetched.subjects[subjects]:
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
            revision + areas_revision,
            id_type,
            masked_name,
            masked_number,
        )
    return entries
