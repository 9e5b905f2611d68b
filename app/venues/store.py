"""Venues, check-ins and exposure designations in Postgres. Only pseudonyms; never a number."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from app.db import Conn
from app.venues.model import Designate, ExposureQuery, VenueRequest

Pool = asyncpg.Pool | Conn


@dataclass(frozen=True, slots=True)
class Venue:
    id: str
    name: str
    address: str
    area_code: str
    serial: int
    client_id: int
    created_at: datetime

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "address": self.address, "area_code": self.area_code}


@dataclass(frozen=True, slots=True)
class Exposure:
    visits: int
    people: int


@dataclass(frozen=True, slots=True)
class Designation:
    batch_id: int
    created: bool  # False: the same query designated before; that batch is the answer
    rows: int


_COLUMNS = "id, name, address, area_code, serial, client_id, created_at"


def _venue(row: asyncpg.Record) -> Venue:
    return Venue(*(row[c] for c in ("id", "name", "address", "area_code", "serial", "client_id", "created_at")))


def new_venue_id() -> str:
    return "v" + secrets.token_urlsafe(12)  # 16 characters, 96 random bits


async def register_venue(conn: Conn, request: VenueRequest, client_id: int, actor: str) -> Venue:
    async with conn.transaction():
        row = await conn.fetchrow(
            f"""INSERT INTO venues (id, name, address, area_code, client_id) VALUES ($1, $2, $3, $4, $5)
                RETURNING {_COLUMNS}""",
            new_venue_id(),
            request.name,
            request.address,
            request.area_code,
            client_id,
        )
        assert row is not None
        await conn.execute(
            "INSERT INTO audit_log (actor, action, detail) VALUES ($1, 'venue.register', $2)",
            actor,
            {"venue_id": row["id"], "client_id": client_id, "area_code": request.area_code},
        )
    return _venue(row)


async def reissue_venue(conn: Conn, venue_id: str, actor: str) -> Venue | None:
    """A new code serial: posters printed before stop checking anyone in."""
    async with conn.transaction():
        row = await conn.fetchrow(f"UPDATE venues SET serial = serial + 1 WHERE id = $1 RETURNING {_COLUMNS}", venue_id)
        if row is None:
            return None
        await conn.execute(
            "INSERT INTO audit_log (actor, action, detail) VALUES ($1, 'venue.reissue', $2)",
            actor,
            {"venue_id": venue_id, "serial": row["serial"]},
        )
    return _venue(row)


async def venue_by_id(pool: Pool, venue_id: str) -> Venue | None:
    row = await pool.fetchrow(f"SELECT {_COLUMNS} FROM venues WHERE id = $1", venue_id)
    return None if row is None else _venue(row)


async def record_visit(
    pool: Pool, venue_id: str, subject: bytes, id_type: str, masked_number: str, client_id: int, at: int
) -> None:
    await pool.execute(
        """INSERT INTO venue_visits (visited_at, venue_id, pseudonym, id_type, masked_number, client_id)
           VALUES ($1, $2, $3, $4, $5, $6)""",
        datetime.fromtimestamp(at, UTC),
        venue_id,
        subject,
        id_type,
        masked_number,
        client_id,
    )


def _window(query: ExposureQuery) -> tuple[datetime, datetime]:
    return datetime.fromtimestamp(query.start, UTC), datetime.fromtimestamp(query.end, UTC)


async def exposure(pool: Pool, query: ExposureQuery) -> Exposure:
    row = await pool.fetchrow(
        """SELECT count(*) AS visits, count(DISTINCT pseudonym) AS people FROM venue_visits
           WHERE venue_id = $1 AND visited_at >= $2 AND visited_at < $3""",
        query.venue_id,
        *_window(query),
    )
    assert row is not None
    return Exposure(row["visits"], row["people"])


async def stage_designation(
    conn: Conn, query: ExposureQuery, designate: Designate, client_id: int, authority: str
) -> Designation:
    """The visitors as a `designation` batch in state `received`, staged inside Postgres (the rows go from
    venue_visits to staging without passing through this process), for the batch processor to merge
    and recompute like any upload. The same query twice returns the first batch."""
    key = f"exposure:{query.venue_id}:{query.start}:{query.end}:{designate.kind}:{designate.days}"
    reason = designate.reason or f"visited venue {query.venue_id}"
    async with conn.transaction():
        found = await conn.fetchrow(
            "SELECT id, rows_read FROM batches WHERE client_id = $1 AND idempotency_key = $2", client_id, key
        )
        if found is not None:
            return Designation(found["id"], False, found["rows_read"])
        batch_id = await conn.fetchval(
            """INSERT INTO batches (client_id, kind, format, idempotency_key) VALUES ($1, 'designation', 'visits', $2)
               RETURNING id""",
            client_id,
            key,
        )
        # One row per person: designated from their first visit in the window for `days` days.
        staged = await conn.fetchval(
            """WITH people AS (
                   SELECT pseudonym, min(id_type) AS id_type, min(masked_number) AS masked_number,
                          min(visited_at) AS first_visit
                   FROM venue_visits WHERE venue_id = $2 AND visited_at >= $3 AND visited_at < $4
                   GROUP BY pseudonym
               ), inserted AS (
                   INSERT INTO staging_designation (batch_id, row_no, pseudonym, id_type, masked_number, kind,
                                                    valid_from, valid_until, authority, reason, action)
                   SELECT $1, row_number() OVER (ORDER BY first_visit, pseudonym), pseudonym, id_type,
                          masked_number, $5, first_visit, first_visit + $6::interval, $7, $8, 'upsert'
                   FROM people
                   RETURNING 1
               )
               SELECT count(*) FROM inserted""",
            batch_id,
            query.venue_id,
            *_window(query),
            designate.kind,
            timedelta(days=designate.days),
            authority,
            reason,
        )
        await conn.execute("UPDATE batches SET rows_read = $2, rejected = 0 WHERE id = $1", batch_id, staged)
        await conn.execute(
            "INSERT INTO audit_log (actor, action, detail) VALUES ($1, 'exposure.designate', $2)",
            authority,
            {
                "batch_id": batch_id,
                "client_id": client_id,
                "venue_id": query.venue_id,
                "from": query.start,
                "to": query.end,
                "kind": designate.kind,
                "days": designate.days,
                "people": staged,
            },
        )
    return Designation(batch_id, True, staged)
