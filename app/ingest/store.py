"""Batch rows in Postgres: look-up by id and idempotency key, the public view, state changes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Final

import asyncpg

from app.db import Conn

STATES: Final = ("received", "loading", "done", "failed")

_COLUMNS: Final = """id, client_id, kind, format, state, rows_read, accepted, rejected, duplicates, corrected,
    retracted, subjects, error, received_at, started_at, merged_at, finished_at"""
_BY_ID: Final = f"SELECT {_COLUMNS} FROM batches WHERE id = $1"
_BY_KEY: Final = f"SELECT {_COLUMNS} FROM batches WHERE client_id = $1 AND idempotency_key = $2"


async def batch_by_id(conn: Conn | asyncpg.Pool, batch_id: int) -> asyncpg.Record | None:
    return await conn.fetchrow(_BY_ID, batch_id)


async def batch_by_key(conn: Conn | asyncpg.Pool, client_id: int, key: str) -> asyncpg.Record | None:
    return await conn.fetchrow(_BY_KEY, client_id, key)


def batch_view(row: asyncpg.Record) -> dict[str, Any]:
    """What an agency sees of its batch."""

    def at(name: str) -> str | None:
        value = row[name]
        return None if value is None else value.isoformat()

    started, finished = row["started_at"], row["finished_at"]
    return {
        "id": row["id"],
        "kind": row["kind"],
        "format": row["format"],
        "state": row["state"],
        "counts": {
            "read": row["rows_read"],
            "accepted": row["accepted"],
            "rejected": row["rejected"],
            "duplicates": row["duplicates"],
            "corrected": row["corrected"],
            "retracted": row["retracted"],
        },
        "subjects_recomputed": row["subjects"],
        "error": row["error"],
        "timings": {
            "received_at": at("received_at"),
            "started_at": at("started_at"),
            "merged_at": at("merged_at"),
            "finished_at": at("finished_at"),
            "processing_seconds": None
            if started is None or finished is None
            else round((finished - started).total_seconds(), 3),
        },
        "rejections": f"/v1/batches/{row['id']}/rejections",
    }


async def mark_failed(conn: Conn, batch_id: int, error: str) -> None:
    """Failed: staging dropped and its key freed so it can be re-sent (`merged_at` says whether its records
    were merged before it failed; sent again, those are duplicates and its people are recomputed)."""
    async with conn.transaction():
        await delete_staging(conn, batch_id)
        await conn.execute(
            """UPDATE batches SET state = 'failed', error = $2, finished_at = now(),
                   idempotency_key = idempotency_key || ':failed:' || id
               WHERE id = $1 AND state <> 'done'""",
            batch_id,
            error[:500],
        )


# Staging rows deleted per statement: a batch's rows go a range at a time, however many there are.
DELETE_CHUNK: Final = 200_000


async def delete_staging(conn: Conn, batch_id: int, chunk_rows: int = DELETE_CHUNK) -> None:
    """Delete the batch's staging rows, a range of row numbers per statement (call inside a transaction)."""
    kind = await conn.fetchval("SELECT kind FROM batches WHERE id = $1", batch_id)
    if kind is None:
        return
    last = await conn.fetchval(f"SELECT max(row_no) FROM staging_{kind} WHERE batch_id = $1", batch_id)
    for after in range(0, last or 0, chunk_rows):
        await conn.execute(
            f"DELETE FROM staging_{kind} WHERE batch_id = $1 AND row_no > $2 AND row_no <= $3",
            batch_id,
            after,
            after + chunk_rows,
        )


async def rejections(conn: Conn | asyncpg.Pool, batch_id: int, page: int = 5000) -> AsyncIterator[asyncpg.Record]:
    """Every rejection of a batch in row order, a page at a time (from a pool, a connection per page)."""
    after = 0
    while True:
        rows = await conn.fetch(
            """SELECT row_no, field, code, message FROM batch_rejections
               WHERE batch_id = $1 AND row_no > $2 ORDER BY row_no LIMIT $3""",
            batch_id,
            after,
            page,
        )
        for row in rows:
            yield row
        if len(rows) < page:
            return
        after = rows[-1]["row_no"]
