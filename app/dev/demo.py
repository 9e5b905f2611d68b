"""`healthcode demo`: a ready-to-try service: schema, signing key, clients and a synthetic population."""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import asyncpg
from tqdm import tqdm

from app.clients import add_client, hash_secret
from app.db import migrate
from app.dev.population import Person, synthetic_people
from app.identity import Identity, mask_name, mask_number, pseudonym
from app.keys import lifecycle as keys
from app.scopes import AGENCY_SCOPES, CLIENT_KINDS
from app.settings import Settings
from app.statuses.compute import load_risk_areas
from app.statuses.standalone import open_publisher
from app.web.backend import write_demo_people

# Demo rows carry this batch id so that a second `demo` run replaces them instead of adding more.
DEMO_BATCH_ID: Final = 0
CHUNK: Final = 5000
HOUR: Final = 3600
DAY: Final = 24 * HOUR
HIGH_RISK_AREA: Final = "310115"
DEMO_RISK_AREAS: Final = (("310115", "high"), ("110105", "medium"), ("440305", "low"))

_RECORD_TABLES: Final = ("vaccinations", "nucleic_tests", "travel_arrivals", "designations")


def _ts(epoch: int) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def _records(person: Person, now: int) -> dict[str, list[tuple[Any, ...]]]:
    """Rows per table (without the pseudonym) that put a person in their situation at `now`."""
    out: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    s = person.situation
    if s not in ("unvaccinated", "partly_vaccinated"):
        out["vaccinations"] += [("sinovac-coronavac", 1, _ts(now - 200 * DAY).date()),
                                ("sinovac-coronavac", 2, _ts(now - 170 * DAY).date())]  # fmt: skip
    if s == "partly_vaccinated":
        out["vaccinations"].append(("sinopharm-bbibp", 1, _ts(now - 30 * DAY).date()))
    if s in ("vaccinated_negative", "unvaccinated", "partly_vaccinated"):
        out["nucleic_tests"].append((_ts(now - (1 + person.index % 5) * DAY), "negative", "demo-lab"))
    if s in ("arrival_cleared", "arrival_pending"):
        arrived = now - (3 * DAY if s == "arrival_cleared" else DAY)
        out["travel_arrivals"].append((HIGH_RISK_AREA, _ts(arrived), "rail"))
        if s == "arrival_cleared":
            out["nucleic_tests"] += [(_ts(arrived - DAY), "negative", "demo-lab"),
                                     (_ts(arrived + 10 * HOUR), "negative", "demo-lab")]  # fmt: skip
    if s == "positive_test":
        out["nucleic_tests"].append((_ts(now - 3 * DAY), "positive", "demo-lab"))
    designation = {
        "secondary_contact": (2 * DAY, 5 * DAY),
        "close_contact": (DAY, 6 * DAY),
        "quarantine": (3 * DAY, 4 * DAY),
        "confirmed": (5 * DAY, None),
    }.get(s)
    if designation:
        since, remaining = designation
        until = None if remaining is None else _ts(now + remaining)
        out["designations"].append((s, _ts(now - since), until, "demo-cdc"))
    return out


_INSERTS: Final = {
    "subjects": """INSERT INTO subjects (pseudonym, id_type, masked_name, masked_number)
        SELECT * FROM unnest($1::bytea[], $2::text[], $3::text[], $4::text[])
        ON CONFLICT (pseudonym) DO UPDATE SET masked_name = excluded.masked_name, updated_at = now(),
            revision = subjects.revision + 1""",
    "vaccinations": """INSERT INTO vaccinations (pseudonym, product, dose, vaccinated_on, batch_id)
        SELECT p, a, b, c, 0 FROM unnest($1::bytea[], $2::text[], $3::int[], $4::date[]) AS t(p, a, b, c)
        ON CONFLICT DO NOTHING""",
    "nucleic_tests": """INSERT INTO nucleic_tests (pseudonym, sampled_at, result, lab, batch_id)
        SELECT p, a, b, c, 0 FROM unnest($1::bytea[], $2::timestamptz[], $3::text[], $4::text[]) AS t(p, a, b, c)
        ON CONFLICT DO NOTHING""",
    "travel_arrivals": """INSERT INTO travel_arrivals (pseudonym, area_code, arrived_at, mode, batch_id)
        SELECT p, a, b, c, 0 FROM unnest($1::bytea[], $2::text[], $3::timestamptz[], $4::text[]) AS t(p, a, b, c)
        ON CONFLICT DO NOTHING""",
    "designations": """INSERT INTO designations (pseudonym, kind, valid_from, valid_until, authority, batch_id)
        SELECT p, a, b, c, d, 0
        FROM unnest($1::bytea[], $2::text[], $3::timestamptz[], $4::timestamptz[], $5::text[]) AS t(p, a, b, c, d)
        ON CONFLICT DO NOTHING""",
}


async def _insert(conn: asyncpg.Connection, table: str, rows: list[tuple[Any, ...]]) -> None:
    if rows:
        await conn.execute(_INSERTS[table], *(list(column) for column in zip(*rows, strict=True)))


