"""Command-line subcommands of ingestion: `load`, `sweep`, and `status override`.

Heavy imports happen inside the commands, so `healthcode --help` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from app.settings import Settings

Command = Callable[[argparse.Namespace, Settings], Coroutine[Any, Any, int]]
KINDS = ("population", "vaccination", "test", "travel", "designation", "risk_area")


def add_parsers(sub: Any) -> None:
    load = sub.add_parser(
        "load",
        help="load a CSV or NDJSON file (optionally .gz) of one record kind straight into Postgres",
        description="Streams FILE through the same validation as POST /v1/batches, merges it, recomputes "
        "the statuses it touches and refreshes Redis; prints the rejection report. A file loaded "
        "before (same content) changes nothing. Format: .ndjson/.jsonl is NDJSON, anything else CSV.",
    )
    load.add_argument("--kind", required=True, choices=KINDS)
    load.add_argument("--agency", help="record the batch against this agency (must have the kind in its scopes)")
    load.add_argument("file", type=Path)

    sub.add_parser("sweep", help="recompute every status whose valid_until has passed, and refresh Redis")

    status = sub.add_parser("status", help="a person's status")
    status_sub = status.add_subparsers(dest="action", required=True, metavar="ACTION")
    override = status_sub.add_parser(
        "override",
        help="an authority's manual override of a person's colour: needs a reason, is audited, expires",
    )
    override.add_argument("--id-type", default="resident")
    override.add_argument("--id-number", required=True, help="used to derive the pseudonym; never stored")
    override.add_argument("--colour", required=True, choices=("green", "yellow", "red"))
    override.add_argument("--reason", required=True, help="why (kept in the audit log)")
    override.add_argument("--actor", required=True, help="the authority making the change")
    until = override.add_mutually_exclusive_group(required=True)
    until.add_argument("--hours", type=float, help="expires this many hours from now")
    until.add_argument("--until", type=datetime.fromisoformat, help="expires at this ISO 8601 time")


async def _load(args: argparse.Namespace, settings: Settings) -> int:
    from app.http.problems import ProblemError
    from app.ingest.load import load_file

    try:
        await load_file(settings, args.kind, args.file, agency=args.agency, out=sys.stdout)
    except ProblemError as exc:
        print(f"healthcode load: the file was refused: {exc.detail}", file=sys.stderr)
        return 1
    except (OSError, LookupError) as exc:
        print(f"healthcode load: {exc}", file=sys.stderr)
        return 1
    return 0


async def _sweep(args: argparse.Namespace, settings: Settings) -> int:
    import time

    from redis.asyncio import Redis

    from app.db import connect
    from app.ingest.process import sweep_expired
    from app.rules.ruleset import load_ruleset
    from cache.connection import open_redis
    from cache.status_cache import writer_cache

    conn = await connect(settings.database_url)
    redis: Redis = open_redis(settings.redis_url)
    try:
        count = await sweep_expired(conn, load_ruleset(settings.ruleset), writer_cache(redis), int(time.time()))
    finally:
        await redis.aclose()
        await conn.close()
    print(f"recomputed {count} expired statuses")
    return 0


async def _status_override(args: argparse.Namespace, settings: Settings) -> int:
    import time

    from redis.asyncio import Redis

    from app.db import connect
    from app.identity import InvalidIdentity, parse_identity, pseudonym
    from app.rules.ruleset import load_ruleset
    from app.statuses.overrides import OverrideError, override_status
    from cache.connection import open_redis
    from cache.status_cache import writer_cache

    try:
        subject = pseudonym(parse_identity(args.id_type, args.id_number), settings.pepper)
    except InvalidIdentity as exc:
        print(f"healthcode status override: {exc.message}", file=sys.stderr)
        return 1
    until: datetime = (
        datetime.now(UTC) + timedelta(hours=args.hours)
        if args.hours is not None
        else args.until
        if args.until.tzinfo
        else args.until.replace(tzinfo=UTC)
    )

    conn = await connect(settings.database_url)
    redis: Redis = open_redis(settings.redis_url)
    try:
        override_id = await override_status(
            conn,
            subject,
            colour=args.colour,
            reason=args.reason,
            expires_at=until,
            actor=args.actor,
            ruleset=load_ruleset(settings.ruleset),
            cache=writer_cache(redis),
            now=int(time.time()),
        )
    except OverrideError as exc:
        print(f"healthcode status override: {exc}", file=sys.stderr)
        return 1
    finally:
        await redis.aclose()
        await conn.close()
    print(f"override {override_id}: {args.colour} until {until.isoformat()} (audited)")
    return 0


COMMANDS: dict[str, Command] = {"load": _load, "sweep": _sweep, "status override": _status_override}
