"""`healthcode credentials`: SMART Health Card signing keys, with a rotation apart from status keys."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("credentials", help="SMART Health Card keys: new, activate, retire, revoke, list")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("new", help="make a pending card key (published at once)").set_defaults(run=new_key)
    for name, text in (
        ("activate", "sign cards with this key; the active one is retired (still published)"),
        ("retire", "stop signing with it; cards it signed keep verifying"),
        ("revoke", "withdraw it from the JWKS at once: cards it signed stop verifying"),
    ):
        action = actions.add_parser(name, help=text)
        action.add_argument("thumbprint", help="the key's thumbprint, or enough of its start")
        action.set_defaults(run=change_key, change=name)
    actions.add_parser("list", help="every card key").set_defaults(run=list_keys)


async def new_key(args: argparse.Namespace, settings: Any) -> int:
    from app.credentials import keys
    from app.db import connection

    async with connection(settings.database_url) as conn:
        thumbprint = await keys.new_key(conn, settings.keys_dir)
    print(f"card key {thumbprint} pending; activate it with: healthcode credentials activate {thumbprint[:12]}")
    return 0


async def change_key(args: argparse.Namespace, settings: Any) -> int:
    from app.credentials import keys
    from app.db import connection

    async with connection(settings.database_url) as conn:
        try:
            if args.change == "activate":
                thumbprint = await keys.activate(conn, args.thumbprint)
            else:
                thumbprint = await keys.set_state(conn, args.thumbprint, f"{args.change}d")
        except keys.CredentialKeyError as exc:
            print(f"healthcode credentials: {exc}", file=sys.stderr)
            return 1
    print(f"card key {thumbprint} {args.change}d")
    return 0


async def list_keys(args: argparse.Namespace, settings: Any) -> int:
    from app.credentials import keys
    from app.db import connection

    async with connection(settings.database_url) as conn:
        for r in await keys.list_keys(conn):
            print(f"{r['thumbprint']}  {r['state']:8}  created {r['created_at']:%Y-%m-%d}")
    return 0
