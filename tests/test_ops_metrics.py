"""What an on-call engineer relies on: /metrics from prometheus_client (also across worker processes),
request ids on every answer and in JSON log lines, and a dashboard and alert rules whose every metric
exists."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import orjson
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from redis.asyncio import Redis

from app.http.app import create_app
from app.http.appkeys import INGEST
from app.ops.logs import REQUEST_ID, JsonFormatter, request_id
from app.ops.metrics import LATENCY_BUCKETS, Latencies
from app.settings import Settings
from loadtests.bench.servers import free_port, pinned_server
from tests.support import bearer

Api = TestClient[web.Request, web.Application]
OPS = Path(__file__).parent.parent / "app" / "ops"
RULES = OPS / "prometheus" / "alerts.yml"
DASHBOARD = OPS / "grafana" / "healthcode.json"
_NAME = re.compile(r"\bhealthcode_[a-z_]+")
_HISTOGRAM_PARTS = ("_bucket", "_count", "_sum")


async def page(api: Api) -> str:
    r = await api.get("/metrics")
    assert r.status == 200, await r.text()
    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return await r.text()


def exported(text: str) -> set[str]:
    """Every sample name and family of a /metrics page (histogram parts count as their family)."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            names.add(line.split()[2])
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def sample(text: str, series: str) -> float:
    (value,) = [line.rsplit(" ", 1)[1] for line in text.splitlines() if line.startswith(series + " ")]
    return float(value)


async def traffic(api: Api, client_keys: dict[str, str]) -> None:
    """A status miss (Redis read, Postgres load), a probe and a wrong route: every family gets samples."""
    r = await api.post(
        "/v1/status", json={"id_number": "11010519491231002X"}, headers=bearer(client_keys["citizen-backend"])
    )
    assert r.status == 404, await r.text()
    assert (await api.get("/healthz")).status == 200
    assert (await api.get("/no/such/route")).status == 404


async def test_latency_dependencies_and_queues_are_measured(api: Api, client_keys: dict[str, str]) -> None:
    await traffic(api, client_keys)
    text = await page(api)
    assert sample(text, 'healthcode_http_requests_total{method="POST",route="/v1/status",status="404"}') == 1
    status = 'method="POST",route="/v1/status",status_class="4xx"'
    assert sample(text, f"healthcode_http_request_duration_seconds_count{{{status}}}") == 1
    assert 0 < sample(text, f"healthcode_http_request_duration_seconds_sum{{{status}}}") < 5
    assert sample(text, 'healthcode_redis_call_duration_seconds_count{call="status_read"}') >= 1
    assert sample(text, 'healthcode_status_load_duration_seconds_count{outcome="unknown"}') == 1
    assert sample(text, 'healthcode_postgres_query_duration_seconds_count{verb="select"}') >= 1
    assert sample(text, "healthcode_status_cache_misses_total") == 1
    assert sample(text, "healthcode_batch_queue_up") == 1
    assert sample(text, "healthcode_batch_queue_depth") == 0
    assert sample(text, 'healthcode_signing_keys{state="active"}') == 1
    assert sample(text, "healthcode_signing_next_activation_seconds") == -1
    assert sample(text, "healthcode_rule_evaluation_errors_total") >= 0
    assert "process_cpu_seconds_total" in exported(text)
    # A second scrape adds only what happened since the first.
    assert sample(await page(api), 'healthcode_http_requests_total{method="GET",route="/metrics",status="200"}') == 1


def named_metrics() -> dict[str, set[str]]:
    """Metric names in the alert rules and the dashboard, by where they appear."""
    rules = yaml.safe_load(RULES.read_text())
    exprs = {r.get("alert") or r["record"]: r["expr"] for g in rules["groups"] for r in g["rules"]}
    dashboard = json.loads(DASHBOARD.read_text())
    exprs |= {f"panel {p['title']}": t["expr"] for p in dashboard["panels"] for t in p["targets"]}
    return {where: set(_NAME.findall(expr)) for where, expr in exprs.items()}


async def test_every_metric_of_the_dashboard_and_the_alerts_exists(api: Api, client_keys: dict[str, str]) -> None:
    await traffic(api, client_keys)
    names = exported(await page(api))
    named = named_metrics()
    assert sum(len(n) for n in named.values()) > 30
    for where, found in named.items():
        for name in found:
            family = next((name.removesuffix(p) for p in _HISTOGRAM_PARTS if name.endswith(p)), name)
            assert name in names or f"{family}_bucket" in names, f"{where} names {name}, which /metrics lacks"


