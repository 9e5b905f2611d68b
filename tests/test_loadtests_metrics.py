"""GET /metrics: the server's own count of requests served, which the load report sets beside Locust's."""

from __future__ import annotations

import re

from aiohttp.test_utils import TestClient
from aiohttp.web import Application, Request

from loadtests.run import served_counts
from tests.conftest import AppFactory
from tests.support import bearer


def _sample(text: str, name: str, labels: str = "") -> int:
    match = re.search(rf"^{re.escape(name + labels)} ([0-9.e+]+)$", text, re.MULTILINE)
    assert match, f"{name}{labels} not in:\n{text}"
    value = float(match.group(1))
    assert value.is_integer()
    return int(value)


async def test_metrics_count_requests_by_route_and_status(
    api: TestClient[Request, Application], client_keys: dict[str, str]
) -> None:
    for _ in range(3):
        assert (await api.get("/healthz")).status == 200
    r = await api.post(
        "/v1/status",
        json={"id_type": "resident", "id_number": "11010519491231002X"},
        headers=bearer(client_keys["citizen-backend"]),
    )
    assert r.status == 404, await r.text()
    assert (await api.get("/no/such/path/1")).status == 404
    assert (await api.get("/no/such/path/2")).status == 404

    r = await api.get("/metrics")
    assert r.status == 200
    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = await r.text()
    family = "healthcode_http_requests_total"
    assert _sample(text, family, '{method="GET",route="/healthz",status="200"}') == 3
    assert _sample(text, family, '{method="POST",route="/v1/status",status="404"}') == 1
    # Unknown paths share one label, so junk cannot grow the table.
    assert _sample(text, family, '{method="GET",route="unmatched",status="404"}') == 2
    assert _sample(text, "healthcode_status_cache_misses_total") == 1
    assert _sample(text, "healthcode_status_cache_hits_total") == 0
    assert _sample(text, "healthcode_shed_total") == 0
    assert "# TYPE healthcode_http_requests_total counter" in text
    # The load report reads the same page.
    assert served_counts(text) == {"/healthz": 3, "/v1/status": 1, "unmatched": 2}


async def test_past_capacity_requests_are_shed_at_once_and_counted(
    make_client: AppFactory, client_keys: dict[str, str]
) -> None:
    api = await make_client(max_in_flight=0)
    r = await api.post("/v1/verify", json={"token": "x", "checkpoint": "gate"}, headers=bearer(client_keys["scanner"]))
    assert r.status == 503
    assert r.headers["Content-Type"] == "application/problem+json"
    assert r.headers["Retry-After"] in {"1", "2", "3"}  # jittered, so clients do not come back in step
    assert (await r.json())["type"] == "/problems/overloaded"
    # Probes and metrics are never shed, so a busy process is neither killed nor blind.
    assert (await api.get("/healthz")).status == 200
    metrics = await api.get("/metrics")
    assert metrics.status == 200
    body = await metrics.text()
    assert _sample(body, "healthcode_shed_total") == 1
    assert _sample(body, "healthcode_http_requests_total", '{method="POST",route="/v1/verify",status="503"}') == 1


async def test_every_look_up_is_attributed_to_its_client(
    api: TestClient[Request, Application], client_keys: dict[str, str]
) -> None:
    for _ in range(2):
        r = await api.post(
            "/v1/status",
            json={"id_type": "resident", "id_number": "11010519491231002X"},
            headers=bearer(client_keys["citizen-backend"]),
        )
        assert r.status == 404, await r.text()
    refused = await api.post("/v1/status", json={}, headers=bearer(client_keys["scanner"]))
    assert refused.status == 403

    body = await (await api.get("/metrics")).text()
    labels = '{client="test-citizen-backend",kind="citizen-backend"}'
    assert _sample(body, "healthcode_client_calls_total", labels) == 2
    assert 'client="test-scanner"' not in body  # a refused call is not an authorised one
