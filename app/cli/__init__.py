"""`healthcode`: the one command-line entry point, with a subcommand per operator task.

Each command group is a module of this package with an `add_parser(subparsers)` that registers its
subcommands and the function that runs each one. Heavy imports happen inside those functions, so
`healthcode --help` stays fast.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import logging
import sys

from app.cli import appeals, batches, cache, clients, credentials, db, demo, keys, peers, serve, status
from app.settings import Settings, SettingsError

# The order in which `healthcode --help` lists the command groups.
_GROUPS = (serve, db, keys, clients, cache, demo, batches, status, appeals, peers, credentials)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="healthcode",
        description="Health-code status service. Configuration comes from the environment "
        "(DATABASE_URL, REDIS_URL, HEALTHCODE_PEPPER or HEALTHCODE_PEPPER_FILE, "
        "HEALTHCODE_HANDLE_KEY or HEALTHCODE_HANDLE_KEY_FILE, HEALTHCODE_KEYS_DIR).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in _GROUPS:
        group.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(keys.key_refs_as_operands(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"healthcode: configuration error: {exc}", file=sys.stderr)
        return 2
    # `serve` runs its own (uvloop) event loop and returns an exit code; every other command is a
    # coroutine, run here.
    outcome = args.run(args, settings)
    code: int = asyncio.run(outcome) if inspect.iscoroutine(outcome) else outcome
    return code
