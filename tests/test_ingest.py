"""Ingestion internals: the incremental reader, crash recovery, the sweeper, `healthcode load`, overrides."""

from __future__ import annotations

import asyncio
import gzip
import io
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis

from app.cli import main
from app.identity import parse_identity, pseudonym
from app.ingest.errors import BadBatch
from app.ingest.fields import Pseudonymiser
from app.ingest.kinds import KINDS
from app.ingest.load import load_file
from app.ingest.process import BatchProcessor
from app.ingest.reader import BodyDecoder, CsvRows
from app.ingest.upload import receive_batch
from app.rules.ruleset import load_ruleset
from app.settings import Settings
from app.statuses.overrides import OverrideError, override_status
from app.statuses.publish import StatusPublisher
from cache.status_writer import StatusWriter
from tests.support import cached_statuses
from tests.test_ingest_helpers import ago, csv_body, number

RULESET = load_ruleset()


def _rows(kind: str, pieces: list[str]) -> list[object]:
    reader = CsvRows(KINDS[kind])
    out: list[object] = []
    for piece in pieces:
        out += reader.feed(piece)
    return out + reader.finish()


def test_csv_rows_across_pieces() -> None:
    text = f'id_number,name\r\n{number(1)},"Zhang\nSan"\r\n{number(2)},"Li, ""Si"""\n'
    whole = _rows("population", [text])
    assert whole == [
        (1, {"id_number": number(1), "name": "Zhang\nSan"}),
        (2, {"id_number": number(2), "name": 'Li, "Si"'}),
    ]
    # However the text is cut (inside a quoted newline, between \r and \n), the rows are the same.
    for cut in range(1, len(text)):
        assert _rows("population", [text[:cut], text[cut:]]) == whole


def test_body_decoder_gzip_in_small_pieces() -> None:
    data = csv_body("id_number,name", *(f"{number(i)},张{i}" for i in range(500)))
    packed = gzip.compress(data)
    decoder = BodyDecoder(1 << 20)
    text = "".join(t for i in range(0, len(packed), 7) for t in decoder.feed(packed[i : i + 7])) + decoder.finish()
    assert text.encode() == data
    assert (decoder.raw_bytes, decoder.bytes) == (len(packed), len(data))
    with pytest.raises(BadBatch):
        truncated = BodyDecoder(1 << 20)
        list(truncated.feed(packed[:-20]))
        truncated.finish()


def test_pseudonymiser_matches_identity_module() -> None:
    pepper = b"p" * 32
    p, id_type, masked = Pseudonymiser(pepper, datetime.now(UTC).date())(None, f" {number(5)} ")
    assert p == pseudonym(parse_identity("resident", number(5)), pepper)
    assert (id_type, masked) == ("resident", f"50**************{number(5)[-2:]}")


async def _body(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _stage(db: asyncpg.Connection, settings: Settings, kind: str, data: bytes) -> int:
    received = await receive_batch(
        db,
        client_id=1,
        kind=KINDS[kind],
        fmt="csv",
        body=_body(data),
        key=None,
        pepper=settings.pepper,
        ruleset=RULESET,
        now=datetime.now(UTC),
        max_bytes=1 << 20,
    )
    return received.batch_id


@pytest.fixture
async def processor(settings: Settings, db: asyncpg.Connection, redis: Redis) -> AsyncIterator[BatchProcessor]:
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=2)
    try:
        yield BatchProcessor(pool, StatusPublisher(StatusWriter(redis), RULESET))
    finally:
        await pool.close()


TESTS = "id_number,sampled_at,result,lab"


async def test_restart_mid_batch_completes_it(
    settings: Settings, db: asyncpg.Connection, processor: BatchProcessor, redis: Redis
) -> None:
    """A crash during the merge: the batch is `loading`, its rows staged, nothing merged. Recovery merges
    it exactly once and refreshes the cache."""
    batch_id = await _stage(
        db,
        settings,
        "test",
        csv_body(
            TESTS, f"{number(1)},{ago(hours=3)},positive,lab", f"{number(2)},{ago(hours=3)},negative,lab", "x,y,z,w"
        ),
    )
    await db.execute("UPDATE batches SET state = 'loading', started_at = now() WHERE id = $1", batch_id)
    assert await db.fetchval("SELECT count(*) FROM nucleic_tests") == 0
    assert await processor.recover() == [batch_id]
    batch = await db.fetchrow("SELECT * FROM batches WHERE id = $1", batch_id)
    assert batch is not None
    assert (batch["state"], batch["rows_read"], batch["accepted"], batch["rejected"], batch["duplicates"]) == (
        "done",
        3,
        2,
        1,
        0,
    )
    assert await db.fetchval("SELECT count(*) FROM nucleic_tests") == 2
    assert await db.fetchval("SELECT count(*) FROM staging_test") == 0
    assert await db.fetchval("SELECT count(*) FROM statuses WHERE colour = 'red'") == 1
    assert await cached_statuses(redis) == 2
    # Running recovery again finds nothing to do and changes nothing.
    assert await processor.recover() == []
    assert await db.fetchval("SELECT count(*) FROM nucleic_tests") == 2


