"""`healthcode migrate`: the database schema."""

from __future__ import annotations

import argparse
from typing import Any

from app.settings import Settings


def add_parser(sub: Any) -> None:
    sub.add_parser(
        "migrate", help="apply the numbered SQL migrations under sql/ that are not yet applied"
    ).set_defaults(run=migrate)


async def migrate(args: argparse.Namespace, settings: Settings) -> int:
    from app.db import connection
    from app.db import migrate as apply_migrations

    async with connection(settings.database_url) as conn:
        applied = await apply_migrations(conn)
    print(f"applied {len(applied)} migration(s)" + "".join(f"\n  {m.version:03d}_{m.name}" for m in applied))
    return 0
