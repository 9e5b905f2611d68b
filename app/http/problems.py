"""Problem details (RFC 9457): one exception class per kind of failure, one renderer."""

from __future__ import annotations

import random
from collections.abc import Mapping
from functools import cache
from typing import Any, ClassVar, Final

import orjson
from aiohttp import web

from app.appeals.errors import (
    AppealError,
    AppealNotFound,
    IdentityNumberInText,
    InvalidAppealField,
    SecondOperatorRequired,
    SubjectUnknown,
    WrongState,
)
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
from app.relations.errors import InvalidRelationField, NoRelation, RelationError, RelationExists, RelationNotFound

PROBLEM_CONTENT_TYPE = "application/problem+json"
# Relative type URIs resolve against the service's own address, where /problems/ documents them.
PROBLEM_BASE = "/problems/"


class ProblemError(Exception):
    status: ClassVar[int] = 500
    slug: ClassVar[str] = "internal"
    title: ClassVar[str] = "Internal error"

    def __init__(
        self,
        detail: str,
        *,
        extra: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = dict(extra or {})
        self.headers = dict(headers or {})

    @property
    def type(self) -> str:
        return PROBLEM_BASE + self.slug

    def body(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": self.type,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance:
            body["instance"] = instance
        body.update(self.extra)
        return body


class MalformedRequest(ProblemError):
    status = 400
    slug = "malformed-request"
    title = "The request body is not valid JSON of the expected shape"


class Unauthenticated(ProblemError):
    status = 401
    slug = "unauthenticated"
    title = "A valid client key is required"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": 'Bearer realm="healthcode"'})


class Forbidden(ProblemError):
    status = 403
    slug = "forbidden"
    title = "This client may not use this endpoint"


class NotFound(ProblemError):
    status = 404
    slug = "not-found"
    title = "No such resource"


class SubjectNotFound(ProblemError):
    status = 404
    slug = "subject-not-found"
    title = "No status is held for this person"


class MethodNotAllowed(ProblemError):
    status = 405
    slug = "method-not-allowed"
    title = "Method not allowed"


class PayloadTooLarge(ProblemError):
    status = 413
    slug = "payload-too-large"
    title = "The request body is larger than allowed"


class UnsupportedMediaType(ProblemError):
    status = 415
    slug = "unsupported-media-type"
    title = "The request body has an unsupported content type"


class InvalidField(ProblemError):
    """A field is present but wrong; `field` and `code` let a client act without parsing prose."""

    status = 422
    slug = "invalid-field"
    title = "A field of the request is invalid"

    def __init__(self, field: str, code: str, detail: str) -> None:
        super().__init__(detail, extra={"field": field, "code": code})


class InvalidIdentityProblem(InvalidField):
    slug = "invalid-identity"
    title = "The identity document number is invalid"


class IdentityNumberInTextProblem(InvalidField):
    """Free text holding something shaped like an identity number: it would be stored as given."""

    slug = "identity-number-in-text"
    title = "Free text must not hold an identity number"


class AppealConflict(ProblemError):
    """A decision that does not fit the appeal's state; `state` is the appeal's, `code` says which rule."""

    status = 409
    slug = "appeal-state"
    title = "The decision does not fit the appeal's state"

    def __init__(self, detail: str, *, state: str, code: str) -> None:
        super().__init__(detail, extra={"state": state, "code": code})


class SecondOperatorRequiredProblem(ProblemError):
    status = 403
    slug = "second-operator-required"
    title = "A colour change needs a second operator to approve it"


class RateLimited(ProblemError):
    status = 429
    slug = "rate-limited"
    title = "Too many requests from this client"

    def __init__(self, detail: str, retry_after: int = 1, bucket: str | None = None) -> None:
        # `limit` names the client's bucket that ran out (status, verify, uploads, ...).
        extra = {"limit": bucket} if bucket else None
        super().__init__(detail, extra=extra, headers={"Retry-After": str(retry_after)})


def jittered(seconds: int) -> int:
    """A Retry-After between `seconds` and twice that: clients told the same moment do not all come back
    at the same moment (a synchronised retry wave is how an outage outlives its cause)."""
    return random.randint(seconds, 2 * seconds)


class Overloaded(ProblemError):
    status = 503
    slug = "overloaded"
    title = "The service is at capacity"

    def __init__(self, retry_after: int = 1) -> None:
        super().__init__(
            f"too many requests waiting; retry after {retry_after} s with jittered exponential back-off",
            headers={"Retry-After": str(retry_after)},
        )


# A shed answer's Retry-After, in seconds, chosen at random per answer so refused clients spread out.
SHED_RETRY_AFTER: Final = (1, 2, 3)


def overloaded_response(retry_after: int) -> web.Response:
    """A shed answer, as cheap as aiohttp allows: under overload it is most of what the process sends."""
    return web.Response(
        status=503,
        body=overloaded_body(retry_after),
        content_type=PROBLEM_CONTENT_TYPE,
        headers={"Retry-After": str(retry_after)},
    )


@cache
def overloaded_body(retry_after: int) -> bytes:
    return orjson.dumps(Overloaded(retry_after).body())


class BodyTimeout(ProblemError):
    status = 408
    slug = "body-timeout"
    title = "The request body stopped arriving"


class UploadsBusy(ProblemError):
    status = 503
    slug = "uploads-busy"
    title = "Every upload slot of this process is in use"

    def __init__(self, detail: str, retry_after: int = 5) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after)})


