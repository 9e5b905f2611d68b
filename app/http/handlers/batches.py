"""Agency uploads: POST /v1/batches, GET /v1/batches/{id}, GET /v1/batches/{id}/rejections."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Final

import asyncpg
import orjson
from aiohttp import web

from app.clients import Client
from app.db import UNAVAILABLE_ERRORS
from app.http.appkeys import CLIENTS, INGEST, INGEST_PG, PG, POSTGRES_STATE, SETTINGS
from app.http.client_limits import admit
from app.http.handlers.common import json_response, postgres_answers, postgres_unavailable
from app.http.problems import BodyTimeout, InvalidField, NotFound, UnsupportedMediaType, UploadsBusy
from app.ingest.errors import BatchTooLarge, KindNotAllowed
from app.ingest.store import batch_by_id, batch_view, rejections
from app.ingest.upload import kind_named, receive_batch
from app.limits import BATCH_READS, UPLOADS

routes = web.RouteTableDef()

_MAX_BATCH_ID = 2**63 - 1  # batches.id is a bigint

FORMATS: Final = {"text/csv": "csv", "application/x-ndjson": "ndjson", "application/ndjson": "ndjson"}
READ_CHUNK: Final = 256 * 1024
MAX_KEY_LENGTH: Final = 200
# How long an upload waits for a connection of the upload pool before it is told to come back.
SLOT_WAIT_SECONDS: Final = 2.0


def _agency(request: web.Request) -> Client:
    return request.app[CLIENTS].authenticate(request.headers.get("Authorization"), kind="agency")


async def _body(request: web.Request, idle_seconds: float) -> AsyncIterator[bytes]:
    """The request body in pieces as they arrive, still compressed (the app turns aiohttp's own
    decompression off: the reader decompresses with bounds and checks the stream is complete).

    A body that stops arriving for ``idle_seconds`` ends the upload: it holds a connection and an open
    transaction meanwhile.
    """
    while True:
        try:
            async with asyncio.timeout(idle_seconds):
                chunk = await request.content.read(READ_CHUNK)
        except TimeoutError:
            raise BodyTimeout(
                f"no part of the body arrived for {idle_seconds:g} s; nothing was stored, send the batch again"
            ) from None
        if not chunk:
            return
        yield chunk


@routes.post("/v1/batches")
async def upload(request: web.Request) -> web.Response:
    app = request.app
    client = _agency(request)
    kind = kind_named(request.query.get("kind"))
    if kind.name not in client.scopes:
        raise KindNotAllowed(
            f"agency {client.name} may upload {', '.join(client.scopes) or 'nothing'}, not {kind.name}"
        )
    fmt = FORMATS.get(request.content_type)
    if fmt is None:
        raise UnsupportedMediaType(
            f"send text/csv (with a header row) or application/x-ndjson, not {request.content_type or 'nothing'}"
        )
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip", "x-gzip"):
        raise UnsupportedMediaType(f"Content-Encoding {encoding} is not supported; use gzip or none")
    limit = app[SETTINGS].max_upload_bytes
    if request.content_length is not None and request.content_length > limit:
        raise BatchTooLarge(limit, "uploaded")
    key = request.headers.get("Idempotency-Key")
    if key is not None and not (0 < len(key.strip()) <= MAX_KEY_LENGTH and key.isprintable()):
        raise InvalidField(
            "Idempotency-Key", "bad_key", f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} printable characters"
        )
    # Limited after the cheap checks, so a malformed retry storm costs no Redis round trip either.
    await admit(request, client, UPLOADS)
    processor, settings = app[INGEST], app[SETTINGS]
    try:
        conn = await app[INGEST_PG].acquire(timeout=SLOT_WAIT_SECONDS)
    except TimeoutError:
        raise UploadsBusy(
            f"all {settings.ingest_pool_max} upload slots of this process are in use; retry after Retry-After seconds"
        ) from None
    except UNAVAILABLE_ERRORS as exc:  # a new pool connection could not be made: Postgres is down
        raise postgres_unavailable(app[POSTGRES_STATE], exc) from exc
    try:
        received = await receive_batch(
            conn,
            client_id=client.id,
            kind=kind,
            fmt=fmt,
            body=_body(request, settings.upload_idle_seconds),
            key=key.strip() if key else None,
            pepper=settings.pepper,
            ruleset=processor.publisher.ruleset,
            now=datetime.now(UTC),
            max_bytes=limit,
            gzip=encoding != "identity",
            max_rejections=settings.max_rejections_per_batch,
            federation_key=settings.federation_key,
        )
        row = await batch_by_id(conn, received.batch_id)
        assert row is not None
    finally:
        await app[INGEST_PG].release(conn)
    location = f"/v1/batches/{received.batch_id}"
    if not received.created:
        # The same batch again: answer with the first one, changing nothing.
        return json_response(batch_view(row), headers={"Location": location})
    processor.submit(received.batch_id)
    return json_response(batch_view(row), status=202, headers={"Location": location})


async def _own_batch(request: web.Request) -> asyncpg.Record:
    client = _agency(request)
    await admit(request, client, BATCH_READS)
    try:
        batch_id = int(request.match_info["batch_id"])
    except ValueError:
        raise NotFound("no such batch") from None
    if not 0 < batch_id <= _MAX_BATCH_ID:
        raise NotFound(f"no batch {batch_id} for this agency")  # no bigint holds it: none was ever made
    with postgres_answers(request.app[POSTGRES_STATE]):
        row = await batch_by_id(request.app[PG], batch_id)
    # Another agency's batch is answered like a missing one: its existence is not ours to reveal.
    if row is None or row["client_id"] != client.id:
        raise NotFound(f"no batch {batch_id} for this agency")
    return row


@routes.get("/v1/batches/{batch_id}")
async def get_batch(request: web.Request) -> web.Response:
    return json_response(batch_view(await _own_batch(request)))


@routes.get("/v1/batches/{batch_id}/rejections")
async def get_rejections(request: web.Request) -> web.StreamResponse:
    batch_id = (await _own_batch(request))["id"]
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    # Each page takes a connection of the upload pool only while it is read, none while a slow
    # reader takes it in.
    lines: list[bytes] = []
    async for r in rejections(request.app[INGEST_PG], batch_id):
        lines.append(
            orjson.dumps({"row": r["row_no"], "field": r["field"], "code": r["code"], "message": r["message"]})
        )
        if len(lines) >= 1000:
            await response.write(b"\n".join(lines) + b"\n")
            lines = []
    if lines:
        await response.write(b"\n".join(lines) + b"\n")
    await response.write_eof()
    return response
