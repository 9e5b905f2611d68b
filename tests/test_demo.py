"""The demo population: valid synthetic people, every situation, loaded idempotently, no raw numbers stored."""

from __future__ import annotations

import time
from datetime import date

import asyncpg
from redis.asyncio import Redis

from app.dev.demo import load_population
from app.dev.population import SITUATIONS, synthetic_people
from app.identity import Identity, mask_name, mask_number, parse_identity, pseudonym
from app.rules.ruleset import load_ruleset
from app.settings import Settings
from app.statuses.publish import StatusPublisher
from cache.status_writer import StatusWriter

RECORD_TABLES = ("vaccinations", "nucleic_tests", "travel_arrivals", "designations")


def test_synthetic_people_are_valid_unique_and_deterministic() -> None:
    people = list(synthetic_people(2000, 42))
    assert people == list(synthetic_people(2000, 42))
    assert people != list(synthetic_people(2000, 43))
    assert len({p.number for p in people}) == 2000
    for person in people:
        assert parse_identity("resident", person.number, today=date.today()).number == person.number
        assert person.name
    # Every situation occurs, roughly in its share.
    counts = {name: sum(p.situation == name for p in people) for name, _ in SITUATIONS}
    for name, share in SITUATIONS:
        assert counts[name] > 0, name
        assert abs(counts[name] / 2000 - share) < 0.05, (name, counts[name])


async def counts(db: asyncpg.Connection) -> dict[str, int]:
    return {t: await db.fetchval(f"SELECT count(*) FROM {t}") for t in ("subjects", *RECORD_TABLES, "risk_areas")}


async def test_load_population_stores_pseudonyms_and_masks_only(db: asyncpg.Connection, settings: Settings) -> None:
    people = list(synthetic_people(200, 1))
    now = int(time.time())
    pseudonyms = await load_population(db, people, settings.pepper, now)
    assert pseudonyms == [pseudonym(Identity("resident", p.number), settings.pepper) for p in people]
    rows = {bytes(r["pseudonym"]): r for r in await db.fetch("SELECT * FROM subjects")}
    assert len(rows) == 200
    for person, p in zip(people, pseudonyms, strict=True):
        assert (rows[p]["id_type"], rows[p]["masked_name"], rows[p]["masked_number"]) == (
            "resident",
            mask_name(person.name),
            mask_number(person.number),
        )
    # No raw number and no full name anywhere in what was stored.
    dump = ""
    for table in ("subjects", *RECORD_TABLES):
        dump += str([tuple(r) for r in await db.fetch(f"SELECT * FROM {table}")])
    assert not any(p.number in dump for p in people)
    assert not any(len(p.name) > 1 and p.name in dump for p in people)


async def test_loading_again_replaces_instead_of_adding(db: asyncpg.Connection, settings: Settings) -> None:
    people = list(synthetic_people(150, 2))
    now = int(time.time())
    await load_population(db, people, settings.pepper, now)
    first = await counts(db)
    assert all(first[t] > 0 for t in first), first
    await load_population(db, people, settings.pepper, now + 60)
    assert await counts(db) == first


async def test_every_colour_and_the_popup_come_out_of_the_rules(
    db: asyncpg.Connection, redis: Redis, settings: Settings
) -> None:
    people = list(synthetic_people(200, 3))
    now = int(time.time())
    pseudonyms = await load_population(db, people, settings.pepper, now)
    entries = await StatusPublisher(StatusWriter(redis), load_ruleset(settings.ruleset)).recompute(db, pseudonyms, now)
    assert len(entries) == 200
    by_situation: dict[str, set[tuple[str, bool]]] = {}
    for person, p in zip(people, pseudonyms, strict=True):
        by_situation.setdefault(person.situation, set()).add((entries[p].colour, entries[p].popup))
        assert entries[p].valid_until > now
    assert by_situation["vaccinated_negative"] == {("green", False)}
    assert by_situation["arrival_pending"] == {("yellow", True)}
    assert by_situation["secondary_contact"] == {("yellow", False)}
    for red in ("close_contact", "quarantine", "positive_test", "confirmed"):
        assert by_situation[red] == {("red", False)}, red
    stored = await db.fetch("SELECT colour, bool_or(popup) AS popup FROM statuses GROUP BY colour")
    assert {r["colour"] for r in stored} == {"green", "yellow", "red"}
    assert any(r["popup"] for r in stored)
