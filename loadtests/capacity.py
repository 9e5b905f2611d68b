"""Turn a load run into a capacity report: what one core serves, and the fleet for 1e9 queries a day.

    python -m loadtests.capacity OUT [--p99-target-ms 50] [--utilisation 0.7] [--server-cores N]

Reads OUT/locust_stats.csv and OUT/locust_stats_history.csv (Locust's CSV output), and, when the run
started the service itself, OUT/server_samples.csv (the server's own request counters and the CPU seconds
of the server, Redis and Postgres, each second). A request's cost in server CPU is measured in the seconds
where only one endpoint was served (the status and verify phases of loadtests/shape.py): per-core
throughput = 1 / cost, taken at a planning utilisation (default 70 %, the load at which queueing keeps
p99 near the service time) and checked against the p99 Locust measured. Writes OUT/capacity.txt and a
chart of throughput and p99 over the run, OUT/capacity.png.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

P99_TARGET_MS: Final = 50.0
UTILISATION: Final = 0.7
QUERIES_PER_DAY: Final = 1e9
PEAK_FACTOR: Final = 10
DAY: Final = 86_400
QUERY_ENDPOINTS: Final = ("/v1/status", "/v1/verify")


@dataclass
class Endpoint:
    name: str
    requests: int = 0
    failures: int = 0
    p99_ms: float = 0.0
    rps: float = 0.0


@dataclass
class Costs:
    """Server CPU seconds per request of each endpoint, and Redis and Postgres CPU per query."""

    per_request: dict[str, float] = field(default_factory=dict)
    sampled_requests: dict[str, int] = field(default_factory=dict)
    redis: float | None = None
    postgres: float | None = None
    mix_status_share: float | None = None
    mixed_model_ratio: float | None = None
    served_total: int = 0


def _float(text: str | None) -> float:
    try:
        return float(text or 0)
    except ValueError:
        return 0.0


def endpoint_of(name: str) -> str:
    """`/v1/status (open)` and `/v1/batches?kind=test` -> `/v1/status`, `/v1/batches`."""
    return name.split(" (", maxsplit=1)[0].split("?", maxsplit=1)[0]


def read_endpoints(stats_csv: Path) -> tuple[dict[str, Endpoint], Endpoint]:
    endpoints: dict[str, Endpoint] = {}
    total = Endpoint("all")
    with stats_csv.open(newline="") as f:
        for row in csv.DictReader(f):
            requests, failures = int(row["Request Count"]), int(row["Failure Count"])
            p99, rps = _float(row.get("99%")), _float(row.get("Requests/s"))
            if row["Name"] == "Aggregated":
                total = Endpoint("all", requests, failures, p99, rps)
                continue
            e = endpoints.setdefault(endpoint_of(row["Name"]), Endpoint(endpoint_of(row["Name"])))
            e.requests += requests
            e.failures += failures
            e.rps += rps
            e.p99_ms = max(e.p99_ms, p99 if requests else 0.0)  # conservative: the worst of its request kinds
    return endpoints, total


def read_costs(samples_csv: Path) -> Costs:
    costs = Costs()
    rows = []
    with samples_csv.open(newline="") as f:
        for row in csv.DictReader(f):
            rows.append(row)
    if len(rows) < 2:
        return costs
    alone: dict[str, list[float]] = {e: [0.0, 0.0] for e in QUERY_ENDPOINTS}  # cpu, requests
    mixed = {"cpu": 0.0, "status": 0.0, "verify": 0.0}
    redis = [0.0, 0.0]
    postgres = [0.0, 0.0]
    for before, after in itertools.pairwise(rows):
        c0, c1 = json.loads(before["routes"]), json.loads(after["routes"])
        served = {r: c1.get(r, 0) - c0.get(r, 0) for r in c1}
        queries = sum(served.get(e, 0) for e in QUERY_ENDPOINTS)
        costs.served_total += sum(n for r, n in served.items() if r != "/metrics")
        if not before["server_cpu"] or not after["server_cpu"]:
            continue
        cpu = _float(after["server_cpu"]) - _float(before["server_cpu"])
        status, verify = served.get("/v1/status", 0), served.get("/v1/verify", 0)
        others = sum(n for r, n in served.items() if r not in (*QUERY_ENDPOINTS, "/metrics"))
        if others == 0 and (status == 0) != (verify == 0):
            only = "/v1/status" if status else "/v1/verify"
            alone[only][0] += cpu
            alone[only][1] += status or verify
        elif status and verify:
            mixed["cpu"] += cpu
            mixed["status"] += status
            mixed["verify"] += verify
        for pair, column in ((redis, "redis_cpu"), (postgres, "postgres_cpu")):
            if before[column] and after[column] and queries:
                pair[0] += _float(after[column]) - _float(before[column])
                pair[1] += queries
    for e, (cpu, n) in alone.items():
        if n >= 100 and cpu > 0:
            costs.per_request[e] = cpu / n
            costs.sampled_requests[e] = int(n)
    costs.redis = redis[0] / redis[1] if redis[1] else None
    costs.postgres = postgres[0] / postgres[1] if postgres[1] else None
    if mixed["status"] + mixed["verify"]:
        costs.mix_status_share = mixed["status"] / (mixed["status"] + mixed["verify"])
        if len(costs.per_request) == 2 and mixed["cpu"] > 0:
            predicted = (mixed["status"] * costs.per_request["/v1/status"]
                         + mixed["verify"] * costs.per_request["/v1/verify"])  # fmt: skip
            costs.mixed_model_ratio = mixed["cpu"] / predicted
    return costs


def chart(history_csv: Path, png: Path, p99_target_ms: float) -> bool:
    """Throughput and p99 over the run, from Locust's aggregated history rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    times, rps, p99, users = [], [], [], []
    with history_csv.open(newline="") as f:
        for row in csv.DictReader(f):
            if row.get("Name") != "Aggregated":
                continue
            times.append(int(row["Timestamp"]))
            rps.append(_float(row.get("Requests/s")))
            p99.append(_float(row.get("99%")) if row.get("99%") not in (None, "N/A") else float("nan"))
            users.append(_float(row.get("User Count")))
    if not times:
        return False
    t0 = times[0]
    elapsed = [t - t0 for t in times]
    fig, left = plt.subplots(figsize=(9, 4.5), dpi=100)
    left.plot(elapsed, rps, color="tab:blue", label="requests/s (Locust)")
    left.set_xlabel("seconds into the run")
    left.set_ylabel("requests per second", color="tab:blue")
    right = left.twinx()
    right.plot(elapsed, p99, color="tab:red", label="p99 (ms)")
    right.axhline(p99_target_ms, color="tab:red", linestyle=":", linewidth=1, label=f"p99 target {p99_target_ms:g} ms")
    right.set_ylabel("p99 latency, ms", color="tab:red")
    right.set_ylim(bottom=0)
    left.set_ylim(bottom=0)
    fig.legend(loc="upper left", bbox_to_anchor=(0.08, 0.92), fontsize="small")
    left.set_title("healthcode load run: throughput and p99")
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    return True


