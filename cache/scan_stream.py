"""Scan events on a Redis stream: the checkpoint path appends, a consumer group drains them to Postgres.

Appending is one XADD (O(1), no Postgres on the hot path). The stream is trimmed approximately to
`maxlen`, so a stalled drain loses the oldest events instead of filling Redis' memory; size `maxlen`
to cover the longest drain outage you want to survive. Delivery is at-least-once: an entry stays
pending in the group until `ack`, and a consumer that did not ack what it read gets it again; entries
a dead consumer left pending are taken over by `claim_idle`.

An entry that can never be written is moved, once, to a dead-letter stream beside it (`dead_letter`),
and counted; both keys hash to the stream's Redis Cluster slot, so the move is one atomic script.
A Redis restarted without persistence loses the group: reading recreates it.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from cache.keys import SCAN_STREAM

DEFAULT_MAXLEN = 5_000_000
# Dead letters are rare and each is kept for an operator to read; the cap only bounds a flood of them.
DEAD_MAXLEN = 100_000

Entry = tuple[bytes, dict[bytes, bytes]]

# Acknowledge, and only if the entry was still pending (nobody stored or dead-lettered it meanwhile)
# copy it to the dead-letter stream and count it: a dead letter is kept and counted exactly once.
# KEYS: stream, dead-letter stream, dead-letter count. ARGV: group, id, maxlen, then field/value pairs.
_DEAD_LETTER: Final = """
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', unpack(ARGV, 4))
redis.call('INCR', KEYS[3])
return 1
"""


@dataclass(frozen=True, slots=True)
class Backlog:
    """What the stream holds that is not yet written: read but unacknowledged, and never read."""

    pending: int
    undelivered: int
    oldest_ms: int | None  # the add time of the oldest of them (stream ids start with it)
    dead_letters: int  # dead-lettered since this Redis started (or its data was last lost)
    group_exists: bool

    def oldest_age_seconds(self, now_ms: int) -> float:
        return 0.0 if self.oldest_ms is None else max(0.0, (now_ms - self.oldest_ms) / 1000)


def id_ms(entry_id: bytes | str) -> int:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.split("-", 1)[0])


def _is_nogroup(exc: ResponseError) -> bool:
    return str(exc).startswith("NOGROUP")


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
        if "{" in stream or "}" in stream:
            raise ValueError("the stream name is the hash tag of its dead-letter keys; it may not hold braces")
        self._redis = redis
        self.stream = stream
        self.group = group
        self.maxlen = maxlen
        # `{stream}:…` hashes to the slot of `stream` itself, so the dead-letter move stays one script.
        self.dead_stream = f"{{{stream}}}:dead"
        self.dead_count_key = f"{{{stream}}}:dead:count"
        self.epoch_key = f"{{{stream}}}:epoch"
        self._dead_letter = redis.register_script(_DEAD_LETTER)
        self.groups_created = 0  # the group was missing (first start, or Redis lost its data)
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

    async def epoch(self) -> bytes:
        """A token that changes when Redis loses its data: set once, read back; gone with a restart
        without persistence (or a flush), and then set anew by whoever asks first."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(self.epoch_key, secrets.token_hex(8), nx=True)
            pipe.get(self.epoch_key)
            _, value = await pipe.execute()
        return bytes(value)

    async def ensure_group(self) -> None:
        """Create the stream and the consumer group if missing (from the start of the stream)."""
        try:
            await self._redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        else:
            self.groups_created += 1
        # Pending ids remembered from before are gone with the group (and the consumer's list is empty).
        self._unacked.clear()

    async def read(self, consumer: str, count: int, block_ms: int) -> list[Entry]:
        """Up to `count` entries for `consumer`: its own unacknowledged ones first, then new ones.

        Blocks up to `block_ms` for new entries (0 or less: do not block). The Redis client's
        socket timeout must be longer than `block_ms`.
        """
        if count <= 0:
            raise ValueError("count must be positive")
        try:
            return await self._read_own_then_new(consumer, count, block_ms)
        except ResponseError as exc:
            if not _is_nogroup(exc):
                raise
        # Redis restarted without persistence (or the key was deleted): entries added since are in a
        # new stream with no group. Creating it from id 0 hands them out; nothing else is left to read.
        await self.ensure_group()
        return await self._read_own_then_new(consumer, count, block_ms)

    async def _read_own_then_new(self, consumer: str, count: int, block_ms: int) -> list[Entry]:
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
        try:
            acked: int = await self._redis.xack(self.stream, self.group, *id_list)
        except ResponseError as exc:
            if not _is_nogroup(exc):
                raise
            return 0  # the group went with a Redis restart, and its pending entries with it
        return acked

    async def claim_idle(self, consumer: str, min_idle_ms: int, count: int) -> list[Entry]:
        """Take over up to `count` entries pending in the group, any consumer's, idle `min_idle_ms` or more.

        A consumer that died (its host gone for good) leaves entries nobody else would read; a live
        one re-reads its own pending entries often, which keeps them from idling that long.
        """
        if count <= 0:
            raise ValueError("count must be positive")
        try:
            response: Any = await self._redis.xautoclaim(
                self.stream, self.group, consumer, min_idle_ms, start_id="0-0", count=count
            )
        except ResponseError as exc:
            if not _is_nogroup(exc):
                raise
            await self.ensure_group()
            return []
        entries: list[Entry] = []
        gone: list[bytes] = []
        for entry_id, fields in response[1]:
            if fields:
                entries.append((entry_id, fields))
            elif entry_id is not None:
                gone.append(entry_id)  # Redis 6.2 hands back trimmed entries empty; 7 drops them itself
        if gone:
            await self.ack(gone)
        if entries:
            self._unacked.setdefault(consumer, set()).update(entry_id for entry_id, _ in entries)
        return entries

    async def dead_letter(self, entry_id: bytes, fields: Mapping[bytes, bytes], error: str, attempts: int) -> bool:
        """Move one pending entry aside with why it failed; False if it was no longer pending."""
        for unacked in self._unacked.values():
            unacked.discard(entry_id)
        flat: list[bytes | str | int] = []
        for name, value in fields.items():
            flat += [name, value]
        flat += [b"_id", entry_id, b"_error", error, b"_attempts", attempts]
        try:
            moved = await self._dead_letter(
                keys=[self.stream, self.dead_stream, self.dead_count_key],
                args=[self.group, entry_id, DEAD_MAXLEN, *flat],
            )
        except ResponseError as exc:
            if not _is_nogroup(exc):
                raise
            return False
        return bool(moved)

    async def dead_letters(self, count: int = 100) -> list[Entry]:
        """The newest dead letters, newest first: the original fields plus `_id`, `_error`, `_attempts`."""
        response: Any = await self._redis.xrevrange(self.dead_stream, count=count)
        return [(entry_id, fields) for entry_id, fields in response]

    async def backlog(self) -> Backlog:
        """How far behind the writers are: entries not yet written, and the age of the oldest."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.exists(self.stream)
            pipe.get(self.dead_count_key)
            exists, dead = await pipe.execute()
        dead_letters = int(dead or 0)
        if not exists:
            return Backlog(0, 0, None, dead_letters, group_exists=False)
        groups: list[dict[str, Any]] = await self._redis.xinfo_groups(self.stream)
        group = next((g for g in groups if g["name"] in (self.group, self.group.encode())), None)
        if group is None:  # a writer has not recreated it yet: the whole stream is unwritten
            first: Any = await self._redis.xrange(self.stream, count=1)
            return Backlog(
                0, await self._redis.xlen(self.stream), id_ms(first[0][0]) if first else None, dead_letters, False
            )
        pending: Any = await self._redis.xpending(self.stream, self.group)
        last = group["last-delivered-id"]
        last_text = last.decode() if isinstance(last, bytes) else str(last)
        after: Any = await self._redis.xrange(self.stream, min=f"({last_text}", count=1)
        lag = group.get("lag")
        undelivered = int(lag) if lag is not None else len(after)  # Redis before 7 reports no lag
        oldest = [id_ms(pending["min"])] if pending["pending"] else []
        if after:
            oldest.append(id_ms(after[0][0]))
        return Backlog(int(pending["pending"]), undelivered, min(oldest, default=None), dead_letters, True)

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
