"""`healthcode cache warm`: the Redis cache, rebuilt from Postgres."""

from __future__ import annotations

import argparse
from typing import Any

from app.settings import Settings


def add_parser(sub: Any) -> None:
    cache_parser = sub.add_parser("cache", help="the Redis cache")
    actions = cache_parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("warm", help="rebuild every status entry in Redis from Postgres").set_defaults(run=warm)


async def warm(args: argparse.Namespace, settings: Settings) -> int:
    from app.statuses.standalone import open_publisher
    from app.statuses.warm import warm_cache

    async with open_publisher(settings) as (conn, publisher):
        count = await warm_cache(conn, publisher, progress=True)
    print(f"warmed {count} status entries")
    return 0