class DependencyUnavailable(ProblemError):
    status = 503
    slug = "dependency-unavailable"
    title = "A storage dependency is unavailable"

    def __init__(self, detail: str, retry_after: int = 2, *, dependency: str | None = None) -> None:
        super().__init__(
            detail,
            extra={"dependency": dependency} if dependency else None,
            headers={"Retry-After": str(retry_after)},
        )


class InternalError(ProblemError):
    """A failure nobody foresaw: logged in full under `reference`; the caller gets no traceback."""

    status = 500
    slug = "internal-error"
    title = "The service failed to answer this request"

    def __init__(self, reference: str) -> None:
        super().__init__(
            f"an unexpected error occurred; it was logged under reference {reference}. Retrying may not help; "
            "if it persists, quote the reference to the operators",
            extra={"reference": reference},
        )


class SigningUnavailable(ProblemError):
    """This process cannot sign with the key Postgres says is active; `reason` says why, as a code."""

    status = 503
    slug = "signing-unavailable"
    title = "This process cannot sign tokens now"

    def __init__(self, reason: str, detail: str, retry_after: int) -> None:
        super().__init__(detail, extra={"reason": reason}, headers={"Retry-After": str(retry_after)})


class NotReadyToSign(ProblemError):
    """/readyz: the dependencies answer, but this process cannot sign (a load balancer should skip it)."""

    status = 503
    slug = "not-ready-to-sign"
    title = "This process cannot sign tokens"

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail, extra={"reason": reason}, headers={"Retry-After": "5"})


class IngestProblem(ProblemError):
    """A refusal by ingestion (app.ingest.errors), answered with its detail and extra members."""

    @classmethod
    def of(cls, error: IngestError) -> ProblemError:
        return cls(error.detail, extra=error.extra)


class BatchTooLargeProblem(IngestProblem):
    status = 413
    slug = "batch-too-large"
    title = "The batch is larger than allowed"


class BadBatchProblem(IngestProblem):
    status = 422
    slug = "bad-batch"
    title = "The batch cannot be read"

    @classmethod
    def of(cls, error: IngestError) -> ProblemError:
        # Which rule the body broke (bad_columns, bad_gzip, not_utf8, ...), for a program to act on.
        return cls(error.detail, extra={"code": error.code, **error.extra})


class TooManyRejectionsProblem(IngestProblem):
    status = 422
    slug = "too-many-rejections"
    title = "Too many rows of the batch were rejected"


class UnknownKindProblem(IngestProblem):
    status = 422
    slug = "unknown-kind"
    title = "Unknown record kind"


class KindNotAllowedProblem(IngestProblem):
    status = 403
    slug = "kind-not-allowed"
    title = "This agency may not upload this record kind"


class ConflictProblem(IngestProblem):
    status = 409
    slug = "conflict"
    title = "The request conflicts with what is stored"


class UploadInProgressProblem(IngestProblem):
    status = 409
    slug = "upload-in-progress"
    title = "An upload with this Idempotency-Key is in progress"
    RETRY_AFTER: ClassVar[int] = 5

    @classmethod
    def of(cls, error: IngestError) -> ProblemError:
        return cls(error.detail, extra=error.extra, headers={"Retry-After": str(cls.RETRY_AFTER)})