async def load_population(conn: asyncpg.Connection, people: Iterable[Person], pepper: bytes, now: int) -> list[bytes]:
    """Insert people and their records (replacing earlier demo records); return their pseudonyms."""
    async with conn.transaction():
        for table in _RECORD_TABLES:
            await conn.execute(f"DELETE FROM {table} WHERE batch_id = $1", DEMO_BATCH_ID)
        await conn.execute("DELETE FROM risk_areas WHERE batch_id = $1", DEMO_BATCH_ID)
        await conn.executemany(
            "INSERT INTO risk_areas (area_code, level, valid_from, valid_until, batch_id) VALUES ($1, $2, $3, $4, $5)",
            [(code, level, _ts(now - 10 * DAY), _ts(now + 20 * DAY), DEMO_BATCH_ID) for code, level in DEMO_RISK_AREAS],
        )
        # Risk areas are everyone's input; their revision is part of every status version.
        await conn.execute("UPDATE input_revisions SET value = value + 1 WHERE name = 'risk_areas'")
    pseudonyms: list[bytes] = []
    chunk: list[Person] = []

    async def flush() -> None:
        subjects: list[tuple[Any, ...]] = []
        rows: defaultdict[str, list[tuple[Any, ...]]] = defaultdict(list)
        for person in chunk:
            identity = Identity("resident", person.number)
            p = pseudonym(identity, pepper)
            pseudonyms.append(p)
            subjects.append((p, "resident", mask_name(person.name), mask_number(person.number)))
            for table, table_rows in _records(person, now).items():
                rows[table] += [(p, *row) for row in table_rows]
        async with conn.transaction():
            await _insert(conn, "subjects", subjects)
            for table in _RECORD_TABLES:
                await _insert(conn, table, rows[table])
        chunk.clear()

    for person in people:
        chunk.append(person)
        if len(chunk) == CHUNK:
            await flush()
    await flush()
    return pseudonyms


async def _demo_clients(conn: asyncpg.Connection, path: Path) -> dict[str, str]:
    """A secret per client kind, kept in a local file beside the demo keys so a rerun reuses them."""
    saved: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    active = {
        bytes(r["key_hash"]) for r in await conn.fetch("SELECT key_hash FROM api_clients WHERE revoked_at IS NULL")
    }
    for kind in CLIENT_KINDS:
        if kind in saved and hash_secret(saved[kind]) in active:
            continue
        name = f"demo-{kind}-{int(time.time())}"
        scopes = AGENCY_SCOPES if kind == "agency" else ()  # every record kind, venues and exposures
        saved[kind] = (await add_client(conn, name, kind, scopes)).secret
    path.write_text(json.dumps(saved, indent=2))
    os.chmod(path, 0o600)
    return saved


async def run_demo(settings: Settings, *, people: int, seed: int, list_people: bool, base_url: str) -> int:
    population = list(synthetic_people(people, seed))
    if list_people:
        by_situation: dict[str, list[str]] = defaultdict(list)
        for person in population:
            by_situation[person.situation].append(person.number)
        for situation, numbers in by_situation.items():
            print(f"{situation:20} {' '.join(numbers[:5])}")
        return 0

    async with open_publisher(settings) as (conn, publisher):
        await migrate(conn)
        active = await conn.fetchval("SELECT thumbprint FROM signing_keys WHERE state = 'active'")
        # A database shared with another checkout may have an active key whose private half is not here.
        if active is None or not keys.private_key_path(settings.keys_dir, active).exists():
            await keys.activate(conn, await keys.new_key(conn, settings.keys_dir))
        secrets = await _demo_clients(conn, settings.keys_dir / "demo-clients.json")
        now = int(time.time())
        print(f"loading {people} synthetic people…", flush=True)
        pseudonyms = await load_population(conn, population, settings.pepper, now)
        areas = await load_risk_areas(conn)

        for start in tqdm(range(0, len(pseudonyms), CHUNK), unit="chunk", desc="statuses"):
            await publisher.recompute(conn, pseudonyms[start : start + CHUNK], now, areas)

    examples = {p.situation: p.number for p in reversed(population)}
    # The reference backend behind the demo's code page serves these people (synthetic numbers only).
    write_demo_people(settings.keys_dir, examples)
    print("\nhealthcode demo is ready")
    print(f"  base URL            {base_url}")
    for kind in CLIENT_KINDS:
        print(f"  {kind + ' key':19} {secrets[kind]}")
    print("  a person per situation (synthetic numbers; `healthcode demo --list` prints more):")
    for situation, number in sorted(examples.items()):
        print(f"    {situation:20} {number}")
    if not population:  # --people 0: schema, key and clients only (make scale loads its people itself)
        return 0
    example = examples.get("arrival_pending") or population[0].number
    code_person = "arrival_pending" if "arrival_pending" in examples else next(iter(examples))
    print("\nscreens (served by `healthcode serve`):")
    print(f"  code page           {base_url}/code/?person={code_person}   (any situation above; &lang=en)")
    print(f"  scanner             {base_url}/scan/   (settings: the scanner key above, for online checks)")
    print(f"  operator console    {base_url}/console/   (sign in with the operator key above)")
    print("\ntry:")
    print(
        f"  curl -s -X POST {base_url}/v1/status -H 'Authorization: Bearer {secrets['citizen-backend']}' "
        f'-H \'Content-Type: application/json\' -d \'{{"id_type": "resident", "id_number": "{example}"}}\''
    )
    return 0
