"""Recomputing statuses: records from Postgres, through the rules engine, back into `statuses`.

Set-based: one query per record kind for a whole chunk of people, one upsert for their statuses.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
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
_SUBJECTS = "SELECT pseudonym, id_type, masked_name, masked_number FROM subjects WHERE pseudonym = ANY($1::bytea[])"
_VACCINATIONS = f"""SELECT pseudonym, product, dose, {_EPOCH.format("vaccinated_on::timestamptz")} AS at
    FROM vaccinations WHERE pseudonym = ANY($1::bytea[])"""
_TESTS = f"""SELECT pseudonym, {_EPOCH.format("sampled_at")} AS sampled, result,
    {_EPOCH.format("reported_at")} AS reported FROM nucleic_tests WHERE pseudonym = ANY($1::bytea[])"""
_ARRIVALS = f"""SELECT pseudonym, area_code, {_EPOCH.format("arrived_at")} AS at, mode
    FROM travel_arrivals WHERE pseudonym = ANY($1::bytea[])"""
_DESIGNATIONS = f"""SELECT pseudonym, kind, {_EPOCH.format("valid_from")} AS since,
    {_EPOCH.format("valid_until")} AS until FROM designations WHERE pseudonym = ANY($1::bytea[])"""
_OVERRIDES = f"""SELECT DISTINCT ON (pseudonym) pseudonym, colour, reason, {_EPOCH.format("expires_at")} AS until
    FROM status_overrides WHERE pseudonym = ANY($1::bytea[]) AND expires_at > to_timestamp($2)
    ORDER BY pseudonym, created_at DESC"""
_RISK_AREAS = f"""SELECT area_code, level, {_EPOCH.format("valid_from")} AS since,
    {_EPOCH.format("valid_until")} AS until FROM risk_areas"""
_UPSERT = """
INSERT INTO statuses (pseudonym, colour, reasons, popup, vaccine_doses, vaccine_complete, last_test_at,
                      last_test_result, ruleset, computed_at, valid_until)
SELECT p, c, string_to_array(r, ','), pop, d, vc, to_timestamp(lt), ltr, $9, to_timestamp($10), to_timestamp(vu)
FROM unnest($1::bytea[], $2::text[], $3::text[], $4::bool[], $5::int[], $6::bool[], $7::bigint[], $8::text[],
            $11::bigint[]) AS t(p, c, r, pop, d, vc, lt, ltr, vu)
ON CONFLICT (pseudonym) DO UPDATE SET
    colour = excluded.colour, reasons = excluded.reasons, popup = excluded.popup,
    vaccine_doses = excluded.vaccine_doses, vaccine_complete = excluded.vaccine_complete,
    last_test_at = excluded.last_test_at, last_test_result = excluded.last_test_result,
    ruleset = excluded.ruleset, computed_at = excluded.computed_at, valid_until = excluded.valid_until
"""


@dataclass(slots=True)
class _Collected:
    vaccinations: list[Vaccination]
    tests: list[NucleicTest]
    arrivals: list[Arrival]
    designations: list[Designation]


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
    keys = list(pseudonyms)
    subjects = {bytes(r["pseudonym"]): r for r in await conn.fetch(_SUBJECTS, keys)}
    if not subjects:
        return {}
    if areas is None:
        areas = await load_risk_areas(conn)
    collected: defaultdict[bytes, _Collected] = defaultdict(lambda: _Collected([], [], [], []))
    for r in await conn.fetch(_VACCINATIONS, keys):
        collected[bytes(r["pseudonym"])].vaccinations.append(Vaccination(r["product"], r["dose"], r["at"]))
    for r in await conn.fetch(_TESTS, keys):
        collected[bytes(r["pseudonym"])].tests.append(NucleicTest(r["sampled"], r["result"], r["reported"]))
    for r in await conn.fetch(_ARRIVALS, keys):
        collected[bytes(r["pseudonym"])].arrivals.append(Arrival(r["area_code"], r["at"], r["mode"]))
    for r in await conn.fetch(_DESIGNATIONS, keys):
        collected[bytes(r["pseudonym"])].designations.append(Designation(r["kind"], r["since"], r["until"]))
    overrides = {
        bytes(r["pseudonym"]): Override(r["colour"], r["reason"], r["until"])
        for r in await conn.fetch(_OVERRIDES, keys, now)
    }

    entries: dict[bytes, StatusEntry] = {}
    empty = _Collected([], [], [], [])
    for p, subject in subjects.items():
        c = collected.get(p, empty)
        records = SubjectRecords(
            tuple(c.vaccinations), tuple(c.tests), tuple(c.arrivals), tuple(c.designations), overrides.get(p)
        )
        e = evaluate(records, areas, ruleset, now)
        entries[p] = StatusEntry(
            colour=e.colour,
            reasons=e.reasons,
            popup=e.popup,
            vaccine_doses=e.vaccine_doses,
            vaccine_complete=e.vaccine_complete,
            last_test_at=e.last_test_at,
            last_test_result=e.last_test_result,
            ruleset=e.ruleset,
            computed_at=now,
            valid_until=e.valid_until,
            id_type=subject["id_type"],
            masked_name=subject["masked_name"],
            masked_number=subject["masked_number"],
        )
    await store_statuses(conn, entries, ruleset.version, now)
    return entries


async def store_statuses(conn: Connection, entries: dict[bytes, StatusEntry], ruleset_version: str, now: int) -> None:
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
