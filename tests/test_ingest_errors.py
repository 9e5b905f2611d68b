"""Ingestion raises domain errors; the HTTP edge answers each with its problem, unchanged for clients."""

from __future__ import annotations

import subprocess
import sys

import pytest

from app.http.problems import INGEST_PROBLEMS, ingest_problem
from app.ingest import errors
from app.ingest.errors import (
    BadBatch,
    BatchTooLarge,
    Conflict,
    IngestError,
    KindNotAllowed,
    TooManyRejections,
    UnknownKind,
    UploadInProgress,
)


@pytest.mark.parametrize(
    ("error", "status", "body"),
    [
        (
            BatchTooLarge(4096, "uploaded"),
            413,
            {
                "type": "/problems/batch-too-large",
                "title": "The batch is larger than allowed",
                "status": 413,
                "detail": "the uploaded body exceeds 4096 bytes; split the data into several batches",
                "instance": "/v1/batches",
                "limit_bytes": 4096,
            },
        ),
        (
            BadBatch("bad_columns", "the header is wrong", missing=["name"], unknown=["nick"]),
            422,
            {
                "type": "/problems/bad-batch",
                "title": "The batch cannot be read",
                "status": 422,
                "detail": "the header is wrong",
                "instance": "/v1/batches",
                "code": "bad_columns",
                "missing": ["name"],
                "unknown": ["nick"],
            },
        ),
        (
            TooManyRejections(100, 130, {"bad_json": 70, "missing_field": 31}),
            422,
            {
                "type": "/problems/too-many-rejections",
                "title": "Too many rows of the batch were rejected",
                "status": 422,
                "detail": "more than 100 rows of the batch were rejected (bad_json 70, missing_field 31) by row 130; "
                "nothing was stored: fix the data and send it again",
                "instance": "/v1/batches",
                "limit": 100,
                "rows_read": 130,
                "rejections_by_code": {"bad_json": 70, "missing_field": 31},
            },
        ),
        (
            UnknownKind("kind must be one of …"),
            422,
            {
                "type": "/problems/unknown-kind",
                "title": "Unknown record kind",
                "status": 422,
                "detail": "kind must be one of …",
                "instance": "/v1/batches",
            },
        ),
        (
            KindNotAllowed("agency x may upload test, not travel"),
            403,
            {
                "type": "/problems/kind-not-allowed",
                "title": "This agency may not upload this record kind",
                "status": 403,
                "detail": "agency x may upload test, not travel",
                "instance": "/v1/batches",
            },
        ),
        (
            Conflict("sample s-1 is already registered for another person"),
            409,
            {
                "type": "/problems/conflict",
                "title": "The request conflicts with what is stored",
                "status": 409,
                "detail": "sample s-1 is already registered for another person",
                "instance": "/v1/batches",
            },
        ),
    ],
)
def test_each_ingest_error_is_answered_with_its_problem(
    error: IngestError, status: int, body: dict[str, object]
) -> None:
    problem = ingest_problem(error)
    assert (problem.status, problem.headers) == (status, {})
    assert problem.body("/v1/batches") == body
    assert list(problem.body("/v1/batches")) == list(body)  # members in the same order


def test_an_upload_in_progress_is_a_conflict_to_retry() -> None:
    problem = ingest_problem(UploadInProgress("an upload with this key is in progress"))
    assert (problem.status, problem.headers) == (409, {"Retry-After": "5"})
    assert problem.body() == {
        "type": "/problems/upload-in-progress",
        "title": "An upload with this Idempotency-Key is in progress",
        "status": 409,
        "detail": "an upload with this key is in progress",
    }


def test_every_ingest_error_has_a_problem_of_its_own() -> None:
    defined = {cls for cls in vars(errors).values() if isinstance(cls, type) and issubclass(cls, IngestError)} - {
        IngestError
    }
    assert defined <= set(INGEST_PROBLEMS)
    assert {cls.code for cls in defined if cls is not BadBatch} == {
        "batch_too_large",
        "too_many_rejections",
        "unknown_kind",
        "upload_in_progress",
        "kind_not_allowed",
        "conflict",
    }


def test_an_unlisted_ingest_error_is_still_a_named_answer() -> None:
    class Unforeseen(IngestError):
        code = "unforeseen"

    problem = ingest_problem(Unforeseen("something new", row=3))
    assert problem.body() == {
        "type": "/problems/bad-batch",
        "title": "The batch cannot be read",
        "status": 422,
        "detail": "something new",
        "code": "unforeseen",
        "row": 3,
    }


def test_ingestion_imports_nothing_of_http() -> None:
    modules = ["app.ingest." + m for m in ("errors", "fields", "kinds", "load", "merge", "process", "reader")]
    modules += ["app.ingest.store", "app.ingest.upload"]
    code = (
        f"import sys\nfor m in {modules!r}: __import__(m)\n"
        "print(sorted(m for m in sys.modules if m == 'aiohttp' or m.startswith(('aiohttp.', 'app.http'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