async def test_restart_after_merge_only_recomputes(
    settings: Settings, db: asyncpg.Connection, processor: BatchProcessor
) -> None:
    """A crash after the merge committed but before statuses were written: counts are kept, not redone."""
    batch_id = await _stage(db, settings, "test", csv_body(TESTS, f"{number(1)},{ago(hours=3)},positive,lab"))
    from app.ingest.merge import merge_batch

    async with db.transaction():
        merged = await merge_batch(db, batch_id, "test")
        await db.execute(
            "UPDATE batches SET state = 'loading', accepted = $2, merged_at = now() WHERE id = $1",
            batch_id,
            merged.accepted,
        )
    assert await db.fetchval("SELECT count(*) FROM statuses") == 0
    await processor.recover()
    batch = await db.fetchrow("SELECT state, accepted, duplicates FROM batches WHERE id = $1", batch_id)
    assert batch is not None
    assert tuple(batch) == ("done", 1, 0)
    assert await db.fetchval("SELECT colour FROM statuses") == "red"


async def test_unmergeable_batch_fails_cleanly_and_can_be_resent(
    settings: Settings, db: asyncpg.Connection, processor: BatchProcessor
) -> None:
    data = csv_body(TESTS, f"{number(1)},{ago(hours=3)},negative,lab")
    batch_id = await _stage(db, settings, "test", data)
    # Staged data the record table refuses (as if a check had been missed): nothing may be half-applied.
    await db.execute("UPDATE staging_test SET result = 'maybe' WHERE batch_id = $1", batch_id)
    await db.execute(
        "INSERT INTO staging_test (batch_id, row_no, pseudonym, id_type, masked_number, sampled_at, result, lab) "
        "SELECT batch_id, 2, pseudonym, id_type, masked_number, sampled_at, 'negative', 'lab2' FROM staging_test"
    )
    await processor.process(batch_id)
    batch = await db.fetchrow("SELECT state, error, merged_at FROM batches WHERE id = $1", batch_id)
    assert batch is not None
    assert batch["state"] == "failed" and batch["merged_at"] is None and "merge failed" in batch["error"]
    assert await db.fetchval("SELECT count(*) FROM nucleic_tests") == 0
    assert await db.fetchval("SELECT count(*) FROM subjects") == 0
    assert await db.fetchval("SELECT count(*) FROM staging_test") == 0
    # The same content can be sent again: it is a new batch, not the failed one.
    again = await _stage(db, settings, "test", data)
    assert again != batch_id
    await processor.process(again)
    assert await db.fetchval("SELECT count(*) FROM nucleic_tests") == 1


async def test_sweeper_recomputes_expired_statuses(
    settings: Settings, db: asyncpg.Connection, processor: BatchProcessor, redis: Redis
) -> None:
    batch_id = await _stage(
        db, settings, "population", csv_body("id_number,name", f"{number(1)},张三", f"{number(2)},李四")
    )
    await processor.process(batch_id)
    await db.execute("UPDATE statuses SET valid_until = now() - interval '1 minute', colour = 'red'")
    await redis.flushdb()
    assert await processor.sweep() == 2
    assert await db.fetchval("SELECT count(*) FROM statuses WHERE colour = 'green' AND valid_until > now()") == 2
    assert await cached_statuses(redis) == 2
    assert await processor.sweep() == 0


async def test_processing_tasks_can_be_awaited(
    settings: Settings, db: asyncpg.Connection, processor: BatchProcessor
) -> None:
    batch_id = await _stage(db, settings, "population", csv_body("id_number,name", f"{number(1)},张三"))
    task = processor.submit(batch_id)
    assert processor.submit(batch_id) is task
    await processor.wait(batch_id)
    assert await db.fetchval("SELECT state FROM batches WHERE id = $1", batch_id) == "done"


