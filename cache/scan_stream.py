"""Scan events on a Redis stream: the checkpoint path appends, a consumer group drains them to Postgres.

Appending is one XADD (O(1), no Postgres on the hot path). The stream is trimmed approximately to
`maxlen`, so a stalled drain loses the oldest events instead of filling Redis' memory; size `maxlen`
to cover the longest drain outage you want to survive. Delivery is at-least-once: an entry stays
pending in the group until `ack`, and a consumer that did not ack what it read gets it again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from cache.keys import SCAN_STREAM

DEFAULT_MAXLEN = 5_000_000

Entry = tuple[bytes, dict[bytes, bytes]]


class ScanStream:
    def __init__(
        self,
        redis: Redis | RedisCluster,
        stream: str = SCAN_STREAM,
        group: str = "scan-writers",
        *,
        maxlen: int = DEFAULT_MAXLEN,
    ) -> None:
        if maxlen <= 0:
            raise ValueError("maxlen must be positive")
        self._redis = redis
        self.stream = stream
        self.group = group
        self.maxlen = maxlen
        # Ids each consumer was handed and has not acked yet. While a consumer has any, its next read
        # starts from its pending list (id "0") so nothing it failed to write is skipped.
        self._unacked: dict[str, set[bytes]] = {}

    async def add(self, fields: Mapping[str, bytes | str | int]) -> bytes:
        """Append one event; returns its stream id. Redis errors are raised (the caller decides)."""
        entry_id = await self._redis.xadd(
            self.stream,
            dict(fields),  # type: ignore[arg-type]  # redis-py's Dict is invariant in its key type
            maxlen=self.maxlen,
            approximate=True,  # "MAXLEN ~": trims whole radix-tree nodes, far cheaper than exact
        )
        return entry_id if isinstance(entry_id, bytes) else entry_id.encode()

    async def ensure_group(self) -> None:
        """Create the stream and the consumer group if missing (from the start of the stream)."""
        try:
            await self._redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def read(self, consumer: str, count: int, block_ms: int) -> list[Entry]:
        """Up to `count` entries for `consumer`: its own unacknowledged ones first, then new ones.

        Blocks up to `block_ms` for new entries (0 or less: do not block). The Redis client's
        socket timeout must be longer than `block_ms`.
        """
        if count <= 0:
            raise ValueError("count must be positive")
        unacked = self._unacked.get(consumer)
        if unacked is None or unacked:
            while True:
                pending, seen = await self._read(consumer, "0", count, None)
                if pending:
                    self._unacked[consumer] = {entry_id for entry_id, _ in pending}
                    return pending
                if seen < count:
                    break  # pending list exhausted (a full page of trimmed entries: look again)
        fresh, _ = await self._read(consumer, ">", count, block_ms if block_ms > 0 else None)
        self._unacked[consumer] = {entry_id for entry_id, _ in fresh}
        return fresh

    async def ack(self, ids: Iterable[bytes]) -> int:
        """Mark entries as written; returns how many were pending."""
        id_list = list(ids)
        if not id_list:
            return 0
        for unacked in self._unacked.values():
            unacked.difference_update(id_list)
        acked: int = await self._redis.xack(self.stream, self.group, *id_list)
        return acked

    async def _read(self, consumer: str, start: str, count: int, block_ms: int | None) -> tuple[list[Entry], int]:
        """The readable entries, and how many ids Redis returned including trimmed ones."""
        response: Any = await self._redis.xreadgroup(
            self.group, consumer, {self.stream: start}, count=count, block=block_ms
        )
        if not response:
            return [], 0
        # RESP2 gives [[stream, entries]], RESP3 {stream: [entries]}.
        batches = response.values() if isinstance(response, dict) else [pair[1] for pair in response]
        entries: list[Entry] = []
        gone: list[bytes] = []
        for batch in batches:
            for entry_id, fields in batch:
                if fields:
                    entries.append((entry_id, fields))
                elif entry_id is not None:
                    gone.append(entry_id)  # pending, but trimmed away before it was written
        if gone:
            await self._redis.xack(self.stream, self.group, *gone)
        return entries, len(entries) + len(gone)
