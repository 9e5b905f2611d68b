"""`healthcode load`: a file from the command line, through the same pipeline as an upload.

Straight to Postgres with COPY, then processed in this process (merge, recompute, cache refresh), with
a progress bar while reading and the same rejection report an agency gets.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, TextIO

from tqdm import tqdm

from app.db import Conn, connection
from app.ingest.process import process_batch
from app.ingest.store import batch_by_id, rejections
from app.ingest.upload import kind_named, receive_batch
from app.rules.ruleset import load_ruleset
from app.scopes import OPERATOR_CLIENT_ID
from app.settings import Settings
from app.statuses.publish import StatusPublisher
from app.stores import open_stores, status_writer

READ_CHUNK: Final = 1 << 20
SHOWN_REJECTIONS: Final = 20


async def file_chunks(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(READ_CHUNK):
            yield chunk


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """No cyclic garbage collection during a bulk load.

    A load allocates millions of short-lived tuples and records; reference counting frees them, but
    the allocations keep triggering collections that walk every live object: 15% of parsing and
    17% of a recompute's Python time (measured on 100k and 300k rows). The few cycles made meanwhile
    are collected when it ends. For this process's command-line loads, not for the server.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def file_format(path: Path) -> str:
    name = path.name.lower().removesuffix(".gz")
    return "ndjson" if name.endswith((".ndjson", ".jsonl")) else "csv"


async def agency_id(conn: Conn, name: str, kind: str) -> int:
    row = await conn.fetchrow(
        "SELECT id, scopes FROM api_clients WHERE name = $1 AND kind = 'agency' AND revoked_at IS NULL", name
    )
    if row is None:
        raise LookupError(f"no active agency named {name}")
    if kind not in row["scopes"]:
        raise LookupError(f"agency {name} may not upload {kind} (its scopes: {', '.join(row['scopes'])})")
    return int(row["id"])


async def load_file(
    settings: Settings, kind_name: str, path: Path, *, agency: str | None = None, out: TextIO | None = None
) -> int:
    """Load and process one file; returns the batch id. A batch refused as a whole raises IngestError."""
    kind = kind_named(kind_name)
    ruleset = load_ruleset(settings.ruleset)
    async with open_stores(settings.database_url, settings.redis_url) as (conn, redis):
        with paused_gc():
            client_id = OPERATOR_CLIENT_ID if agency is None else await agency_id(conn, agency, kind.name)
            size = path.stat().st_size  # noqa: ASYNC240 (one stat before a long load)
            started = time.monotonic()
            with tqdm(
                total=size, unit="B", unit_scale=True, desc=f"{kind.name} {path.name}", disable=out is None
            ) as bar:
                state = {"bytes": 0}

                def progress(raw_bytes: int, rows: int) -> None:
                    bar.update(raw_bytes - state["bytes"])
                    state["bytes"] = raw_bytes
                    elapsed = max(time.monotonic() - started, 1e-6)
                    bar.set_postfix(rows=rows, rows_per_s=f"{rows / elapsed:,.0f}", refresh=False)

                received = await receive_batch(
                    conn,
                    client_id=client_id,
                    kind=kind,
                    fmt=file_format(path),
                    body=file_chunks(path),
                    key=None,
                    pepper=settings.pepper,
                    ruleset=ruleset,
                    now=datetime.now(UTC),
                    max_bytes=max(settings.max_upload_bytes, size * 20),
                    progress=progress,
                    max_rejections=settings.max_rejections_per_batch,
                    federation_key=settings.federation_key,
                )
            if received.created:
                publisher = StatusPublisher(status_writer(redis, settings), ruleset)
                # Statuses are stored on a second connection while the first reads records.
                async with connection(settings.database_url) as store_conn:
                    await process_batch(conn, received.batch_id, publisher, int(time.time()), store_conn=store_conn)
        if out is not None:
            await report(conn, received.batch_id, out, seen_before=not received.created)
        return received.batch_id


async def report(conn: Conn, batch_id: int, out: TextIO, *, seen_before: bool = False) -> None:
    row = await batch_by_id(conn, batch_id)
    assert row is not None
    if seen_before:
        print(f"this file was loaded before as batch {batch_id}; nothing changed", file=out)
    print(
        f"batch {batch_id} ({row['kind']}): {row['state']}; read {row['rows_read']}, accepted {row['accepted']}, "
        f"rejected {row['rejected']}, duplicates {row['duplicates']}, "
        f"corrected {row['corrected']}, retracted {row['retracted']}; {row['subjects']} statuses recomputed",
        file=out,
    )
    if row["error"]:
        print(f"error: {row['error']}", file=out)
    codes: Counter[str] = Counter()
    shown = 0
    async for r in rejections(conn, batch_id):
        codes[r["code"]] += 1
        if shown < SHOWN_REJECTIONS:
            print(f"  row {r['row_no']}: {r['field'] or '-'}: {r['code']}: {r['message']}", file=out)
            shown += 1
    if codes:
        summary = ", ".join(f"{code} {count}" for code, count in codes.most_common())
        print(f"rejections by code: {summary}", file=out)