async def test_load_file(settings: Settings, db: asyncpg.Connection, redis: Redis, tmp_path: Path) -> None:
    people = tmp_path / "people.csv.gz"
    people.write_bytes(gzip.compress(csv_body("id_number,name", *(f"{number(i)},张{i}" for i in range(50)), "bad,row")))
    out = io.StringIO()
    batch_id = await load_file(settings, "population", people, out=out)
    report = out.getvalue()
    assert (
        "done; read 51, accepted 50, rejected 1, duplicates 0, corrected 0, retracted 0; 50 statuses recomputed"
        in report
    )
    assert "row 51: id_number: wrong_length" in report
    assert "rejections by code: wrong_length 1" in report
    assert await db.fetchval("SELECT count(*) FROM subjects") == 50
    assert await cached_statuses(redis) == 50
    out = io.StringIO()
    assert await load_file(settings, "population", people, out=out) == batch_id
    assert "loaded before" in out.getvalue()


async def test_cli_load_and_override(
    settings: Settings, db: asyncpg.Connection, redis: Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in {
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "HEALTHCODE_PEPPER": settings.pepper.hex(),
        "HEALTHCODE_HANDLE_KEY": settings.handle_key.hex(),
        "HEALTHCODE_KEYS_DIR": str(tmp_path / "keys"),
    }.items():
        monkeypatch.setenv(name, value)
    tests = tmp_path / "tests.ndjson"
    tests.write_text(
        f'{{"id_number": "{number(1)}", "sampled_at": "{ago(hours=1)}", "result": "negative", "lab": "l"}}\n'
    )
    # main() runs its own event loop, so it runs in a thread.
    assert await asyncio.to_thread(main, ["load", "--kind", "test", str(tests)]) == 0
    assert await db.fetchval("SELECT colour FROM statuses") == "green"
    missing = ["status", "override", "--id-number", number(1), "--colour", "red", "--actor", "cdc", "--hours", "2"]
    with pytest.raises(SystemExit):
        await asyncio.to_thread(main, missing)
    args = [*missing, "--reason", "positive contact traced by hand"]
    assert await asyncio.to_thread(main, args) == 0
    assert await db.fetchval("SELECT colour FROM statuses") == "red"
    # The newest: the audit log is never emptied, so earlier tests' overrides are in it too.
    audit = await db.fetchrow(
        "SELECT actor, action, detail FROM audit_log WHERE action = 'status.override' ORDER BY id DESC LIMIT 1"
    )
    assert audit is not None
    assert (audit["actor"], audit["action"], audit["detail"]["colour"]) == ("cdc", "status.override", "red")
    assert number(1) not in str(await db.fetch("SELECT * FROM audit_log"))


async def test_override_rules(settings: Settings, db: asyncpg.Connection, redis: Redis) -> None:
    subject = pseudonym(parse_identity("resident", number(1)), settings.pepper)
    now = int(time.time())
    later = datetime.now(UTC) + timedelta(hours=1)
    publisher = StatusPublisher(StatusWriter(redis), RULESET)
    kw: dict[str, Any] = {"publisher": publisher, "now": now, "actor": "cdc", "expires_at": later}
    with pytest.raises(OverrideError, match="registered"):
        await override_status(db, subject, colour="red", reason="manual", **kw)
    await db.execute("INSERT INTO subjects (pseudonym, id_type, masked_number) VALUES ($1, 'resident', 'x')", subject)
    with pytest.raises(OverrideError, match="reason"):
        await override_status(db, subject, colour="red", reason=" ", **kw)
    with pytest.raises(OverrideError, match="future"):
        await override_status(
            db, subject, colour="red", reason="manual", **{**kw, "expires_at": datetime.now(UTC) - timedelta(hours=1)}
        )
    await override_status(db, subject, colour="yellow", reason="manual check", **kw)
    row = await db.fetchrow("SELECT colour, reasons, valid_until FROM statuses WHERE pseudonym = $1", subject)
    assert row is not None
    assert (row["colour"], row["reasons"]) == ("yellow", ["override"])
    # valid_until is kept in whole seconds.
    assert row["valid_until"] <= later + timedelta(seconds=1)
