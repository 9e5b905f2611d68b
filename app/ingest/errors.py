"""Refusals of a whole batch (or sample registration): nothing is stored, and the error says what to fix.

Domain errors, free of HTTP: the API turns each into a problem answer at its edge (app.http.problems),
the command line into a message. Each carries a stable `code` a program can act on, a `detail` a person
can, and `extra` facts (a limit, the missing columns) that go out with the answer.
"""

from __future__ import annotations


class IngestError(Exception):
    code: str = "ingest_error"

    def __init__(self, detail: str, **extra: object) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class BatchTooLarge(IngestError):
    """The body, as sent or once decompressed, is over the size limit."""

    code = "batch_too_large"

    def __init__(self, limit: int, what: str) -> None:
        super().__init__(
            f"the {what} body exceeds {limit} bytes; split the data into several batches", limit_bytes=limit
        )
        self.limit = limit


class BadBatch(IngestError):
    """The batch as a whole cannot be read: wrong columns, undecodable gzip, not UTF-8, no header.

    `code` says which (`bad_columns`, `bad_gzip`, `not_utf8`, `missing_header`, `bad_csv`, `bad_ndjson`…).
    """

    def __init__(self, code: str, detail: str, **extra: object) -> None:
        super().__init__(detail, **extra)
        self.code = code


class TooManyRejections(IngestError):
    """More rows were rejected than a batch may have rejections: the data is wrong as a whole.

    Reading stops there and nothing is stored; the answer counts the rejections seen by code, so that
    the sender can tell what is wrong without a billion rejection rows to read.
    """

    code = "too_many_rejections"

    def __init__(self, limit: int, rows_read: int, by_code: dict[str, int]) -> None:
        summary = ", ".join(f"{code} {count}" for code, count in sorted(by_code.items(), key=lambda i: (-i[1], i[0])))
        super().__init__(
            f"more than {limit} rows of the batch were rejected ({summary}) by row {rows_read}; "
            "nothing was stored: fix the data and send it again",
            limit=limit,
            rows_read=rows_read,
            rejections_by_code=by_code,
        )


class UploadInProgress(IngestError):
    """An upload with this Idempotency-Key is still streaming: its outcome is not known yet."""

    code = "upload_in_progress"


class UnknownKind(IngestError):
    """The record kind named is not one of app.ingest.kinds.KINDS."""

    code = "unknown_kind"


class KindNotAllowed(IngestError):
    """The agency's scopes do not include this record kind."""

    code = "kind_not_allowed"


class Conflict(IngestError):
    """The request contradicts what is stored (a sample id already registered for another person)."""

    code = "conflict"
