"""Incremental reading of an upload: bytes (maybe gzip) to text to rows, never the whole body at once.

`BodyDecoder` counts bytes before and after decompression against the limit and decompresses with a
bounded output per step, so a small gzip bomb cannot expand in memory; a body of several gzip members
(what ``cat a.gz b.gz`` makes) is read to its end, the limit applying to the total. `CsvRows` and `NdjsonRows`
turn text pieces into complete rows, keeping an incomplete tail (a line, or a quoted CSV field with a
newline in it) for the next piece. Row numbers count data rows from 1 (a CSV header is not counted).
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import zlib
from collections.abc import Iterator
from typing import Final

import orjson

from app.ingest.errors import BadBatch, BatchTooLarge
from app.ingest.fields import RowError, storable, unstorable
from app.ingest.kinds import Kind, Row, header_problems

GZIP_MAGIC: Final = b"\x1f\x8b"
# Most decompressed bytes produced per step: small enough that one step is a fraction of a millisecond.
_STEP: Final = 1 << 16
_MAX_LINE: Final = 1 << 20  # a single row longer than this is not a record, it is a broken file

csv.field_size_limit(_MAX_LINE)


class BodyDecoder:
    """Raw body pieces in, UTF-8 text pieces out; gzip is recognised by its magic bytes."""

    def __init__(self, max_bytes: int, *, gzip: bool | None = None) -> None:
        """``gzip`` None: recognise it by its magic bytes (files); True: it must be gzip (Content-Encoding)."""
        self.max_bytes = max_bytes
        self.raw_bytes = 0
        self.bytes = 0  # after decompression
        self.digest = hashlib.sha256()
        self.gzip = gzip
        self._inflate = zlib.decompressobj(wbits=31)
        self._text = codecs.getincrementaldecoder("utf-8-sig")()

    def feed(self, data: bytes) -> Iterator[str]:
        self.raw_bytes += len(data)
        if self.raw_bytes > self.max_bytes:
            raise BatchTooLarge(self.max_bytes, "uploaded")
        if self.gzip is None and data:
            self.gzip = data[:2] == GZIP_MAGIC
        if not self.gzip:
            yield self._decode(data)
            return
        try:
            yield from self._inflate_all(data)
        except zlib.error as exc:
            raise BadBatch("bad_gzip", f"the gzip body cannot be decompressed ({exc}); send valid gzip") from None

    def _inflate_all(self, data: bytes) -> Iterator[str]:
        """Decompress a bounded step at a time; a member's end starts the next (``cat a.gz b.gz``)."""
        pending = data
        while True:
            if self._inflate.eof:
                # gzip itself allows zero padding after a member; anything else must be another member.
                pending = self._inflate.unused_data + pending
                pending = pending.lstrip(b"\0")
                if not pending:
                    return
                self._inflate = zlib.decompressobj(wbits=31)
            chunk = self._inflate.decompress(pending, _STEP)
            yield self._decode(chunk)
            pending = self._inflate.unconsumed_tail
            # A full step may leave output inside zlib with no input left: ask again until it is drained.
            if not pending and not self._inflate.eof and len(chunk) < _STEP:
                return

    def finish(self) -> str:
        if self.gzip and not self._inflate.eof:
            raise BadBatch("bad_gzip", "the gzip body ends early; send the complete file")
        return self._decode(b"", final=True)

    def _decode(self, data: bytes, *, final: bool = False) -> str:
        self.bytes += len(data)
        if self.bytes > self.max_bytes:
            raise BatchTooLarge(self.max_bytes, "decompressed")
        self.digest.update(data)
        try:
            return self._text.decode(data, final)
        except UnicodeDecodeError as exc:
            raise BadBatch(
                "not_utf8",
                f"the body is not UTF-8 text (byte {self.bytes - len(data) + exc.start}); "
                "send UTF-8, and gzip only with Content-Encoding: gzip",
            ) from None


# A parsed row: (row number, mapping of column to text) or (row number, RowError).
Parsed = tuple[int, Row | RowError]


class _Unfinished:
    """The unfinished record between pieces of a body: kept in pieces and joined once, when it ends, so
    reading stays linear however long it is; past _MAX_LINE characters the batch is refused."""

    __slots__ = ("_code", "_length", "_message", "_pieces")

    def __init__(self, code: str, message: str) -> None:
        self._code, self._message = code, message
        self._pieces: list[str] = []
        self._length = 0

    def keep(self, text: str) -> None:
        if not text:
            return
        self._pieces.append(text)
        self._length += len(text)
        if self._length > _MAX_LINE:
            raise BadBatch(self._code, self._message)

    def complete(self, text: str, cut: int) -> str:
        """What is kept joined with ``text[:cut]`` (the records now complete); ``text[cut:]`` is kept."""
        data = "".join(self._pieces) + text[:cut] if self._pieces else text[:cut]
        self._pieces, self._length = [], 0
        self.keep(text[cut:])
        return data

    def take(self) -> str:
        """Everything kept (at the end of the body), and nothing kept after."""
        data = "".join(self._pieces)
        self._pieces, self._length = [], 0
        return data


