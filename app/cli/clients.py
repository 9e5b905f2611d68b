"""`healthcode clients`: API clients: add, list, revoke."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from app.scopes import CLIENT_KINDS
from app.settings import Settings


def add_parser(sub: Any) -> None:
    clients_parser = sub.add_parser("clients", help="API clients: add, list, revoke")
    actions = clients_parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = actions.add_parser("add", help="create a client and print its secret (shown once)")
    add.add_argument("--kind", required=True, choices=CLIENT_KINDS)
    add.add_argument("--name", required=True)
    add.add_argument("--scope", action="append", default=[], help="for agencies: a record kind it may upload")
    add.set_defaults(run=add_client)
    actions.add_parser("list", help="every client, without secrets").set_defaults(run=list_clients)
    revoke = actions.add_parser("revoke", help="revoke a client by name")
    revoke.add_argument("name")
    revoke.set_defaults(run=revoke_client)


async def add_client(args: argparse.Namespace, settings: Settings) -> int:
    from app import clients
    from app.db import connection

    async with connection(settings.database_url) as conn:
        issued = await clients.add_client(conn, args.name, args.kind, tuple(args.scope))
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
        print(f"{r['id']:5}  {r['name']:32}  {r['kind']:16}  {r['key_prefix']}…  {state}  {','.join(r['scopes'])}")
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
