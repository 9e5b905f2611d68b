"""What a refusal costs the serving core, against the least any refusal in the process can cost.

At FACTOR times capacity every served request comes with FACTOR - 1 refused ones, all on the same core,
so goodput can be at most 1 - (FACTOR - 1) x refusal / served of capacity, whatever admission decides.
Three servers run one after the other on the same pinned core, each driven by wrk from another core:

- served: `healthcode serve` answering status look-ups (Redis hits): the CPU time of a served request;
- door: `healthcode serve` with its door shut (every request refused 503 from its bytes, the path a
  refusal takes under overload, app/http/door.py): the CPU time of a refusal;
- floor: a bare uvloop protocol that writes the door's prepared 503 for every segment it reads, parsing
  nothing: one read and one write of a socket, the least an answer costs in a process on this kernel.

This module also serves the last two: `python -m loadtests.bench.refusals --serve door|floor --port P`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from email.utils import formatdate
from pathlib import Path
from typing import Any, Final, cast

import uvloop

from loadtests.bench import BenchError
from loadtests.bench.data import BenchData, healthcode_command, prepare
from loadtests.bench.servers import Server, free_port, pinned_server
from loadtests.bench.status import cores
from loadtests.bench.wrk import run_wrk, wrk_path

FACTOR: Final = 3.0  # as loadtests/bench/overload.py offers
# Served as the status bench serves (admission would shed past its slots); refused over more connections,
# as under overload.
CONNECTIONS: Final = {"served": 64, "door": 200, "floor": 200}
_HEALTHY: Final = b'HTTP/1.1 200 OK\r\nContent-Length: 15\r\n\r\n{"status":"ok"}'


class _Floor(asyncio.Protocol):
    """Every segment read is answered with a prepared 503 (GET /healthz with 200, for the start-up check)."""

    def __init__(self, refusal: bytes) -> None:
        self._refusal = refusal
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's, not a subclass of asyncio's

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        self._transport.write(_HEALTHY if data.startswith(b"GET /healthz ") else self._refusal)


async def _serve_floor(port: int) -> None:
    from app.http.door import refusal_answers  # the same bytes the door writes

    refusal = refusal_answers(formatdate(usegmt=True))[0]
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Floor(refusal), "127.0.0.1", port, backlog=4096)
    print(f"floor serving on 127.0.0.1:{port}", flush=True)
    await server.serve_forever()


def _serve_shut_door(port: int) -> None:
    """`healthcode serve` whose door refuses every request it can (probes and other shapes still pass)."""
    from app.http.admission import Admission
    from app.http.serve import serve
    from app.settings import Settings

    # A bench-only door: engaged, and never open. Nothing else of the server changes.
    Admission.door_engaged = lambda self, now=None: True  # type: ignore[method-assign]
    Admission.door_open = lambda self: False  # type: ignore[method-assign]
    serve(Settings.from_env(), host="127.0.0.1", port=port)


def _cpu_per_request(name: str, server: Server, data: BenchData, seconds: float, core: int | None) -> float:
    before = server.cpu_seconds()
    result = run_wrk(
        f"{server.base_url}/v1/status",
        data.bodies,
        data.bearer,
        seconds=seconds,
        connections=CONNECTIONS[name],
        cpu=core,
    )
    cpu = server.cpu_seconds() - before
    expected_not_ok = 0 if name == "served" else result.requests  # refusers answer 503 and nothing else
    if result.not_ok != expected_not_ok or result.socket_errors:
        raise BenchError(f"{name}: {result.not_ok} of {result.requests} answers not 200, {result.socket_errors} errors")
    micros = cpu * 1e6 / result.requests
    print(f"refusals {name}: {result.rate:,.0f} answers/s, {micros:.1f} us CPU per answer", file=sys.stderr)
    return micros


def run(args: argparse.Namespace) -> dict[str, Any]:
    wrk_path()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    server_core, driver_core = cores()
    data = prepare()
    module = [sys.executable, "-m", "loadtests.bench.refusals", "--serve"]
    micros: dict[str, float] = {}
    for name in ("served", "door", "floor"):
        port = free_port()
        served = healthcode_command("serve", "--port", str(port))
        with pinned_server(
            served if name == "served" else [*module, name, "--port", str(port)],
            port=port,
            cpu=server_core,
            log=out / f"refusals-{name}-server.log",
            env=data.env,
        ) as server:
            micros[name] = _cpu_per_request(name, server, data, args.duration, driver_core)
    bound = {name: 1 - (FACTOR - 1) * micros[name] / micros["served"] for name in ("door", "floor")}
    print(
        f"refusal CPU: door {micros['door']:.1f} us, floor {micros['floor']:.1f} us "
        f"(door/floor {micros['door'] / micros['floor']:.2f}); served {micros['served']:.1f} us",
        flush=True,
    )
    print(
        f"goodput bound at {FACTOR:g}x (1 - {FACTOR - 1:g} x refusal/served): "
        f"door {bound['door']:.0%}, floor {bound['floor']:.0%}",
        flush=True,
    )
    return {
        "cpu_us_per_answer": {name: round(value, 2) for name, value in micros.items()},
        "goodput_bound": {name: round(value, 3) for name, value in bound.items()},
        "factor": FACTOR,
        "connections": CONNECTIONS,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--serve", choices=("door", "floor"), required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    if args.serve == "floor":
        uvloop.run(_serve_floor(args.port))
    else:
        _serve_shut_door(args.port)


if __name__ == "__main__":
    main()
