"""`healthcode demo`: a ready-to-try service with a synthetic population."""

from __future__ import annotations

import argparse
from typing import Any

from app.settings import Settings


def add_parser(sub: Any) -> None:
    demo_parser = sub.add_parser("demo", help="migrate, create demo keys and clients, load a synthetic population")
    demo_parser.add_argument("--people", type=int, default=10_000, help="how many synthetic people (default 10000)")
    demo_parser.add_argument("--seed", type=int, default=2022)
    demo_parser.add_argument("--list", action="store_true", help="print some synthetic identity numbers per colour")
    demo_parser.add_argument("--base-url", default="http://127.0.0.1:8080")
    demo_parser.set_defaults(run=demo)


async def demo(args: argparse.Namespace, settings: Settings) -> int:
    from app.dev.demo import run_demo

    return await run_demo(settings, people=args.people, seed=args.seed, list_people=args.list, base_url=args.base_url)
