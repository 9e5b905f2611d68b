"""`healthcode peers`: the trust list of peer deployments (互认): add, list, remove."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("peers", help="peer deployments this one trusts: add, list, remove")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = actions.add_parser(
        "add",
        help="trust a peer's tokens (or change a peer); every process applies it within a refresh",
        description="Trust a peer deployment: its status tokens verify at /v1/verify and, with "
        "--vaccination-source, it is asked for people's vaccinations. Adding an issuer again replaces it.",
    )
    add.add_argument("issuer", help="the iss its tokens carry, e.g. cn-sc")
    add.add_argument("--name", required=True, help="display name shown to checkpoints, e.g. 'Sichuan 天府健康通'")
    add.add_argument("--jwks-url", required=True, help="where its keys are published (…/.well-known/jwks.json)")
    add.add_argument(
        "--alg", action="append", choices=("ES256", "EdDSA"), default=[], help="an algorithm accepted (default ES256)"
    )
    add.add_argument("--vaccination-source", action="store_true", help="ask it for vaccinations (needs --api-url)")
    add.add_argument("--api-url", help="base URL of its peer API (POST <api-url>/v1/peer/vaccinations)")
    add.set_defaults(run=add_peer)
    actions.add_parser("list", help="every trusted peer").set_defaults(run=list_peers)
    remove = actions.add_parser("remove", help="stop trusting a peer (its tokens are refused within a refresh)")
    remove.add_argument("issuer")
    remove.set_defaults(run=remove_peer)


async def add_peer(args: argparse.Namespace, settings: Any) -> int:
    from app.db import connection
    from app.federation import peers

    if args.issuer == settings.issuer:
        print(f"healthcode peers: {args.issuer} is this deployment's own issuer", file=sys.stderr)
        return 2
    try:
        peer = peers.Peer(
            args.issuer, args.name, args.jwks_url, tuple(args.alg or ["ES256"]), args.vaccination_source, args.api_url
        )
    except peers.PeerError as exc:
        print(f"healthcode peers: {exc}", file=sys.stderr)
        return 2
    async with connection(settings.database_url) as conn:
        new = await peers.add_peer(conn, peer)
    print(f"peer {peer.issuer} {'added' if new else 'updated'}")
    return 0


async def list_peers(args: argparse.Namespace, settings: Any) -> int:
    from app.db import connection
    from app.federation import peers

    async with connection(settings.database_url) as conn:
        found = await peers.list_peers(conn)
    for p in found:
        source = f"  vaccinations from {p.api_base_url}" if p.vaccination_source else ""
        print(f"{p.issuer:24}  {p.display_name:32}  {','.join(p.algorithms):12}  {p.jwks_url}{source}")
    return 0


async def remove_peer(args: argparse.Namespace, settings: Any) -> int:
    from app.db import connection
    from app.federation import peers

    async with connection(settings.database_url) as conn:
        removed = await peers.remove_peer(conn, args.issuer)
    if not removed:
        print(f"healthcode peers: no peer {args.issuer}", file=sys.stderr)
        return 1
    print(f"peer {args.issuer} removed")
    return 0
