"""Batch-level problems: the whole upload is refused, and the answer says what to fix."""

from __future__ import annotations

from app.http.problems import ProblemError


class BatchTooLarge(ProblemError):
    status = 413
    slug = "batch-too-large"
    title = "The batch is larger than allowed"

    def __init__(self, limit: int, what: str) -> None:
        super().__init__(
            f"the {what} body exceeds {limit} bytes; split the data into several batches",
            extra={"limit_bytes": limit},
        )


class BadBatch(ProblemError):
    """The batch as a whole cannot be read: wrong columns, undecodable gzip, not UTF-8, no header."""

    status = 422
    slug = "bad-batch"
    title = "The batch cannot be read"

    def __init__(self, code: str, detail: str, **extra: object) -> None:
        super().__init__(detail, extra={"code": code, **extra})


class UnknownKind(ProblemError):
    status = 422
    slug = "unknown-kind"
    title = "Unknown record kind"


class KindNotAllowed(ProblemError):
    status = 403
    slug = "kind-not-allowed"
    title = "This agency may not upload this record kind"


class Conflict(ProblemError):
    status = 409
    slug = "conflict"
    title = "The request conflicts with what is stored"
