"""Rebuilding Redis from Postgres: every status entry, recomputed where it has expired."""

from __future__ import annotations

import time

from redis.asyncio import Redis
from tqdm import tqdm

from app.db import connect
from app.rules.ruleset import load_ruleset
from app.settings import Settings
from app.statuses.compute import load_risk_areas, recompute_subjects
from app.statuses.loader import STATUS_SELECT, entry_from_row, is_fresh
from cache.connection import open_redis
from cache.status_cache import writer_cache

CHUNK = 5000

_PAGE = STATUS_SELECT + "WHERE sub.pseudonym > $1 ORDER BY sub.pseudonym LIMIT $2"


async def warm_cache(settings: Settings, *, progress: bool = False) -> int:
    """Walk every subject in pseudonym order; returns the number of entries written to Redis."""
    ruleset = load_ruleset(settings.ruleset)
    conn = await connect(settings.database_url)
    redis: Redis = open_redis(settings.redis_url)
    cache = writer_cache(redis)
    written = 0
    try:
        total = await conn.fetchval("SELECT count(*) FROM subjects")
        areas = await load_risk_areas(conn)
        after = b""
        with tqdm(total=total, unit="people", disable=not progress) as bar:
            while rows := await conn.fetch(_PAGE, after, CHUNK):
                now = int(time.time())
                fresh = {bytes(r["pseudonym"]): entry_from_row(r) for r in rows if is_fresh(r, now)}
                stale = [bytes(r["pseudonym"]) for r in rows if bytes(r["pseudonym"]) not in fresh]
                if stale:
                    fresh.update(await recompute_subjects(conn, stale, ruleset, now, areas))
                written += await cache.put_many(fresh)
                after = bytes(rows[-1]["pseudonym"])
                bar.update(len(rows))
    finally:
        await redis.aclose()
        await conn.close()
    return written
