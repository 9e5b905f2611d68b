"""Reading stored statuses: the row shape shared by the miss path, cache warm and the write path."""

from __future__ import annotations

import asyncpg

from cache.entry import StatusEntry

# A subject and its stored status (NULL columns when none is stored), as `entry_from_row` reads them.
STATUS_SELECT = """
SELECT sub.pseudonym, sub.id_type, sub.masked_name, sub.masked_number,
       st.colour, st.reasons, st.popup, st.vaccine_doses, st.vaccine_complete,
       extract(epoch FROM st.last_test_at)::bigint AS last_test_at, st.last_test_result, st.ruleset,
       extract(epoch FROM st.computed_at)::bigint AS computed_at,
       extract(epoch FROM st.valid_until)::bigint AS valid_until, st.version
FROM subjects sub LEFT JOIN statuses st ON st.pseudonym = sub.pseudonym
"""
STATUS_QUERY = STATUS_SELECT + "WHERE sub.pseudonym = $1"
STATUSES_QUERY = STATUS_SELECT + "WHERE sub.pseudonym = ANY($1::bytea[])"


def is_fresh(row: asyncpg.Record, now: int) -> bool:
    """Whether the row holds a stored status that is still valid at `now`."""
    return row["colour"] is not None and row["valid_until"] > now


def entry_from_row(row: asyncpg.Record) -> StatusEntry:
    return StatusEntry(
        colour=row["colour"],
        reasons=tuple(row["reasons"]),
        popup=row["popup"],
        vaccine_doses=row["vaccine_doses"],
        vaccine_complete=row["vaccine_complete"],
        last_test_at=row["last_test_at"],
        last_test_result=row["last_test_result"],
        ruleset=row["ruleset"],
        computed_at=row["computed_at"],
        valid_until=row["valid_until"],
        version=row["version"],
        id_type=row["id_type"],
        masked_name=row["masked_name"],
        masked_number=row["masked_number"],
    )
