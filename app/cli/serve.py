"""`healthcode serve`: the HTTP API."""

from __future__ import annotations

import argparse
from typing import Any

from app.settings import Settings


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def add_parser(sub: Any) -> None:
    serve_parser = sub.add_parser("serve", help="serve the HTTP API (uvloop, graceful shutdown on SIGTERM)")
    serve_parser.add_argument("--host", default="127.0.0.1")
    serve_parser.add_argument("--port", type=int, default=8080)
    serve_parser.add_argument("--access-log", action="store_true", help="log every request (off: it costs throughput)")
    serve_parser.add_argument(
        "--reuse-port", action="store_true", help="SO_REUSEPORT, so several processes can share the port"
    )
    serve_parser.add_argument(
        "--workers",
        type=_positive,
        default=1,
        metavar="N",
        help="N server processes on one port (SO_REUSEPORT), a dead one started again; SIGTERM stops all (1)",
    )
    serve_parser.set_defaults(run=serve)


def serve(args: argparse.Namespace, settings: Settings) -> int:
    """Runs until SIGTERM or SIGINT, in an event loop of its own."""
    if args.workers > 1:
        from app.http.prefork import Prefork, child_command

        return Prefork(child_command(args.host, args.port, args.access_log), args.workers).run()
    from app.http.serve import serve as serve_app

    serve_app(settings, host=args.host, port=args.port, access_log=args.access_log, reuse_port=args.reuse_port)
    return 0
