"""POST /v1/status/alert: the area, the tests still needed under the clearing rule, and the deadline,
agreeing with the pop-up of /v1/status."""

from __future__ import annotations

import time
from typing import Any

import asyncpg
import pytest

from app.settings import Settings
from tests.alert_people import HIGH_RISK, HOUR, arrival, high_risk_area
from tests.conftest import Api
from tests.support import bearer
from tests.test_ingest_helpers import number
from tests.test_openapi import assert_documented


async def post(api: Api, key: str, path: str, id_number: str) -> tuple[int, Any]:
    r = await api.post(path, json={"id_number": id_number}, headers=bearer(key))
    return r.status, await assert_documented(r, path, "post")


@pytest.mark.parametrize(
    ("hours_ago", "tests", "needed", "deadline_after_arrival"),
    [
        (10, (), 2, 72),  # no test: two within three days
        (10, (-30,), 1, 24),  # a negative from before arrival: one local test within a day
        (30, (-30,), 2, 72),  # ... but the day has passed: the two-test path
        (30, (5,), 1, 72),  # one test after arrival: one more within three days
        (10, (-30, 5), None, None),  # cleared: no alert, no pop-up
        (80, (5, 40), None, None),  # two tests 35 h apart: cleared
    ],
)
async def test_the_alert_says_what_clears_the_arrival_and_agrees_with_the_pop_up(
    api: Api,
    db: asyncpg.Connection,
    settings: Settings,
    client_keys: dict[str, str],
    hours_ago: int,
    tests: tuple[int, ...],
    needed: int | None,
    deadline_after_arrival: int | None,
) -> None:
    await high_risk_area(db)
    person = number(7)
    await arrival(api.app, db, settings.pepper, person, hours_ago=hours_ago, tests=tests)
    key = client_keys["citizen-backend"]
    status, body = await post(api, key, "/v1/status/alert", person)
    assert status == 200, body
    _, shown = await post(api, key, "/v1/status", person)
    assert shown["popup"] is (needed is not None)
    if needed is None:
        assert body == {"alert": None}
        return
    arrived = body["alert"]["arrived_at"]
    assert abs(arrived - (time.time() - hours_ago * HOUR)) < 60
    assert body == {
        "alert": {
            "area_code": HIGH_RISK,
            "level": "high",
            "arrived_at": arrived,
            "tests_needed": needed,
            "deadline": arrived + (deadline_after_arrival or 0) * HOUR,
        }
    }


async def test_an_unknown_person_is_404_and_only_citizen_backends_ask(api: Api, client_keys: dict[str, str]) -> None:
    status, body = await post(api, client_keys["citizen-backend"], "/v1/status/alert", number(8))
    assert (status, body["type"]) == (404, "/problems/subject-not-found")
    status, _ = await post(api, client_keys["scanner"], "/v1/status/alert", number(8))
    assert status == 403