def test_the_alerts_cover_what_on_call_needs() -> None:
    rules = yaml.safe_load(RULES.read_text())
    alerts = {r["alert"]: r for g in rules["groups"] for r in g["rules"] if "alert" in r}
    for needed in (
        "HealthcodeErrorRate",
        "HealthcodeStatusLatencyP99",
        "HealthcodeShedding",
        "HealthcodeScanWriterLag",
        "HealthcodeBatchAge",
    ):
        assert needed in alerts
        assert alerts[needed]["labels"]["severity"] in ("page", "warn")
        assert alerts[needed]["annotations"]["summary"]
    titles = " ".join(p["title"] for p in json.loads(DASHBOARD.read_text())["panels"]).lower()
    for figure in ("error rate", "p99", "shed", "writer lag", "batch"):
        assert figure in titles


async def test_every_answer_carries_a_request_id(api: Api, client_keys: dict[str, str]) -> None:
    r = await api.get("/healthz", headers={"X-Request-ID": "lb-7f3a.42"})
    assert r.headers["X-Request-ID"] == "lb-7f3a.42"
    answers = [
        await api.get("/healthz"),
        await api.get("/no/such/route"),  # a problem
        await api.post("/v1/status", data=b"{", headers=bearer(client_keys["citizen-backend"])),
        await api.get("/v1/batches/1/rejections", headers=bearer(client_keys["agency"])),
        # Not a sane token, or shaped like an identity number: replaced, never echoed or logged.
        await api.get("/healthz", headers={"X-Request-ID": "a b\tc"}),
        await api.get("/healthz", headers={"X-Request-ID": "11010519491231002X"}),
    ]
    # A streamed answer (sent before the middleware sees it) carries one too.
    body = "id_number,sampled_at,result,lab\nnot-a-number,2022-06-01T07:30:00+08:00,negative,lab-1\n"
    r = await api.post(
        "/v1/batches?kind=test", data=body, headers={**bearer(client_keys["agency"]), "Content-Type": "text/csv"}
    )
    assert r.status == 202, await r.text()
    await api.app[INGEST].wait((await r.json())["id"])
    streamed = await api.get(f"/v1/batches/{(await r.json())['id']}/rejections", headers=bearer(client_keys["agency"]))
    assert streamed.status == 200 and b"id_number" in await streamed.read()
    answers += [r, streamed]
    ids = [r.headers["X-Request-ID"] for r in answers]
    assert all(re.fullmatch(r"[0-9a-f]{16}", i) for i in ids), ids
    assert len(set(ids)) == len(ids)


def test_log_lines_are_json_with_the_request_id_and_no_identity_number() -> None:
    formatter = JsonFormatter()
    token = REQUEST_ID.set(request_id("req-1"))
    try:
        record = logging.LogRecord(
            "app.x", logging.ERROR, __file__, 1, "lookup of %s failed", ("11010519491231002X",), None
        )
        record.venue_id = "v123"
        try:
            raise ValueError("bad number 110105194912310021 in row")
        except ValueError:
            record.exc_info = sys.exc_info()
        line = formatter.format(record)
    finally:
        REQUEST_ID.reset(token)
    assert "\n" not in line
    entry = orjson.loads(line)
    assert entry["request_id"] == "req-1" and entry["level"] == "error" and entry["logger"] == "app.x"
    assert entry["message"] == "lookup of [identity] failed"
    assert entry["venue_id"] == "v123"
    assert "ValueError" in entry["error"] and "[identity]" in entry["error"]
    assert "1101051949123100" not in line


