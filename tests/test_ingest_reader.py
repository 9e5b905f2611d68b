"""The upload reader against hostile bodies: multi-member gzip, unbalanced quotes, long parses."""

from __future__ import annotations

import gzip
import time

import pytest

from app.ingest.errors import BadBatch, BatchTooLarge
from app.ingest.kinds import KINDS
from app.ingest.reader import BodyDecoder, CsvRows
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