class CsvRows:
    """CSV with a header row naming the kind's columns, in any order.

    A newline inside a quoted field is not a record boundary. Where records end is found in one pass
    over each piece (quotes toggle a flag, newlines outside quotes are boundaries), and an incomplete
    record is kept as pieces joined once it completes: linear in the input, however the quotes fall.
    """

    def __init__(self, kind: Kind) -> None:
        self.kind = kind
        self.header: list[str] | None = None
        self.rows = 0
        self._pending = _Unfinished("bad_csv", f"a record is longer than {_MAX_LINE} characters (unbalanced quotes?)")
        self._quoted = False  # whether the pending text ends inside a quoted field

    def feed(self, text: str) -> list[Parsed]:
        cut = self._last_boundary(text)
        if cut < 0:
            self._pending.keep(text)
            return []
        return self._parse(self._pending.complete(text, cut))

    def finish(self) -> list[Parsed]:
        data = self._pending.take()
        parsed = self._parse(data) if data.strip() else []
        if self.header is None:
            raise BadBatch("missing_header", f"the CSV has no header row; start with: {self._example()}")
        return parsed

    def _last_boundary(self, text: str) -> int:
        """The index just after the last newline of ``text`` outside quotes, or -1; carries the quote state.

        Each quote is found once and each unquoted stretch searched once, so this is linear in ``text``.
        """
        quoted = self._quoted
        cut = -1
        start = 0
        while True:
            quote = text.find('"', start)
            if not quoted:
                newline = text.rfind("\n", start, len(text) if quote < 0 else quote)
                if newline >= 0:
                    cut = newline + 1
            if quote < 0:
                break
            quoted = not quoted  # "" inside a quoted field toggles twice
            start = quote + 1
        self._quoted = quoted
        return cut

    def _example(self) -> str:
        return ",".join(sorted(self.kind.required | self.kind.one_of))

    def _parse(self, data: str) -> list[Parsed]:
        out: list[Parsed] = []
        try:
            records = list(csv.reader(io.StringIO(data, newline="")))
        except csv.Error as exc:
            raise BadBatch("bad_csv", f"the CSV cannot be parsed: {exc}") from None
        header = self.header
        # NUL is the one character UTF-8 text can hold and Postgres cannot; rows are searched for it only
        # when the text has one.
        check = "\x00" in data
        for record in records:
            if not record:
                continue  # blank line
            if header is None:
                header = self._set_header(record)
                continue
            self.rows += 1
            if len(record) != len(header):
                out.append(
                    (self.rows, RowError("", "bad_row", f"the row has {len(record)} fields, the header {len(header)}"))
                )
                continue
            row = dict(zip(header, record, strict=True))
            out.append((self.rows, (check and unstorable(row.items())) or row))
        return out

    def _set_header(self, record: list[str]) -> list[str]:
        header = [c.strip().lower() for c in record]
        missing, unknown = header_problems(self.kind, header)
        if missing or unknown:
            parts = []
            if missing:
                parts.append(f"missing column(s) {', '.join(missing)}")
            if unknown:
                parts.append(f"unknown column(s) {', '.join(unknown)}")
            raise BadBatch(
                "bad_columns",
                f"the header of a {self.kind.name} batch has {' and '.join(parts)}; "
                f"columns are {', '.join(sorted(self.kind.columns))}",
                missing=missing,
                unknown=unknown,
            )
        if len(set(header)) != len(header):
            raise BadBatch("bad_columns", "the header names a column twice")
        self.header = header
        return header


class NdjsonRows:
    """One JSON object per line; keys are the kind's columns, values strings or numbers."""

    def __init__(self, kind: Kind) -> None:
        self.kind = kind
        self.rows = 0
        self._pending = _Unfinished("bad_ndjson", f"a line is longer than {_MAX_LINE} characters")

    def feed(self, text: str) -> list[Parsed]:
        cut = text.rfind("\n") + 1
        if not cut:
            self._pending.keep(text)
            return []
        return self._parse(self._pending.complete(text, cut))

    def finish(self) -> list[Parsed]:
        return self._parse(self._pending.take())

    def _parse(self, data: str) -> list[Parsed]:
        out: list[Parsed] = []
        columns = self.kind.columns
        for line in data.split("\n"):
            if not line.strip():
                continue
            self.rows += 1
            out.append((self.rows, self._row(line, columns)))
        return out

    @staticmethod
    def _row(line: str, columns: frozenset[str]) -> Row | RowError:
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError:
            return RowError("", "bad_json", "the line is not valid JSON")
        if not isinstance(value, dict):
            return RowError("", "bad_json", "each line must be a JSON object")
        # Only a \u escape can put NUL into a JSON string (orjson refuses unpaired surrogates).
        if "\\u" in line and any(storable(key) != key for key in value):
            return RowError("", "nul_character", "a field name holds a character that cannot be stored; remove it")
        row: dict[str, str | None] = {}
        for key, item in value.items():
            if key not in columns:
                return RowError(key, "unknown_field", f"{key} is not a field of this kind")
            if item is None or isinstance(item, str):
                row[key] = item
            elif isinstance(item, int | float) and not isinstance(item, bool):
                row[key] = str(item)
            else:
                return RowError(key, "bad_type", f"{key} must be a string or a number")
        if "\\u" in line:
            return unstorable(row.items()) or row
        return row
