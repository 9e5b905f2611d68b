"""People who arrived from a risk area, their statuses computed through the write path (for the alert
route's tests and the code page's)."""

from __future__ import annotations

import time

import asyncpg
from aiohttp import web

from app.http.appkeys import PUBLISHER
from app.identity import Identity, mask_name, mask_number, pseudonym

HOUR = 3600
HIGH_RISK = "310115"


async def high_risk_area(db: asyncpg.Connection) -> None:
    await db.execute(
        """INSERT INTO risk_areas (area_code, level, valid_from, valid_until)
           VALUES ($1, 'high', now() - interval '10 days', now() + interval '20 days')""",
        HIGH_RISK,
    )
    await db.execute("UPDATE input_revisions SET value = value + 1 WHERE name = 'risk_areas'")


async def arrival(
    app: web.Application, db: asyncpg.Connection, pepper: bytes, number: str, *, hours_ago: int, tests: tuple[int, ...]
) -> bytes:
    """A person who arrived from the high-risk area `hours_ago`, with negative tests sampled at those
    offsets from arrival (hours, negative before arrival); the status recomputed."""
    now = int(time.time())
    arrived = now - hours_ago * HOUR
    subject = pseudonym(Identity("resident", number), pepper)
    await db.execute(
        "INSERT INTO subjects (pseudonym, id_type, masked_name, masked_number) VALUES ($1, 'resident', $2, $3)",
        subject,
        mask_name("李四"),
        mask_number(number),
    )
    await db.execute(
        """INSERT INTO travel_arrivals (pseudonym, area_code, arrived_at, mode)
           VALUES ($1, $2, to_timestamp($3), 'rail')""",
        subject,
        HIGH_RISK,
        arrived,
    )
    for offset in tests:
        await db.execute(
            """INSERT INTO nucleic_tests (pseudonym, sampled_at, result, lab)
               VALUES ($1, to_timestamp($2), 'negative', 'lab-1')""",
            subject,
            arrived + offset * HOUR,
        )
    await app[PUBLISHER].recompute(db, [subject], now)
    return subject