def _ceil(x: float) -> int:
    return max(1, math.ceil(x - 1e-9))


def _table(
    endpoints: dict[str, Endpoint], total: Endpoint, costs: Costs, p99_target_ms: float, utilisation: float
) -> list[str]:
    """Per endpoint: what Locust saw, and what one core serves at the planning utilisation."""
    lines: list[str] = []
    lines.append(
        f"{'endpoint':<16}{'requests':>10}{'failures':>10}{'req/s':>9}{'p99 ms':>9}  per-core req/s at p99 target"
    )
    for name in sorted(endpoints):
        e = endpoints[name]
        cost = costs.per_request.get(name)
        if cost:
            per_core = utilisation / cost
            met = "met" if e.p99_ms <= p99_target_ms else f"MISSED ({e.p99_ms:g} > {p99_target_ms:g} ms)"
            note = (f"{per_core:>8,.0f}  = {utilisation:g} / {cost * 1e6:,.0f} µs CPU per request "
                    f"({costs.sampled_requests[name]:,} requests served alone); p99 target {met}")  # fmt: skip
        else:
            note = "       -  (not served alone in this run)" if name in QUERY_ENDPOINTS else ""
        lines.append(f"{name:<16}{e.requests:>10,}{e.failures:>10,}{e.rps:>9,.0f}{e.p99_ms:>9,.0f}  {note}".rstrip())
    lines.append(f"{'all':<16}{total.requests:>10,}{total.failures:>10,}{total.rps:>9,.0f}{total.p99_ms:>9,.0f}")
    error_rate = total.failures / total.requests if total.requests else 0.0
    lines.append(f"errors: {total.failures:,} of {total.requests:,} requests ({error_rate:.3%})")
    if costs.served_total:
        gap = total.requests - costs.served_total
        lines.append(f"requests counted: Locust {total.requests:,}, the server (GET /metrics) {costs.served_total:,} "
                     f"(Locust {'over' if gap > 0 else 'under'}-counts by {abs(gap):,}, "
                     f"{abs(gap) / max(costs.served_total, 1):.2%})")  # fmt: skip
    lines.append("")

    return lines


