"""Receiving a batch: stream the body into staging, one transaction, durable before it is acknowledged.

The batch row and every staged row and row rejection are committed together, so a batch either exists
in full (state ``received``) or not at all: a client that lost the connection simply sends it again.
Row validation and pseudonymisation happen here, while streaming, so staging never holds a raw
identity number.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
from collections import Counter
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Final

import asyncpg

from app.db import Conn
from app.ingest.errors import TooManyRejections, UnknownKind, UploadInProgress
from app.ingest.fields import Pseudonymiser, RowError, storable
from app.ingest.kinds import KINDS, Context, Kind
from app.ingest.reader import BodyDecoder, CsvRows, NdjsonRows, Parsed
from app.ingest.store import batch_by_key
from app.rules.ruleset import RuleSet

FORMATS: Final = ("csv", "ndjson")
# Rejected rows a batch may have before it is refused as a whole (the settings' default).
MAX_REJECTIONS: Final = 10_000
# Rows per COPY: large enough that per-call overhead vanishes, small enough to bound memory.
COPY_CHUNK: Final = 20_000
# Rows validated between turns of the event loop, and text parsed at a time: each stretch of work
# stays around a millisecond, so an upload never holds up the requests of its process (and a
# background COPY sends its next piece meanwhile).
_YIELD_EVERY: Final = 200
_SLICE: Final = 8192
Progress = Callable[[int, int], None]  # (raw bytes read, rows read)


def kind_named(name: str | None) -> Kind:
    kind = KINDS.get(name or "")
    if kind is None:
        raise UnknownKind(f"kind must be one of {', '.join(KINDS)}, not {name!r}")
    return kind


@dataclass(frozen=True, slots=True)
class Received:
    batch_id: int
    created: bool  # False: an earlier upload with the same key or content; nothing was changed


class _SameBatch(Exception):
    def __init__(self, batch_id: int) -> None:
        self.batch_id = batch_id


class Stager:
    """Validated rows to the kind's staging table and rejected ones to batch_rejections, by COPY.

    One COPY at a time runs in the background while the next rows are parsed: Postgres stores one chunk
    on one core while Python validates the next on the other. Call `flush` at the end (it waits for
    every COPY), and `settle` on failure (the connection is free again once it returns).
    """

    def __init__(self, conn: Conn, kind: Kind, batch_id: int, ctx: Context, max_rejections: int) -> None:
        self.conn = conn
        self.kind = kind
        self.batch_id = batch_id
        self.ctx = ctx
        self.max_rejections = max_rejections
        self.read = 0
        self.rejected = 0
        self._codes: Counter[str] = Counter()  # every rejection so far, copied or not, by code
        self._staged: list[tuple[object, ...]] = []
        self._rejections: list[tuple[object, ...]] = []
        self._columns = ("batch_id", "row_no", *kind.staging_columns)
        self._copying: asyncio.Task[None] | None = None

    async def add(self, parsed: list[Parsed]) -> None:
        parse, ctx, batch_id = self.kind.parse, self.ctx, self.batch_id
        staged, rejections = self._staged, self._rejections
        for n, (row_no, row) in enumerate(parsed, 1):
            if n % _YIELD_EVERY == 0:
                await asyncio.sleep(0)
            if isinstance(row, RowError):
                self._reject(row_no, row)
                continue
            try:
                staged.append((batch_id, row_no, *parse(row, ctx)))
            except RowError as exc:
                self._reject(row_no, exc)
        self.read += len(parsed)
        if len(staged) >= COPY_CHUNK or len(rejections) >= COPY_CHUNK:
            await self._start_copy()

    def _reject(self, row_no: int, error: RowError) -> None:
        self._rejections.append(_rejection(self.batch_id, row_no, error))
        self._codes[error.code] += 1
        if self._codes.total() > self.max_rejections:
            raise TooManyRejections(self.max_rejections, row_no, dict(self._codes))

    async def flush(self) -> None:
        await self._start_copy()
        await self._wait()

    async def settle(self) -> None:
        """Wait for a COPY in flight, ignoring its outcome: the caller is already failing."""
        with contextlib.suppress(Exception):
            await self._wait()

    async def _start_copy(self) -> None:
        await self._wait()  # one connection, one COPY at a time
        staged, rejections = self._staged, self._rejections
        if not staged and not rejections:
            return
        self._staged, self._rejections = [], []
        self.rejected += len(rejections)
        self._copying = asyncio.ensure_future(self._copy(staged, rejections))
        await asyncio.sleep(0)  # let it start sending before parsing goes on

    async def _wait(self) -> None:
        copying, self._copying = self._copying, None
        if copying is not None:
            await copying

    async def _copy(self, staged: list[tuple[object, ...]], rejections: list[tuple[object, ...]]) -> None:
        if staged:
            await self.conn.copy_records_to_table(self.kind.staging_table, records=staged, columns=self._columns)
        if rejections:
            await self.conn.copy_records_to_table(
                "batch_rejections",
                records=rejections,
                columns=("batch_id", "row_no", "field", "code", "message"),
            )


def _rejection(batch_id: int, row_no: int, error: RowError) -> tuple[object, ...]:
    # A rejection may quote the row (a field name, a value): what Postgres cannot store is escaped.
    return batch_id, row_no, storable(error.field), error.code, storable(error.message)


async def receive_batch(
    pool: asyncpg.Pool | Conn,
    *,
    client_id: int,
    kind: Kind,
    fmt: str,
    body: AsyncIterable[bytes],
    key: str | None,
    pepper: bytes,
    ruleset: RuleSet,
    now: datetime,
    max_bytes: int,
    gzip: bool | None = None,
    progress: Progress | None = None,
    max_rejections: int = MAX_REJECTIONS,
    federation_key: bytes | None = None,
) -> Received:
    """Stream ``body`` into staging; an upload seen before (same key, or same content) returns its batch."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}")
    if key is not None and (found := await batch_by_key(pool, client_id, key)) is not None:
        return Received(found["id"], created=False)
    ctx = Context(
        Pseudonymiser(pepper, now.date(), federation_key), now, now.date(), frozenset(ruleset.vaccine_courses)
    )
    async with _connection(pool) as conn:
        decoder = BodyDecoder(max_bytes, gzip=gzip)
        return await _receive(conn, client_id, kind, fmt, body, key, ctx, decoder, progress, max_rejections)


