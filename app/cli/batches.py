"""`healthcode load` and `healthcode sweep`: record files into Postgres, and statuses past their time."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from app.scopes import RECORD_KINDS
from app.settings import Settings


def add_parser(sub: Any) -> None:
    load_parser = sub.add_parser(
        "load",
        help="load a CSV or NDJSON file (optionally .gz) of one record kind straight into Postgres",
        description="Streams FILE through the same validation as POST /v1/batches, merges it, recomputes "
        "the statuses it touches and refreshes Redis; prints the rejection report. A file loaded "
        "before (same content) changes nothing. Format: .ndjson/.jsonl is NDJSON, anything else CSV.",
    )
    load_parser.add_argument("--kind", required=True, choices=RECORD_KINDS)
    load_parser.add_argument("--agency", help="record the batch against this agency (must have the kind in its scopes)")
    load_parser.add_argument("file", type=Path)
    load_parser.set_defaults(run=load)

    sub.add_parser(
        "sweep",
        help="recompute every status whose valid_until has passed, and refresh Redis; delete scan events "
        "and place-code visits older than HEALTHCODE_RETENTION_DAYS (default 28)",
    ).set_defaults(run=sweep)


async def load(args: argparse.Namespace, settings: Settings) -> int:
    from app.ingest.errors import IngestError
    from app.ingest.load import load_file

    try:
        await load_file(settings, args.kind, args.file, agency=args.agency, out=sys.stdout)
    except IngestError as exc:
        print(f"healthcode load: the file was refused: {exc.detail}", file=sys.stderr)
        return 1
    except (OSError, LookupError) as exc:
        print(f"healthcode load: {exc}", file=sys.stderr)
        return 1
    return 0


async def sweep(args: argparse.Namespace, settings: Settings) -> int:
    import time
    from datetime import UTC, datetime

    from app.retention import sweep_retention
    from app.statuses.standalone import open_publisher
    from app.statuses.sweep import sweep_expired

    async with open_publisher(settings) as (conn, publisher):
        count = await sweep_expired(conn, publisher, int(time.time()))
        swept = await sweep_retention(conn, datetime.now(UTC), settings.retention_days)
    print(f"recomputed {count} expired statuses")
    print(
        f"retention {settings.retention_days} days: dropped {len(swept.dropped)} partitions"
        f"{' (' + ', '.join(swept.dropped) + ')' if swept.dropped else ''}, deleted {swept.deleted} rows"
    )
    return 0
