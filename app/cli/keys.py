"""`healthcode keys`: signing keys: new, list, activate, retire, revoke."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Final

from app.settings import Settings
from signing.keys import EDDSA, ES256

# The actions that name an existing key (a kid or a thumbprint prefix).
_KEY_ACTIONS: Final = (
    ("activate", "make this key the signing key; the previous one is retired"),
    ("retire", "stop signing with this key; it stays published until its tokens expire"),
    ("revoke", "withdraw this key at once: unpublished, its tokens refused"),
)
_KEY_ACTION_NAMES: Final = tuple(action for action, _ in _KEY_ACTIONS)


def add_parser(sub: Any) -> None:
    keys_parser = sub.add_parser("keys", help="signing keys: new, list, activate, retire, revoke")
    actions = keys_parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    new = actions.add_parser("new", help="generate a key (pending: published, not yet signing)")
    new.add_argument("--alg", choices=(ES256, EDDSA), default=ES256)
    new.add_argument("--activate", action="store_true", help="make it the signing key at once")
    new.set_defaults(run=keys)
    actions.add_parser("list", help="every key with its state").set_defaults(run=keys)
    for action, text in _KEY_ACTIONS:
        named = actions.add_parser(action, help=text)
        named.add_argument("key", help="kid or thumbprint (prefix)")
        named.set_defaults(run=keys)


def key_refs_as_operands(argv: list[str]) -> list[str]:
    """Key ids are base64url and may begin with `-`, which argparse would read as an option:
    `keys activate -x3Fq…` becomes `keys activate -- -x3Fq…`."""
    for i in range(len(argv) - 2):
        ref = argv[i + 2]
        is_ref = ref.startswith("-") and ref not in ("-h", "--help", "--")
        if argv[i] == "keys" and argv[i + 1] in _KEY_ACTION_NAMES and is_ref:
            return [*argv[: i + 2], "--", *argv[i + 2 :]]
    return argv


async def keys(args: argparse.Namespace, settings: Settings) -> int:
    from app.db import connection
    from app.keys import lifecycle

    try:
        async with connection(settings.database_url) as conn:
            if args.action == "new":
                thumbprint = await lifecycle.new_key(conn, settings.keys_dir, args.alg)
                if args.activate:
                    await lifecycle.activate(conn, thumbprint)
                print(f"{thumbprint} {'active' if args.activate else 'pending'}")
            elif args.action == "list":
                for r in await lifecycle.list_keys(conn):
                    print(
                        f"{r['kid']}  {r['alg']:5}  {r['state']:8}  {r['thumbprint']}  "
                        f"created {r['created_at']:%Y-%m-%d %H:%M}"
                    )
            else:
                action = {"activate": lifecycle.activate, "retire": lifecycle.retire, "revoke": lifecycle.revoke}
                print(f"{await action[args.action](conn, args.key)} {args.action}d")
    except lifecycle.KeyError_ as exc:
        print(f"healthcode keys: {exc}", file=sys.stderr)
        return 1
    return 0