@contextlib.asynccontextmanager
async def _connection(pool: asyncpg.Pool | Conn) -> AsyncIterator[Conn]:
    if isinstance(pool, asyncpg.Pool):
        async with pool.acquire() as conn:
            yield conn
    else:
        yield pool


async def _receive(
    conn: Conn,
    client_id: int,
    kind: Kind,
    fmt: str,
    body: AsyncIterable[bytes],
    key: str | None,
    ctx: Context,
    decoder: BodyDecoder,
    progress: Progress | None,
    max_rejections: int,
) -> Received:
    final_key = key
    try:
        async with conn.transaction():
            if key is not None:
                await _claim_key(conn, client_id, key)
            batch_id = await conn.fetchval(
                "INSERT INTO batches (client_id, kind, format, idempotency_key) VALUES ($1, $2, $3, $4) RETURNING id",
                client_id,
                kind.name,
                fmt,
                key or f"pending:{secrets.token_hex(16)}",
            )
            stager, digest = await _stream(conn, kind, fmt, body, batch_id, ctx, decoder, progress, max_rejections)
            if final_key is None:
                # No Idempotency-Key: the content (and kind) is the key.
                final_key = f"sha256:{kind.name}:{digest}"
                found = await batch_by_key(conn, client_id, final_key)
                if found is not None:
                    raise _SameBatch(found["id"])  # rolls back this copy: the upload changes nothing
            await conn.execute(
                "UPDATE batches SET idempotency_key = $2, rows_read = $3, rejected = $4 WHERE id = $1",
                batch_id,
                final_key,
                stager.read,
                stager.rejected,
            )
    except _SameBatch as same:
        return Received(same.batch_id, created=False)
    except asyncpg.UniqueViolationError:
        # A concurrent upload with the same key committed first; it is the batch.
        found = await batch_by_key(conn, client_id, final_key) if final_key else None
        if found is None:
            raise
        return Received(found["id"], created=False)
    return Received(batch_id, created=True)


async def _claim_key(conn: Conn, client_id: int, key: str) -> None:
    """Hold the key for this transaction, or refuse at once if another upload holds it.

    Without this, a second upload with the key would wait on the unique index until the first commits
    (for as long as the first body takes to arrive). The lock ends with the transaction, however it ends.
    """
    if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", _key_lock(client_id, key)):
        raise UploadInProgress(
            "an upload with this Idempotency-Key is still in progress; once it ends, the same request "
            "answers with its batch"
        )
    # The first upload may have committed between the caller's look-up and the lock.
    if (found := await batch_by_key(conn, client_id, key)) is not None:
        raise _SameBatch(found["id"])


def _key_lock(client_id: int, key: str) -> int:
    """A 64-bit advisory lock id for (client, key): a collision only makes an upload wait its turn."""
    digest = hashlib.blake2b(f"{client_id}:{key}".encode(), digest_size=8, person=b"hc-upload").digest()
    return int.from_bytes(digest, "big", signed=True)


async def _stream(
    conn: Conn,
    kind: Kind,
    fmt: str,
    body: AsyncIterable[bytes],
    batch_id: int,
    ctx: Context,
    decoder: BodyDecoder,
    progress: Progress | None,
    max_rejections: int,
) -> tuple[Stager, str]:
    """Returns the stager (with its counts) and the SHA-256 of the decompressed body."""
    rows = CsvRows(kind) if fmt == "csv" else NdjsonRows(kind)
    stager = Stager(conn, kind, batch_id, ctx, max_rejections)
    try:
        async for chunk in body:
            for text in decoder.feed(chunk):
                await _add_text(stager, rows, text)
            if progress is not None:
                progress(decoder.raw_bytes, stager.read)
        await _add_text(stager, rows, decoder.finish())
        await stager.add(rows.finish())
        await stager.flush()
    except BaseException:
        await stager.settle()  # the transaction's rollback needs the connection free
        raise
    if progress is not None:
        progress(decoder.raw_bytes, stager.read)
    return stager, decoder.digest.hexdigest()


async def _add_text(stager: Stager, rows: CsvRows | NdjsonRows, text: str) -> None:
    """Parse and stage ``text`` a slice at a time, letting the event loop run between slices."""
    for start in range(0, len(text), _SLICE):
        await stager.add(rows.feed(text[start : start + _SLICE]))
        await asyncio.sleep(0)
