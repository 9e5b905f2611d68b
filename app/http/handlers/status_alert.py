"""POST /v1/status/alert: what the pop-up asks of a person (area, tests still needed, deadline).

Off the hot path: it reads the person's records from Postgres, so a citizen backend asks only when a
status answer has `popup: true`. The colour and the pop-up flag stay those of /v1/status.
"""

from __future__ import annotations

import time

from aiohttp import web

from app.http.appkeys import CLIENTS, PG, POSTGRES_STATE, PUBLISHER, SETTINGS
from app.http.client_limits import admit
from app.http.handlers.common import identity_from_body, json_response, postgres_answers, read_json_object
from app.http.problems import SubjectNotFound
from app.identity import pseudonym
from app.limits import STATUS
from app.rules.alert import arrival_alert
from app.rules.records import SubjectRecords
from app.statuses.compute import fetch_records

routes = web.RouteTableDef()


@routes.post("/v1/status/alert")
async def alert(request: web.Request) -> web.Response:
    app = request.app
    client = app[CLIENTS].authenticate(request.headers.get("Authorization"), kind="citizen-backend")
    await admit(request, client, STATUS)
    identity = identity_from_body(await read_json_object(request))
    subject = pseudonym(identity, app[SETTINGS].pepper)
    now = int(time.time())
    with postgres_answers(app[POSTGRES_STATE]):
        async with app[PG].acquire() as conn:
            fetched = await fetch_records(conn, [subject], now)
    if not fetched.subjects:
        raise SubjectNotFound("no status is held for this document; the person may not be registered yet")
    records = SubjectRecords(
        tests=tuple(fetched.tests.get(subject, ())),
        arrivals=tuple(fetched.arrivals.get(subject, ())),
        designations=tuple(fetched.designations.get(subject, ())),
    )
    found = arrival_alert(records, fetched.areas.index, app[PUBLISHER].ruleset, now)
    body = None
    if found is not None:
        body = {
            "area_code": found.area_code,
            "level": found.level,
            "arrived_at": found.arrived_at,
            "tests_needed": found.tests_needed,
            "deadline": found.deadline,
        }
    return json_response({"alert": body})
