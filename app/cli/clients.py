"""`healthcode clients`: API clients: add, list, limit, revoke."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from app.scopes import CLIENT_KINDS
from app.settings import Settings

_LIMIT_HELP = (
    "a limit of this client instead of its kind's default, e.g. status=2000/4000 (2000 a second, bursts of "
    "4000) or verify=0 (refused); buckets: status, test-code, qr, appeals, declarations (citizen backends), "
    "verify (scanners), uploads, samples, batch-reads (agencies), appeals (operators); repeatable"
)


def add_parser(sub: Any) -> None:
    clients_parser = sub.add_parser("clients", help="API clients: add, list, limit, revoke")
    actions = clients_parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = actions.add_parser("add", help="create a client and print its secret (shown once)")
    add.add_argument("--kind", required=True, choices=CLIENT_KINDS)
    add.add_argument("--name", required=True)
    add.add_argument(
        "--scope",
        action="append",
        default=[],
        help="for agencies: a record kind it may upload, venue (register place codes) or cdc (exposure queries)",
    )
    add.add_argument("--limit", action="append", default=[], metavar="BUCKET=RATE[/BURST]", help=_LIMIT_HELP)
    add.set_defaults(run=add_client)
    actions.add_parser("list", help="every client, without secrets").set_defaults(run=list_clients)
    limit = actions.add_parser(
        "limit", help="set a client's own request limits (every process applies them within a refresh)"
    )
    limit.add_argument("name")
    limit.add_argument("limits", nargs="*", metavar="BUCKET=RATE[/BURST]", help=_LIMIT_HELP)
    limit.add_argument("--reset", action="append", default=[], metavar="BUCKET", help="back to the kind's default")
    limit.set_defaults(run=limit_client)
    revoke = actions.add_parser("revoke", help="revoke a client by name")
    revoke.add_argument("name")
    revoke.set_defaults(run=revoke_client)


async def add_client(args: argparse.Namespace, settings: Settings) -> int:
    from app import clients
    from app.db import connection
    from app.limits import LimitSpecError, parse_bucket_rates

    try:
        limits = parse_bucket_rates(args.limit, args.kind)
    except LimitSpecError as exc:
        print(f"healthcode clients: {exc}", file=sys.stderr)
        return 2
    async with connection(settings.database_url) as conn:
        issued = await clients.add_client(conn, args.name, args.kind, tuple(args.scope), limits)
    print(f"client {issued.client.name} ({issued.client.kind}) created; its key, shown only this once:")
    print(issued.secret)
    return 0


async def list_clients(args: argparse.Namespace, settings: Settings) -> int:
    from app import clients
    from app.db import connection

    async with connection(settings.database_url) as conn:
        rows = await clients.list_clients(conn)
    for r in rows:
        state = f"revoked {r['revoked_at']:%Y-%m-%d}" if r["revoked_at"] else "active"
        limits = " ".join(_rate_text(bucket, r["rate_limits"][bucket]) for bucket in sorted(r["rate_limits"]))
        print(
            f"{r['id']:5}  {r['name']:32}  {r['kind']:16}  {r['key_prefix']}…  {state}  {','.join(r['scopes'])}"
            + (f"  limits {limits}" if limits else "")
        )
    return 0


async def revoke_client(args: argparse.Namespace, settings: Settings) -> int:
    from app import clients
    from app.db import connection

    async with connection(settings.database_url) as conn:
        revoked = await clients.revoke_client(conn, args.name)
    if revoked:
        print(f"client {args.name} revoked")
        return 0
    print(f"healthcode clients: no active client named {args.name}", file=sys.stderr)
    return 1


async def limit_client(args: argparse.Namespace, settings: Settings) -> int:
    from app import clients
    from app.db import connection
    from app.limits import BUCKETS, LimitSpecError, parse_bucket_rates

    try:
        limits = parse_bucket_rates(args.limits)
        unknown = set(args.reset) - set(BUCKETS)
        if unknown:
            raise LimitSpecError(f"--reset {', '.join(sorted(unknown))}: buckets are {', '.join(BUCKETS)}")
    except LimitSpecError as exc:
        print(f"healthcode clients: {exc}", file=sys.stderr)
        return 2
    async with connection(settings.database_url) as conn:
        rates = await clients.set_client_limits(conn, args.name, limits, tuple(args.reset))
    if rates is None:
        print(f"healthcode clients: no active client named {args.name}", file=sys.stderr)
        return 1
    shown = " ".join(f"{bucket}={r.per_second:g}/{r.burst}" for bucket, r in sorted(rates.items()))
    print(f"client {args.name} limits: {shown or 'the defaults of its kind'}")
    return 0


def _rate_text(bucket: str, stored: dict[str, float]) -> str:
    return f"{bucket}={stored['per_second']:g}/{int(stored['burst'])}"