def test_worker_processes_add_up_in_multiprocess_mode(tmp_path: Path) -> None:
    """Two workers count into the shared folder; a third renders the sums, and a worker's live gauge
    goes once it is marked exited. prometheus_client reads the folder at import: separate processes."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PYTHONPATH": str(Path(__file__).parent.parent)}
    worker = (
        "import os\n"
        "from app.ops.metrics import Metrics\n"
        "m = Metrics()\n"
        "m.tally.sync(m.requests, 3, 'GET', '/healthz', '200')\n"
        "m.tally.sync(m.requests, 5, 'GET', '/healthz', '200')\n"  # a later sync adds the difference only
        "m.observe_request('GET', '/healthz', 200, 0.002)\n"
        "m.latencies.flush()\n"
        "m.in_flight.set(2)\n"
        "print(os.getpid())\n"
    )
    pids = [
        subprocess.run(
            [sys.executable, "-c", worker], env=env, check=True, capture_output=True, text=True
        ).stdout.strip()
        for _ in range(2)
    ]
    render = (
        "import sys\n"
        "from app.ops.metrics import Metrics, process_exited\n"
        "m = Metrics()\n"
        "print(m.render().decode())\n"
        "process_exited(int(sys.argv[1]))\n"
        "print('=====')\n"
        "print(m.render().decode())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", render, pids[0]], env=env, check=True, capture_output=True, text=True
    ).stdout
    first, second = out.split("=====\n")
    assert sample(first, 'healthcode_http_requests_total{method="GET",route="/healthz",status="200"}') == 10
    assert (
        sample(
            first, 'healthcode_http_request_duration_seconds_count{method="GET",route="/healthz",status_class="2xx"}'
        )
        == 2
    )
    assert sample(first, "healthcode_in_flight") == 4
    assert sample(second, "healthcode_in_flight") == 2  # the exited worker no longer counts
    assert sample(second, 'healthcode_http_requests_total{method="GET",route="/healthz",status="200"}') == 10


@pytest.mark.slow
async def test_two_served_workers_add_up_in_one_scrape(
    settings: Settings, signing_key: str, tmp_path: Path, redis: Redis
) -> None:
    """Two `healthcode serve` processes sharing PROMETHEUS_MULTIPROC_DIR, as `serve --workers 2` runs
    them: whichever is scraped counts the other's requests too (each syncs its counts every second)."""
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).parent.parent),
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "HEALTHCODE_PEPPER": settings.pepper.hex(),
        "HEALTHCODE_HANDLE_KEY": settings.handle_key.hex(),
        "HEALTHCODE_KEYS_DIR": str(settings.keys_dir),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
    }
    (tmp_path / "metrics").mkdir()
    ports = [free_port(), free_port()]
    with contextlib.ExitStack() as stack:
        servers = [
            stack.enter_context(
                pinned_server(
                    [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
                    port=port,
                    cpu=None,
                    log=tmp_path / f"worker-{n}.log",
                    env=env,
                )
            )
            for n, port in enumerate(ports)
        ]
        async with aiohttp.ClientSession() as session:
            for _ in range(4):  # the second worker only
                async with session.get(f"{servers[1].base_url}/openapi.json") as r:
                    assert r.status == 200

            async def scraped() -> float:
                async with session.get(f"{servers[0].base_url}/metrics") as r:
                    text = await r.text()
                series = 'healthcode_http_requests_total{method="GET",route="/openapi.json",status="200"}'
                return sample(text, series) if series + " " in text else 0.0

            deadline = time.monotonic() + 10
            while (seen := await scraped()) < 4:  # the second worker syncs every second
                assert time.monotonic() < deadline, f"only {seen} of the second worker's requests counted"
                await asyncio.sleep(0.2)
            assert seen == 4
        logs = (tmp_path / "worker-0.log").read_text()
    first = logs.splitlines()[0]
    assert orjson.loads(first)["level"] in ("info", "warning"), first  # the service logs JSON lines


async def _fails(request: web.Request) -> web.Response:
    raise RuntimeError("lookup of 11010519491231002X broke")


async def test_an_unexpected_error_is_logged_as_one_json_line_with_the_request_id(
    aiohttp_client: Callable[..., Awaitable[Api]], settings: Settings, signing_key: str
) -> None:
    app = create_app(settings, background=False)
    app.router.add_get("/v1/fails", _fails)
    api = await aiohttp_client(app)
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    logging.getLogger().addHandler(handler)
    try:
        r = await api.get("/v1/fails", headers={"X-Request-ID": "trace-77"})
    finally:
        logging.getLogger().removeHandler(handler)
    assert r.status == 500 and r.headers["X-Request-ID"] == "trace-77"
    reference = (await r.json(content_type="application/problem+json"))["reference"]
    [line] = [line for line in out.getvalue().splitlines() if "unhandled error" in line]
    entry = orjson.loads(line)
    assert entry["request_id"] == "trace-77" and entry["level"] == "error"
    assert reference in entry["message"] and "RuntimeError" in entry["error"]
    assert "11010519491231002X" not in line and "[identity]" in entry["error"]


def test_latencies_counted_in_python_render_as_observe_would() -> None:
    """Latencies fills the histogram's own values; the page must be what Histogram.observe makes."""
    values = (0.0, 0.0004, 0.0005, 0.005, 0.0051, 0.2, 29.9, 30.0, 31.0, 1e6)
    pages = []
    for counted in (False, True):
        registry = CollectorRegistry()
        histogram = Histogram(
            "t_seconds", "t", ["method", "route", "status_class"], buckets=LATENCY_BUCKETS, registry=registry
        )
        latencies = Latencies(histogram, LATENCY_BUCKETS)
        for value in values:
            if counted:
                latencies.observe(("GET", "/x", "2xx"), value)
            else:
                histogram.labels("GET", "/x", "2xx").observe(value)
        latencies.flush()
        pages.append(generate_latest(registry).decode())
    assert pages[0] == pages[1]
    assert 't_seconds_bucket{le="0.0005",method="GET",route="/x",status_class="2xx"} 3.0' in pages[1]
    assert 't_seconds_bucket{le="+Inf",method="GET",route="/x",status_class="2xx"} 10.0' in pages[1]
