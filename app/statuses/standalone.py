"""A status publisher for work outside the server: commands, the demo, benchmarks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from app.rules.ruleset import load_ruleset
from app.settings import Settings
from app.statuses.publish import StatusPublisher
from app.stores import open_stores, status_writer


@asynccontextmanager
async def open_publisher(settings: Settings) -> AsyncIterator[tuple[asyncpg.Connection, StatusPublisher]]:
    """A Postgres connection and a publisher on the configured rule set; both stores closed at the end."""
    async with open_stores(settings.database_url, settings.redis_url) as (conn, redis):
        yield conn, StatusPublisher(status_writer(redis, settings), load_ruleset(settings.ruleset))
