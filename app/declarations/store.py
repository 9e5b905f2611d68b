"""Storing a declaration: the subject, the declaration and its arrivals, in one transaction.

A declaration only adds arrivals: it never removes or changes an agency's record, and an arrival an
agency already holds (the same area on the same day) is not stored again as declared; the rules also
drop a declared arrival that an agency's later upload covers (app.statuses.compute), so agency records
always win. A person's second declaration within a day updates the first (one declaration a day)
instead of adding another; the arrivals the first declared stay, since a declaration clears nothing,
not even an earlier declaration's arrival.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from app.db import Conn
from app.declarations.model import Declaration, arrival_moment
from app.identity import Identity, mask_number

# The row lock of this upsert makes two declarations of one person take turns; the revision bump is
# the one sql/004_status_versions.sql asks of every change to a person's records.
_SUBJECT = """INSERT INTO subjects (pseudonym, id_type, masked_name, masked_number) VALUES ($1, $2, $3, $4)
    ON CONFLICT (pseudonym) DO UPDATE SET revision = subjects.revision + 1, updated_at = now(),
        masked_name = CASE WHEN subjects.masked_name = '' THEN excluded.masked_name ELSE subjects.masked_name END
    """
_RECENT = """SELECT id FROM declarations WHERE pseudonym = $1 AND declared_at > now() - interval '1 day'
    ORDER BY declared_at DESC LIMIT 1"""
# The stored travel is everything declared that day, like the arrivals it holds.
_REPLACE = """UPDATE declarations SET client_id = $2, masked_name = $3, phone_ref = $4,
    travel = (SELECT coalesce(jsonb_agg(DISTINCT e), '[]') FROM jsonb_array_elements(travel || $5::jsonb) e),
    updated_at = now(), updates = updates + 1 WHERE id = $1 AND pseudonym = $6"""
_ADD = """INSERT INTO declarations (pseudonym, client_id, masked_name, phone_ref, travel)
    VALUES ($1, $2, $3, $4, $5) RETURNING id"""
# Skipped where the same area on the same day (China Standard Time) is held already: by an agency, whose
# record wins, or by an earlier declaration (today's date is stored as the moment it was declared).
_ARRIVALS = """INSERT INTO travel_arrivals (pseudonym, area_code, arrived_at, mode, source, declaration_id)
    SELECT $1, t.code, to_timestamp(t.at), t.mode, 'declared', $2
    FROM unnest($3::text[], $4::bigint[], $5::text[]) AS t(code, at, mode)
    WHERE NOT EXISTS (
        SELECT 1 FROM travel_arrivals a
        WHERE a.pseudonym = $1 AND a.area_code = t.code
          AND (a.arrived_at AT TIME ZONE 'Asia/Shanghai')::date
            = (to_timestamp(t.at) AT TIME ZONE 'Asia/Shanghai')::date)
    ON CONFLICT DO NOTHING"""


@dataclass(frozen=True, slots=True)
class Stored:
    declaration_id: int
    updated: bool  # an earlier declaration of the same day was updated


async def store_declaration(
    conn: Conn, subject: bytes, identity: Identity, declaration: Declaration, *, client_id: int, now: int
) -> Stored:
    travel = orjson.dumps(
        [{"area_code": a.area_code, "arrived_on": a.arrived_on.isoformat(), "mode": a.mode} for a in declaration.travel]
    ).decode()
    async with conn.transaction():
        await conn.execute(_SUBJECT, subject, identity.id_type, declaration.masked_name, mask_number(identity.number))
        earlier = await conn.fetchval(_RECENT, subject)
        if earlier is not None:
            await conn.execute(
                _REPLACE, earlier, client_id, declaration.masked_name, declaration.phone_ref, travel, subject
            )
            declaration_id = int(earlier)
        else:
            declaration_id = await conn.fetchval(
                _ADD, subject, client_id, declaration.masked_name, declaration.phone_ref, travel
            )
        arrivals = declaration.travel
        await conn.execute(
            _ARRIVALS,
            subject,
            declaration_id,
            [a.area_code for a in arrivals],
            [arrival_moment(a.arrived_on, now) for a in arrivals],
            [a.mode for a in arrivals],
        )
    return Stored(declaration_id, earlier is not None)
