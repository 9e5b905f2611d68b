"""Scan events: recorded into a Redis stream on the request path, drained into Postgres by a writer.

Only scans of tokens that verified are recorded one by one; refused ones are counted per checkpoint,
client and reason (app.scan_refusals), so a scanner sending junk cannot push real scans out of the
capped stream. The writer never lets one entry block the others: an entry Postgres refuses on its
own is retried a few times, then moved to the dead-letter stream and counted.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

import asyncpg

from app.scan_refusals import RefusalCounts
from cache.connection import REDIS_ERRORS
from cache.scan_stream import Entry, ScanStream, id_ms

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
    def from_fields(cls, fields: Mapping[bytes, bytes]) -> ScanEvent:
        """The event of a stream entry; ValueError if the entry is not one (a field missing or garbled)."""
        try:
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
        except KeyError as exc:
            raise ValueError(f"field {exc.args[0]!r} is missing") from None


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


# Scans this process added to the stream and may not be written yet, kept to rewrite them should Redis
# lose its data. About 200 bytes each: 100,000 is some 20 MB, many seconds of one process's scans.
DEFAULT_KEEP = 100_000


class ScanRecorder:
    """Records a scan before the scanner gets its answer: into the stream, or straight into Postgres
    when Redis is unavailable, so no scan is lost either way. A refused token is only counted.

    A Redis without persistence that restarts loses what the writers had not read yet. So the recorder
    keeps what it added until the stream's backlog shows it written, and `guard` (every second) writes
    what it kept straight to Postgres when Redis' epoch token changed; inserts are idempotent on the
    stream id, so an entry that was written after all is not stored twice.
    """

    def __init__(
        self,
        stream: ScanStream,
        pool: asyncpg.Pool,
        refusals: RefusalCounts | None = None,
        *,
        keep: int = DEFAULT_KEEP,
    ) -> None:
        self.stream = stream
        self.pool = pool
        self.refusals = refusals if refusals is not None else RefusalCounts()
        self.to_stream = 0
        self.to_postgres = 0
        self.rewritten = 0  # kept scans written to Postgres after Redis lost its data
        self.unkept = 0  # scans dropped from a full keep before they were known written
        self._fallback_seq = 0
        self._kept: deque[tuple[int, bytes, ScanEvent]] = deque()
        self._keep = keep
        self._seq = 0
        self._epoch: bytes | None = None

    async def record(self, event: ScanEvent) -> None:
        if not event.valid:
            self.refusals.add(event.scanned_at, event.checkpoint, event.client_id, event.reason)
            return
        try:
            entry_id = await self.stream.add(event.to_fields())
        except REDIS_ERRORS as exc:
            log.warning("scan stream unavailable (%s); writing the scan to postgres directly", type(exc).__name__)
            self._fallback_seq += 1
            await insert_scans(self.pool, [(f"direct-{socket.gethostname()}-{id(self)}-{self._fallback_seq}", event)])
            self.to_postgres += 1
            return
        self.to_stream += 1
        self._seq += 1
        if len(self._kept) >= self._keep:
            self._kept.popleft()
            self.unkept += 1
        self._kept.append((self._seq, entry_id, event))

    @property
    def kept(self) -> int:
        return len(self._kept)

    async def guard(self) -> int:
        """Forget kept scans the backlog shows written; if Redis lost its data, write all kept scans to
        Postgres. Returns how many were written so."""
        seq = self._seq
        backlog = await self.stream.backlog()
        # Read after the backlog: a loss before this read is seen here, so that backlog is not trusted.
        epoch = await self.stream.epoch()
        if self._epoch is not None and epoch != self._epoch:
            lost = [(entry_id.decode(), event) for _, entry_id, event in self._kept]
            await insert_scans(self.pool, lost)  # should this fail, the next guard tries again
            self._kept.clear()
            self.rewritten += len(lost)
            self._epoch = epoch
            log.warning("redis lost its data: %d scans recorded here rewritten to postgres directly", len(lost))
            return len(lost)
        self._epoch = epoch
        # Older than the oldest unwritten entry: stored or set aside. The same millisecond stays.
        while self._kept and self._kept[0][0] <= seq:
            if backlog.oldest_ms is not None and id_ms(self._kept[0][1]) >= backlog.oldest_ms:
                break
            self._kept.popleft()
        return 0

    async def run(self, seconds: float) -> None:
        """Every `seconds` until cancelled: guard the kept scans, flush the refused-scan counts."""
        failing: dict[str, str] = {}
        while True:
            await asyncio.sleep(seconds)
            for job, work in (("guard", self.guard), ("flush", lambda: self.refusals.flush(self.pool))):
                try:
                    await work()
                except Exception as exc:  # kept scans and counts stay for the next round
                    what = type(exc).__name__
                    if failing.get(job) != what:  # one line per change of state
                        log.warning("scan recorder %s failing (%s: %s); trying again", job, what, exc)
                        failing[job] = what
                else:
                    failing.pop(job, None)


def _is_row_error(exc: asyncpg.PostgresError) -> bool:
    """Refused for what some row holds (classes 22 data exception, 23 integrity constraint), as opposed
    to Postgres being down, overloaded or misconfigured, where every row would fail alike."""
    return str(getattr(exc, "sqlstate", "") or "")[:2] in ("22", "23")


class ScanWriter:
    """Drains the scan stream into Postgres in batches, acknowledging only what is committed.

    A batch Postgres refuses for a row's content is split in halves until the refused entries stand
    alone (a few statements per bad entry, not one per entry); those are retried on the next rounds
    and, at `max_attempts`, moved to the dead-letter stream. Entries pending for `claim_idle_ms` under
    any consumer (one whose host died) are claimed. Dependency failures back off, doubling to 30 s.
    """

    def __init__(
        self,
        stream: ScanStream,
        pool: asyncpg.Pool,
        consumer: str,
        batch_size: int = 1000,
        *,
        max_attempts: int = 3,
        claim_idle_ms: int = 60_000,
        first_pause: float = 0.5,
        max_pause: float = 30.0,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.stream = stream
        self.pool = pool
        self.consumer = consumer
        self.batch_size = batch_size
        self.max_attempts = max_attempts
        self.claim_idle_ms = claim_idle_ms
        self.first_pause = first_pause
        self.max_pause = max_pause
        self.written = 0
        self.dead_lettered = 0
        self.claimed = 0
        self.failures = 0  # rounds that failed on a dependency (Redis or Postgres down, ...)
        self.last_written_at: float | None = None  # wall clock, for /metrics
        self._attempts: dict[bytes, int] = {}  # failed attempts of entries refused on their own
        self._next_claim = 0.0  # monotonic

    async def drain_once(self, block_ms: int = 1000) -> int:
        """One round: claim idle entries of others, or read; write; returns how many entries were taken."""
        entries: list[Entry] = []
        if time.monotonic() >= self._next_claim:
            entries = await self.stream.claim_idle(self.consumer, self.claim_idle_ms, self.batch_size)
            self.claimed += len(entries)
            if len(entries) < self.batch_size:  # a full page: there may be more, claim again next round
                self._next_claim = time.monotonic() + self.claim_idle_ms / 2000
        if not entries:
            entries = await self.stream.read(self.consumer, self.batch_size, block_ms)
        if entries:
            await self._write(entries)
        return len(entries)

    async def _write(self, entries: list[Entry]) -> None:
        events: list[tuple[bytes, ScanEvent]] = []
        for entry_id, fields in entries:
            try:
                events.append((entry_id, ScanEvent.from_fields(fields)))
            except (ValueError, UnicodeDecodeError) as exc:
                await self._set_aside(entry_id, fields, f"unreadable entry: {exc}", 1)  # no retry can help
        stored, refused = await self._store(events)
        if stored:
            await self.stream.ack(stored)
            for entry_id in stored:
                self._attempts.pop(entry_id, None)
            self.written += len(stored)
            self.last_written_at = time.time()
        by_id = dict(entries)
        for entry_id, error in refused:
            attempts = self._attempts.get(entry_id, 0) + 1
            if attempts >= self.max_attempts:
                await self._set_aside(entry_id, by_id[entry_id], error, attempts)
            else:
                self._attempts[entry_id] = attempts  # stays pending: read again first next round
                log.warning("scan %s refused by postgres (attempt %d): %s", entry_id.decode(), attempts, error)

    async def _store(self, events: list[tuple[bytes, ScanEvent]]) -> tuple[list[bytes], list[tuple[bytes, str]]]:
        """Insert; the ids stored and (id, error) of entries refused on their own. Other errors raise."""
        if not events:
            return [], []
        try:
            await insert_scans(self.pool, [(entry_id.decode(), event) for entry_id, event in events])
        except asyncpg.PostgresError as exc:
            if not _is_row_error(exc):
                raise
            if len(events) == 1:
                return [], [(events[0][0], f"{type(exc).__name__}: {exc}")]
        else:
            return [entry_id for entry_id, _ in events], []
        half = len(events) // 2
        stored_a, refused_a = await self._store(events[:half])
        stored_b, refused_b = await self._store(events[half:])
        return stored_a + stored_b, refused_a + refused_b

    async def _set_aside(self, entry_id: bytes, fields: Mapping[bytes, bytes], error: str, attempts: int) -> None:
        self._attempts.pop(entry_id, None)
        if await self.stream.dead_letter(entry_id, fields, error, attempts):
            self.dead_lettered += 1
            log.error(
                "scan %s moved to the dead-letter stream after %d attempt(s): %s", entry_id.decode(), attempts, error
            )

    async def run(self) -> None:
        """Drain until cancelled. Never dies of a failure: Redis down at start-up or restarted empty
        (the group is recreated on the next read), Postgres down, or a bug; each backs off."""
        pause = self.first_pause
        failing: str | None = None
        while True:
            try:
                await self.drain_once()
            except Exception as exc:  # the writer must outlive anything one round meets
                self.failures += 1
                what = f"{type(exc).__name__}: {exc}"
                if what != failing:  # one line per change of state, not one per retry
                    log.warning("scan writer failing (%s); backing off up to %.0f s", what, self.max_pause)
                    failing = what
                await asyncio.sleep(pause)
                pause = min(pause * 2, self.max_pause)
            else:
                if failing is not None:
                    log.warning("scan writer recovered after %s", failing)
                    failing = None
                pause = self.first_pause
