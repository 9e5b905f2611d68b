"""Scan events: recorded into a Redis stream on the request path, drained into Postgres by a writer."""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import asyncpg
from redis.exceptions import RedisError

from cache.scan_stream import ScanStream

log = logging.getLogger(__name__)

_INSERT = """
INSERT INTO scan_events (scanned_at, checkpoint, client_id, pseudonym, valid, reason,
                         token_colour, current_colour, stream_id)
SELECT to_timestamp(t.at), t.checkpoint, t.client_id, t.pseudonym, t.valid, t.reason,
       t.token_colour, t.current_colour, t.stream_id
FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::bytea[], $5::bool[], $6::text[],
            $7::text[], $8::text[], $9::text[])
     AS t(at, checkpoint, client_id, pseudonym, valid, reason, token_colour, current_colour, stream_id)
ON CONFLICT DO NOTHING
"""


@dataclass(frozen=True, slots=True)
class ScanEvent:
    scanned_at: int
    checkpoint: str
    client_id: int
    pseudonym: bytes | None
    valid: bool
    reason: str
    token_colour: str | None
    current_colour: str | None

    def to_fields(self) -> dict[str, bytes | str | int]:
        return {
            "at": self.scanned_at,
            "cp": self.checkpoint,
            "cl": self.client_id,
            "p": self.pseudonym or b"",
            "v": int(self.valid),
            "r": self.reason,
            "tc": self.token_colour or "",
            "cc": self.current_colour or "",
        }

    @classmethod
    def from_fields(cls, fields: dict[bytes, bytes]) -> ScanEvent:
        return cls(
            scanned_at=int(fields[b"at"]),
            checkpoint=fields[b"cp"].decode(),
            client_id=int(fields[b"cl"]),
            pseudonym=fields[b"p"] or None,
            valid=fields[b"v"] == b"1",
            reason=fields[b"r"].decode(),
            token_colour=fields[b"tc"].decode() or None,
            current_colour=fields[b"cc"].decode() or None,
        )


async def insert_scans(conn: asyncpg.Connection | asyncpg.Pool, events: list[tuple[str, ScanEvent]]) -> None:
    """Insert (stream id, event) pairs; a re-delivered stream entry is inserted once."""
    columns: list[list[object]] = [[] for _ in range(9)]
    for stream_id, e in events:
        row = (
            e.scanned_at, e.checkpoint, e.client_id, e.pseudonym, e.valid, e.reason,
            e.token_colour, e.current_colour, stream_id,
        )  # fmt: skip
        for column, value in zip(columns, row, strict=True):
            column.append(value)
    await conn.execute(_INSERT, *columns)


class ScanRecorder:
    """Records a scan before the scanner gets its answer: into the stream, or straight into Postgres
    when Redis is unavailable, so no scan is lost either way."""

    def __init__(self, stream: ScanStream, pool: asyncpg.Pool) -> None:
        self.stream = stream
        self.pool = pool
        self._fallback_seq = 0

    async def record(self, event: ScanEvent) -> None:
        try:
            await self.stream.add(event.to_fields())
        except (RedisError, OSError) as exc:
            log.warning("scan stream unavailable (%s); writing the scan to postgres directly", type(exc).__name__)
            self._fallback_seq += 1
            await insert_scans(self.pool, [(f"direct-{socket.gethostname()}-{id(self)}-{self._fallback_seq}", event)])


async def ensure_scan_partitions(conn: asyncpg.Connection | asyncpg.Pool, today: date, days_ahead: int = 3) -> None:
    """Daily partitions from today on; created ahead so rows rarely land in the default partition."""
    for offset in range(days_ahead + 1):
        day = today + timedelta(days=offset)
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        name = f"scan_events_{day:%Y%m%d}"
        try:
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF scan_events "
                f"FOR VALUES FROM ('{start.isoformat()}') TO ('{(start + timedelta(days=1)).isoformat()}')"
            )
        except asyncpg.PostgresError as exc:
            # Rows of that day already sit in the default partition; they stay there, still queryable.
            log.warning("scan partition %s not created: %s", name, exc)


class ScanWriter:
    """Drains the scan stream into Postgres in batches, acknowledging only what is committed."""

    def __init__(self, stream: ScanStream, pool: asyncpg.Pool, consumer: str, batch_size: int = 1000) -> None:
        self.stream = stream
        self.pool = pool
        self.consumer = consumer
        self.batch_size = batch_size
        self.written = 0

    async def drain_once(self, block_ms: int = 1000) -> int:
        entries = await self.stream.read(self.consumer, self.batch_size, block_ms)
        if not entries:
            return 0
        events = [(entry_id.decode(), ScanEvent.from_fields(fields)) for entry_id, fields in entries]
        await insert_scans(self.pool, events)
        await self.stream.ack([entry_id for entry_id, _ in entries])
        self.written += len(events)
        return len(events)

    async def run(self) -> None:
        await self.stream.ensure_group()
        pause = 0.5
        while True:
            try:
                await self.drain_once()
                pause = 0.5
            except (RedisError, OSError, asyncpg.PostgresError) as exc:
                # Back off, doubling up to 30 s: never retry into a failing dependency in a tight loop.
                log.warning("scan writer: %s; retrying in %.1f s", exc, pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 30.0)
