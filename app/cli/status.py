"""`healthcode status override`: an authority's audited manual change of a person's colour."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

from app.settings import Settings
from signing.colours import COLOURS


def add_parser(sub: Any) -> None:
    status_parser = sub.add_parser("status", help="a person's status")
    actions = status_parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    override_parser = actions.add_parser(
        "override",
        help="an authority's manual override of a person's colour: needs a reason, is audited, expires",
    )
    override_parser.add_argument("--id-type", default="resident")
    override_parser.add_argument("--id-number", required=True, help="used to derive the pseudonym; never stored")
    override_parser.add_argument("--colour", required=True, choices=COLOURS)
    override_parser.add_argument("--reason", required=True, help="why (kept in the audit log)")
    override_parser.add_argument("--actor", required=True, help="the authority making the change")
    until = override_parser.add_mutually_exclusive_group(required=True)
    until.add_argument("--hours", type=float, help="expires this many hours from now")
    until.add_argument("--until", type=datetime.fromisoformat, help="expires at this ISO 8601 time")
    override_parser.set_defaults(run=override)


async def override(args: argparse.Namespace, settings: Settings) -> int:
    import time

    from app.identity import InvalidIdentity, parse_identity, pseudonym
    from app.statuses.overrides import OverrideError, override_status
    from app.statuses.standalone import open_publisher

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

    try:
        async with open_publisher(settings) as (conn, publisher):
            override_id = await override_status(
                conn,
                subject,
                colour=args.colour,
                reason=args.reason,
                expires_at=until,
                actor=args.actor,
                publisher=publisher,
                now=int(time.time()),
            )
    except OverrideError as exc:
        print(f"healthcode status override: {exc}", file=sys.stderr)
        return 1
    print(f"override {override_id}: {args.colour} until {until.isoformat()} (audited)")
    return 0
