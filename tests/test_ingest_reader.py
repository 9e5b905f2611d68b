"""The upload reader against hostile bodies: multi-member gzip, unbalanced quotes, long parses."""

from __future__ import annotations

import asyncio
import gc
import gzip
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest

from app.ingest.errors import BadBatch, BatchTooLarge
from app.ingest.kinds import KINDS
from app.ingest.reader import BodyDecoder, CsvRows
from app.ingest.upload import receive_batch
from app.rules.ruleset import load_ruleset
from app.settings import Settings
from tests.test_ingest_helpers import csv_body, number


def _decode(decoder: BodyDecoder, body: bytes, piece: int) -> str:
    text = "".join(t for i in range(0, len(body), piece) for t in decoder.feed(body[i : i + piece]))
    return text + decoder.finish()


def test_every_member_of_a_multi_member_gzip_is_read() -> None:
    """What `cat a.gz b.gz` makes, and what some tools write: one stream, every member read."""
    first = csv_body("id_number,name", *(f"{number(i)},张{i}" for i in range(300)))
    second = "".join(f"{number(i)},李{i}\n" for i in range(300, 700)).encode()
    third = f"{number(700)},王\n".encode()
    body = gzip.compress(first) + gzip.compress(second) + gzip.compress(b"") + gzip.compress(third)
    for piece in (1, 7, 4096, len(body)):
        decoder = BodyDecoder(1 << 20, gzip=True)
        assert _decode(decoder, body, piece).encode() == first + second + third, piece
        assert (decoder.raw_bytes, decoder.bytes) == (len(body), len(first + second + third))
    # Zero padding after a member is allowed, as gzip itself allows it.
    padded = gzip.compress(first) + b"\0" * 10 + gzip.compress(second) + b"\0" * 3
    assert _decode(BodyDecoder(1 << 20), padded, 5).encode() == first + second


def test_multi_member_gzip_keeps_the_bounds_on_the_total() -> None:
    # Each member alone is under the limit; together they are over it.
    member = gzip.compress(b"x" * 600)
    with pytest.raises(BatchTooLarge):
        _decode(BodyDecoder(1000, gzip=True), member + member, 64)
    # A second member cut short, or junk after the first, is a broken body, not a shorter batch.
    whole = gzip.compress(b"a,b\n")
    for broken in (whole + gzip.compress(b"c,d\n")[:-6], whole + b"junk"):
        with pytest.raises(BadBatch) as caught:
            _decode(BodyDecoder(1 << 20, gzip=True), broken, 3)
        assert caught.value.code == "bad_gzip"


def _csv_cost(text: str, piece: int = 4096) -> float:
    """CPU seconds of this thread to read ``text`` fed in pieces (the best of three)."""
    best = float("inf")
    for _ in range(3):
        reader = CsvRows(KINDS["population"])
        started = time.thread_time()
        for start in range(0, len(text), piece):
            reader.feed(text[start : start + piece])
        reader.finish()
        best = min(best, time.thread_time() - started)
    return best


def test_unbalanced_quotes_cost_linear_time() -> None:
    """A quote that never closes, then many newlines: the reader must not back off and recount."""

    def bad_quote(lines: int) -> str:
        return 'id_number,name\n"' + "\n" * lines

    small, large = _csv_cost(bad_quote(5_000)), _csv_cost(bad_quote(40_000))
    # Eight times the input: linear work is ~8x, quadratic ~64x. Generous, and a floor for timer noise.
    assert large < 16 * small + 0.02, (small, large)
    # Well-formed rows with quoted fields grow linearly too.
    rows = [f'{number(i)},"张,{i}"' for i in range(2_000)]
    small, large = (
        _csv_cost(csv_body("id_number,name", *rows).decode()),
        _csv_cost(csv_body("id_number,name", *(rows * 8)).decode()),
    )
    assert large < 16 * small + 0.02, (small, large)


def test_a_record_that_never_ends_is_refused_quickly() -> None:
    reader = CsvRows(KINDS["population"])
    text = 'id_number,name\n"' + "\n" * (1 << 20)
    started = time.thread_time()
    with pytest.raises(BadBatch) as caught:
        for start in range(0, len(text), 8192):
            reader.feed(text[start : start + 8192])
    assert caught.value.code == "bad_csv"
    assert time.thread_time() - started < 1.0


class LoopWatch:
    """The longest stretch the event loop spent away from this task while it ran."""

    def __init__(self) -> None:
        self.longest = 0.0
        self._stop = asyncio.Event()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stop.is_set():
            before = loop.time()
            await asyncio.sleep(0)
            self.longest = max(self.longest, loop.time() - before)

    def stop(self) -> None:
        self._stop.set()


async def _one_piece(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _receive_watched(db: asyncpg.Connection, settings: Settings, body: bytes) -> tuple[float, Exception | None]:
    # What is measured is the reader's slicing, not the collector: a full collection of the test
    # process's heap (every module and fixture it holds) alone takes 62-76 ms here. Frozen objects are
    # not scanned, as in `healthcode serve`, which freezes its heap after start-up (app/http/serve.py).
    gc.collect()
    gc.freeze()
    try:
        return await _watched_receive(db, settings, body)
    finally:
        gc.unfreeze()


async def _watched_receive(db: asyncpg.Connection, settings: Settings, body: bytes) -> tuple[float, Exception | None]:
    watch = LoopWatch()
    watching = asyncio.create_task(watch.run())
    failure: Exception | None = None
    try:
        await receive_batch(
            db,
            client_id=1,
            kind=KINDS["population"],
            fmt="csv",
            body=_one_piece(body),
            key=None,
            pepper=settings.pepper,
            ruleset=load_ruleset(),
            now=datetime.now(UTC),
            max_bytes=1 << 26,
        )
    except BadBatch as exc:
        failure = exc
    finally:
        watch.stop()
        await watching
    return watch.longest, failure


@pytest.mark.slow
async def test_reading_an_upload_never_holds_the_event_loop(db: asyncpg.Connection, settings: Settings) -> None:
    """Parsing yields between bounded slices: a large gzip body and a bad-quote body alike."""
    big = gzip.compress(csv_body("id_number,name", *(f"{number(i)},张{i}" for i in range(40_000))))
    longest, failure = await _receive_watched(db, settings, big)
    assert failure is None
    assert await db.fetchval("SELECT rows_read FROM batches") == 40_000
    bad_quote = b'id_number,name\n"' + b"\n" * 200_000
    longest_bad, failure = await _receive_watched(db, settings, gzip.compress(bad_quote))
    assert failure is None  # one row of many lines, rejected for its field count
    # A few milliseconds is the aim; the bound leaves room for a machine shared with other work.
    assert max(longest, longest_bad) < 0.05, (longest, longest_bad)
