"""The nucleic-acid test-registration code and sample registration.

POST /v1/test-code (citizen backend): a signed token of type ``hct+jwt`` carrying only the subject and a
code id. Its ``sub`` is a handle made for this token alone, like a status token's (signing/handles.py,
bound to the purpose ``hct``), so two codes of one person cannot be linked and neither shows the
pseudonym; only this service opens it, when a collector registers the sample. It holds no health
status, and its ``typ`` makes every status verifier refuse it, so it can never pass as a health code.
POST /v1/samples (an agency allowed to upload tests): a collector's device scans the code and registers
a sample id against it; a lab may then report the result by sample id.
"""

from __future__ import annotations

import secrets
import time
from typing import Final

from aiohttp import web

from app.http.appkeys import CLIENTS, HANDLES, PG, SETTINGS, SIGNER
from app.http.client_limits import admit
from app.http.handlers.common import identity_from_body, json_response, read_json_object, required_string
from app.http.problems import InvalidField
from app.identity import mask_number, pseudonym
from app.ingest.errors import Conflict, KindNotAllowed
from app.limits import SAMPLES, TEST_CODE
from cache.keys import PSEUDONYM_BYTES
from signing.errors import BadToken
from signing.jws import MAX_TOKEN_LENGTH, TokenVerifier

routes = web.RouteTableDef()

TEST_CODE_TYP: Final = "hct+jwt"
# Bound into the handle: a status token's handle does not open as a test code's, nor the reverse.
TEST_CODE_PURPOSE: Final = b"hct"
MAX_SAMPLE_ID: Final = 64


@routes.post("/v1/test-code")
async def test_code(request: web.Request) -> web.Response:
    app = request.app
    settings = app[SETTINGS]
    client = app[CLIENTS].authenticate(request.headers.get("Authorization"), kind="citizen-backend")
    await admit(request, client, TEST_CODE)
    body = await read_json_object(request)
    identity = identity_from_body(body)
    subject = pseudonym(identity, settings.pepper)
    # The person may not be registered yet; a sample result must still reach a subject.
    await app[PG].execute(
        """INSERT INTO subjects (pseudonym, id_type, masked_number) VALUES ($1, $2, $3)
           ON CONFLICT (pseudonym) DO NOTHING""",
        subject,
        identity.id_type,
        mask_number(identity.number),
    )
    ttl = settings.token_ttl_seconds
    now = int(time.time())
    code_id = secrets.token_urlsafe(9)
    handle = app[HANDLES].seal(subject, now, TEST_CODE_PURPOSE)  # a new handle per code: codes do not link
    token = app[SIGNER].signer_for(TEST_CODE_TYP, ttl).sign({"sub": handle, "cid": code_id}, now)
    return json_response({"token": token, "typ": TEST_CODE_TYP, "code_id": code_id, "expires_at": now + ttl})


@routes.post("/v1/samples")
async def register_sample(request: web.Request) -> web.Response:
    app = request.app
    client = app[CLIENTS].authenticate(request.headers.get("Authorization"), kind="agency")
    if "test" not in client.scopes:
        raise KindNotAllowed(f"agency {client.name} may not register samples; it needs the test scope")
    await admit(request, client, SAMPLES)
    body = await read_json_object(request)
    token = required_string(body, "token", max_length=MAX_TOKEN_LENGTH)
    sample_id = required_string(body, "sample_id", max_length=MAX_SAMPLE_ID).strip()
    keyring = app[SIGNER].keyring
    assert keyring is not None
    verifier = TokenVerifier(keyring, app[SETTINGS].issuer, typ=TEST_CODE_TYP)
    try:
        claims = verifier.verify(token, int(time.time()))
        subject = app[HANDLES].open(str(claims["sub"]), int(str(claims["iat"])), TEST_CODE_PURPOSE)
        code_id = claims["cid"]
    except BadToken as exc:
        raise InvalidField("token", exc.reason, f"the test-registration code is not valid: {exc}") from None
    except (KeyError, ValueError):
        raise InvalidField("token", "malformed", "the test-registration code lacks its claims") from None
    if len(subject) != PSEUDONYM_BYTES or not isinstance(code_id, str):
        raise InvalidField("token", "malformed", "the test-registration code lacks its claims")
    pool = app[PG]
    inserted = await pool.fetchval(
        """INSERT INTO samples (sample_id, pseudonym, code_id, client_id) VALUES ($1, $2, $3, $4)
           ON CONFLICT (sample_id) DO NOTHING RETURNING sample_id""",
        sample_id,
        subject,
        code_id,
        client.id,
    )
    if inserted is None:
        owner = await pool.fetchval("SELECT pseudonym FROM samples WHERE sample_id = $1", sample_id)
        if owner is None or bytes(owner) != subject:
            raise Conflict(f"sample {sample_id} is already registered for another person")
    return json_response({"sample_id": sample_id, "registered": inserted is not None}, status=201 if inserted else 200)
