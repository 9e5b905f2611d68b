"""Recompute in bulk (generic plans, staged status upsert) stores exactly what one subject at a time does."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest
from redis.asyncio import Redis

from app.dev.demo import load_population
from app.dev.population import synthetic_people
from app.rules.ruleset import load_ruleset
from app.settings import Settings
from app.statuses import publish
from app.statuses.compute import load_risk_areas
from app.statuses.publish import StatusPublisher
from cache.entry import unpack
from cache.keys import status_field
from cache.status_writer import StatusWriter

_ROWS = """SELECT pseudonym, colour, reasons, popup, vaccine_doses, vaccine_complete, last_test_at, last_test_result,
                  ruleset, computed_at, valid_until, version FROM statuses ORDER BY pseudonym"""


@pytest.mark.slow
async def test_bulk_and_single_recompute_store_the_same_statuses(
    db: asyncpg.Connection, redis: Redis, settings: Settings
) -> None:
    people = list(synthetic_people(300, 7))
    now = int(time.time())
    pseudonyms = await load_population(db, people, settings.pepper, now)
    publisher = StatusPublisher(StatusWriter(redis), load_ruleset(settings.ruleset))
    areas = await load_risk_areas(db)

    bulk = await publisher.recompute(db, [*pseudonyms, pseudonyms[0]], now, areas)  # a key twice counts once
    bulk_rows = await db.fetch(_ROWS)
    await db.execute("DELETE FROM statuses")
    single = {}
    for p in pseudonyms:
        single.update(await publisher.recompute(db, [p], now, areas))

    assert len(bulk) == 300
    assert bulk == single
    assert [dict(r) for r in await db.fetch(_ROWS)] == [dict(r) for r in bulk_rows]
    assert {r["colour"] for r in bulk_rows} == {"green", "yellow", "red"}


async def test_bulk_stores_twice_in_one_outer_transaction(
    db: asyncpg.Connection, redis: Redis, settings: Settings
) -> None:
    people = list(synthetic_people(250, 8))
    now = int(time.time())
    pseudonyms = await load_population(db, people, settings.pepper, now)
    publisher = StatusPublisher(StatusWriter(redis), load_ruleset(settings.ruleset))

    async with db.transaction():
        first = await publisher.recompute(db, pseudonyms[:150], now)
        second = await publisher.recompute(db, pseudonyms[100:], now + 1)

    assert len(first) == 150
    assert len(second) == 150
    rows = {bytes(r["pseudonym"]): r for r in await db.fetch(_ROWS)}
    assert len(rows) == 250
    # The overlap was written by the second call, the rest by whichever call covered it.
    assert {int(rows[p]["computed_at"].timestamp()) for p in pseudonyms[100:]} == {now + 1}
    assert {int(rows[p]["computed_at"].timestamp()) for p in pseudonyms[:100]} == {now}


async def test_pages_go_through_one_pipeline(
    db: asyncpg.Connection, redis: Redis, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The next page is computed while an earlier chunk still waits to be published: no drain per page."""
    people = list(synthetic_people(120, 9))
    now = int(time.time())
    pseudonyms = sorted(await load_population(db, people, settings.pepper, now))
    monkeypatch.setattr(publish, "RECOMPUTE_CHUNK", 50)  # pages of 60: chunks of 50 and 10 each
    computed = 0
    second_page_computed = asyncio.Event()
    first_publish_held = False

    async def pause(point: str) -> None:
        nonlocal computed, first_publish_held
        if point == "computed":
            computed += 1
            if computed == 3:  # the second page's first chunk
                second_page_computed.set()
        elif point == "stored" and not first_publish_held:
            first_publish_held = True
            async with asyncio.timeout(10):  # a refresh that drains each page never gets there
                await second_page_computed.wait()

    async def pages() -> AsyncIterator[list[bytes]]:
        for page in (pseudonyms[:60], pseudonyms[60:]):
            await db.fetchval("SELECT 1")  # read on the refresh's connection, between its chunks' reads
            yield page

    publisher = StatusPublisher(StatusWriter(redis), load_ruleset(settings.ruleset), pause=pause)
    assert await publisher.refresh(db, pages(), now) == 120

    assert second_page_computed.is_set()
    assert await db.fetchval("SELECT count(*) FROM statuses") == 120
    cached = [await redis.hget(*status_field(p)) for p in pseudonyms]
    assert all(isinstance(raw, bytes) and unpack(raw).colour for raw in cached)