# The answer to each ingestion error. IngestError itself is the fallback for a subclass not listed here:
# a 422 that still names its code, never a 500.
INGEST_PROBLEMS: Final[Mapping[type[IngestError], type[IngestProblem]]] = {
    BatchTooLarge: BatchTooLargeProblem,
    BadBatch: BadBatchProblem,
    TooManyRejections: TooManyRejectionsProblem,
    UnknownKind: UnknownKindProblem,
    KindNotAllowed: KindNotAllowedProblem,
    Conflict: ConflictProblem,
    UploadInProgress: UploadInProgressProblem,
    IngestError: BadBatchProblem,
}


def ingest_problem(error: IngestError) -> ProblemError:
    """The problem that answers an ingestion error: that of its class, or of its nearest listed ancestor."""
    for cls in type(error).__mro__:
        problem = INGEST_PROBLEMS.get(cls)
        if problem is not None:
            return problem.of(error)
    raise AssertionError("IngestError is listed")


def appeal_problem(error: AppealError) -> ProblemError:
    """The problem that answers a refusal of the appeals domain (app.appeals.errors)."""
    if isinstance(error, IdentityNumberInText):
        return IdentityNumberInTextProblem(error.field, error.code, error.detail)
    if isinstance(error, InvalidAppealField):
        return InvalidField(error.field, error.code, error.detail)
    if isinstance(error, WrongState):
        return AppealConflict(error.detail, state=error.state, code=error.code)
    if isinstance(error, SecondOperatorRequired):
        return SecondOperatorRequiredProblem(error.detail, extra={"code": error.code})
    if isinstance(error, SubjectUnknown):
        return SubjectNotFound(error.detail)
    if isinstance(error, AppealNotFound):
        return NotFound(error.detail)
    # A refusal added to the domain without an answer here is still a 4xx with its code, never a 500.
    return InvalidField("body", error.code, error.detail)


def problem_response(problem: ProblemError, instance: str | None = None) -> web.Response:
    return web.Response(
        status=problem.status,
        body=orjson.dumps(problem.body(instance)),
        content_type=PROBLEM_CONTENT_TYPE,
        headers=problem.headers,
    )


def bare_problem(status: int, title: str, detail: str | None = None) -> web.Response:
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status}
    if detail:
        body["detail"] = detail
    return web.Response(status=status, body=orjson.dumps(body), content_type=PROBLEM_CONTENT_TYPE)


class NoRelationProblem(ProblemError):
    """A look-up on behalf of another person without a live relation to them (app.relations)."""

    status = 403
    slug = "no-relation"
    title = "No registered relation allows this look-up"


class RelationExistsProblem(ProblemError):
    status = 409
    slug = "relation-exists"
    title = "The two people already have a relation of another kind"


def relation_problem(error: RelationError) -> ProblemError:
    """The problem that answers a refusal of the relations domain (app.relations.errors)."""
    if isinstance(error, InvalidRelationField):
        if error.code == "identity_number_in_text":
            return IdentityNumberInTextProblem(error.field, error.code, error.detail)
        return InvalidField(error.field, error.code, error.detail)
    if isinstance(error, NoRelation):
        return NoRelationProblem(error.detail, extra={"code": error.code})
    if isinstance(error, RelationExists):
        return RelationExistsProblem(error.detail, extra={"code": error.code, "relation_id": error.relation_id})
    if isinstance(error, RelationNotFound):
        return NotFound(error.detail)
    return InvalidField("body", error.code, error.detail)  # never a 500 for a refusal added later


class PeerUnauthorized(ProblemError):
    """A peer request whose assertion (RFC 7523 style) is missing or refused; `reason` says which check."""

    status = 401
    slug = "peer-unauthorized"
    title = "The peer request's assertion is refused"

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(
            detail, extra={"reason": reason}, headers={"WWW-Authenticate": 'Bearer realm="healthcode-peers"'}
        )


class CredentialUnavailable(ProblemError):
    """No SMART Health Card key is active (see `healthcode credentials`)."""

    status = 503
    slug = "credential-unavailable"
    title = "This deployment cannot sign health cards now"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"Retry-After": "30"})


class CredentialTooLarge(ProblemError):
    status = 422
    slug = "credential-too-large"
    title = "The health card does not fit one QR code"