def report(
    out: Path,
    *,
    p99_target_ms: float = P99_TARGET_MS,
    utilisation: float = UTILISATION,
    server_cores: float | None = None,
) -> str:
    endpoints, total = read_endpoints(out / "locust_stats.csv")
    samples = out / "server_samples.csv"
    costs = read_costs(samples) if samples.exists() else Costs()
    run = json.loads((out / "run.json").read_text()) if (out / "run.json").exists() else {}
    lines = [f"capacity report for {out}", ""]

    lines += _table(endpoints, total, costs, p99_target_ms, utilisation)
    # The fleet for 1e9 queries a day at a 10x peak.
    average = QUERIES_PER_DAY / DAY
    peak = average * PEAK_FACTOR
    lines.append(f"demand: 1e9 queries/day = {average:,.0f}/s on average; x{PEAK_FACTOR} peak = {peak:,.0f}/s")
    if len(costs.per_request) == 2:
        share = costs.mix_status_share if costs.mix_status_share is not None else 0.5
        cost = share * costs.per_request["/v1/status"] + (1 - share) * costs.per_request["/v1/verify"]
        basis = "measured"
        lines.append(f"query mix (mixed phase): {share:.0%} status, {1 - share:.0%} verify -> "
                     f"{share:.2f} x {costs.per_request['/v1/status'] * 1e6:,.0f} µs + "
                     f"{1 - share:.2f} x {costs.per_request['/v1/verify'] * 1e6:,.0f} µs = {cost * 1e6:,.0f} µs "
                     f"API CPU per query")  # fmt: skip
        if costs.mixed_model_ratio is not None:
            lines.append(f"check: the mixed phase used {costs.mixed_model_ratio:.2f}x the CPU these costs predict")
    elif total.rps > 0:
        cores = server_cores or float(run.get("server_cores", 1))
        cost = cores / total.rps
        basis = f"assumed ({cores:g} server cores fully used; no server CPU samples)"
        lines.append(f"API CPU per query: {cores:g} cores / {total.rps:,.0f} req/s = {cost * 1e6:,.0f} µs ({basis})")
    else:
        lines.append("capacity: no requests were served; nothing to size")
        return _finish(out, lines, p99_target_ms)
    per_node_qps = utilisation / cost
    api_cores = _ceil(peak * cost / utilisation)
    lines.append(f"API: one core at {utilisation:.0%} busy serves {utilisation:g} / {cost * 1e6:,.0f} µs = "
                 f"{per_node_qps:,.0f} queries/s = {per_node_qps * DAY:,.0f}/day; "
                 f"peak {peak:,.0f}/s x {cost * 1e6:,.0f} µs / {utilisation:g} = {api_cores:,} cores")  # fmt: skip
    redis_shards = pg_cores = None
    if costs.redis is not None:
        redis_shards = _ceil(peak * costs.redis / utilisation)
        lines.append(f"Redis: {costs.redis * 1e6:,.1f} µs CPU per query; {peak:,.0f}/s x {costs.redis * 1e6:,.1f} µs "
                     f"/ {utilisation:g} = {redis_shards:,} shards (one core each; Redis Cluster)")  # fmt: skip
    else:
        lines.append("Redis: not sampled (remote host); hot path is one GET per query")
    if costs.postgres is not None:
        pg_cores = _ceil(peak * costs.postgres / utilisation)
        lines.append(f"Postgres: {costs.postgres * 1e6:,.1f} µs CPU per query (scan events, misses); "
                     f"{peak:,.0f}/s x {costs.postgres * 1e6:,.1f} µs / {utilisation:g} = {pg_cores:,} cores "
                     "(includes anything else this Postgres served during the run)")  # fmt: skip
    else:
        lines.append("Postgres: not sampled (remote host); the hot path never reads it")
    needs = f"{api_cores:,} API cores"
    needs += f", {redis_shards:,} Redis shards" if redis_shards else ""
    needs += f", {pg_cores:,} Postgres cores" if pg_cores else ""
    lines.append("")
    lines.append(f"capacity: {per_node_qps * DAY:,.0f} queries/day per node (one API core, {basis}); "
                 f"1e9/day at 10x peak needs {needs}")  # fmt: skip
    p99_ok = all(e.p99_ms <= p99_target_ms for n, e in endpoints.items() if n in QUERY_ENDPOINTS)
    lines.append(f"p99 target {p99_target_ms:g} ms: {'met' if p99_ok else 'MISSED'} by the query endpoints in this run")
    return _finish(out, lines, p99_target_ms)


def _finish(out: Path, lines: list[str], p99_target_ms: float) -> str:
    history = out / "locust_stats_history.csv"
    if history.exists() and chart(history, out / "capacity.png", p99_target_ms):
        lines.append(f"chart: {out / 'capacity.png'}")
    text = "\n".join(lines)
    (out / "capacity.txt").write_text(text + "\n")
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.capacity", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="a load run's result folder")
    parser.add_argument("--p99-target-ms", type=float, default=P99_TARGET_MS)
    parser.add_argument("--utilisation", type=float, default=UTILISATION, help="planning CPU utilisation")
    parser.add_argument("--server-cores", type=float, help="cores the service used, when it was not sampled")
    args = parser.parse_args(argv)
    if not (args.out / "locust_stats.csv").exists():
        print(f"{args.out}: no locust_stats.csv; is it a load run's folder?", file=sys.stderr)
        return 2
    print(report(args.out, p99_target_ms=args.p99_target_ms, utilisation=args.utilisation,
                 server_cores=args.server_cores))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
