"""`healthcode worker`: batch processing apart from the processes that serve requests.

Any number of worker processes, on any hosts, share one Postgres. Each looks for batches with work it
can start now (app.ingest.parts.claimable: a merge no one runs, skipped with SKIP LOCKED while another
process holds the batch row, or a part of the recompute no one holds) and processes them through the
same `BatchProcessor` as the API, so a large batch's parts are recomputed by every worker at once. A
worker killed mid-merge leaves nothing merged (one transaction); killed mid-part, it leaves that part to
whoever looks next. The statuses past their valid_until are swept here too.

The API still processes the batches it receives unless `HEALTHCODE_EMBEDDED_WORKER=0`; then it only
stores them, and workers take them up within a poll interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Final

from app.db import UNAVAILABLE_ERRORS, close_pool, create_pool
from app.ingest.parts import PART_ROWS, claimable
from app.ingest.process import RETRY_FIRST_SECONDS, RETRY_MAX_SECONDS, BatchProcessor
from app.rules.ruleset import load_ruleset
from app.settings import Settings
from app.statuses.publish import StatusPublisher
from app.stores import status_writer
from cache.connection import open_redis

log = logging.getLogger(__name__)

POLL_SECONDS: Final = 0.5
SWEEP_SECONDS: Final = 60.0
# Connections: one reads records, one stores statuses (app.ingest.process), one looks for work.
POOL_SIZE: Final = 4


@dataclass
class Worker:
    processor: BatchProcessor
    poll_seconds: float = POLL_SECONDS
    sweep_seconds: float = SWEEP_SECONDS
    batches: int = 0  # batches this worker took part in, for logs and tests
    _not_before: dict[int, tuple[float, float]] = field(default_factory=dict)  # batch -> (time, pause)

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop` is set: take up what can be started, else wait a poll interval."""
        next_sweep = time.monotonic()
        while not stop.is_set():
            worked = False
            try:
                worked = await self.step()
                if time.monotonic() >= next_sweep:
                    swept = await self.processor.sweep()
                    next_sweep = time.monotonic() + self.sweep_seconds
                    if swept:
                        log.info("swept %d expired statuses", swept)
            except UNAVAILABLE_ERRORS as exc:
                log.warning("postgres unavailable (%s); looking again shortly", exc)
            if not worked:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.poll_seconds)

    async def step(self) -> bool:
        """Process the oldest batch with work to start now (one, so a stop is seen between batches);
        True if there was one."""
        async with self.processor.pool.acquire() as conn:
            ids = await claimable(conn)
        now = time.monotonic()
        batch_id = next((i for i in ids if self._not_before.get(i, (0.0, 0.0))[0] <= now), None)
        if batch_id is None:
            return False
        try:
            await self.processor.process(batch_id)
            self._not_before.pop(batch_id, None)
        except Exception:
            # Counted on the batch by app.ingest.process; tried again after a pause that grows.
            pause = min(self._not_before.get(batch_id, (0.0, RETRY_FIRST_SECONDS / 2))[1] * 2, RETRY_MAX_SECONDS)
            self._not_before[batch_id] = (time.monotonic() + pause, pause)
            log.exception("processing batch %d failed; trying again in %.0f s", batch_id, pause)
        self.batches += 1
        return True


@asynccontextmanager
async def open_worker(settings: Settings, *, part_rows: int = PART_ROWS) -> AsyncIterator[Worker]:
    """A worker with its own pool and Redis client, closed when the block ends."""
    pool = await create_pool(settings.database_url, min_size=1, max_size=POOL_SIZE)
    redis = open_redis(settings.redis_url)
    try:
        publisher = StatusPublisher(status_writer(redis, settings), load_ruleset(settings.ruleset))
        processor = BatchProcessor(pool, publisher, part_rows=part_rows)
        try:
            yield Worker(processor)
        finally:
            await processor.close()
    finally:
        await redis.aclose()
        await close_pool(pool)
