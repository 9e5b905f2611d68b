"""`healthcode keys`: signing keys: new, list, activate, retire, revoke."""

from __future__ import annotations

import argparse
import re
import sys
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

from app.settings import Settings
from signing.keys import EDDSA, ES256

if TYPE_CHECKING:
    from app.keys.lifecycle import Activation

# The actions that name an existing key (a kid or a thumbprint prefix).
_KEY_ACTIONS: Final = (
    ("activate", "make this key the signing key (by default once scanners can hold it); the previous one is retired"),
    ("retire", "stop signing with this key; it stays published until its tokens expire"),
    ("revoke", "withdraw this key at once: unpublished, its tokens refused"),
)
_KEY_ACTION_NAMES: Final = tuple(action for action, _ in _KEY_ACTIONS)
# What may follow `keys ACTION` and is not a key id beginning with `-`.
_VALUED_OPTIONS: Final = frozenset({"--at", "--after"})
_FLAGS: Final = frozenset({"-h", "--help"})


def add_parser(sub: Any) -> None:
    keys_parser = sub.add_parser("keys", help="signing keys: new, list, activate, retire, revoke")
    actions = keys_parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    new = actions.add_parser("new", help="generate a key (pending: published, not yet signing)")
    new.add_argument("--alg", choices=(ES256, EDDSA), default=ES256)
    new.add_argument(
        "--activate",
        action="store_true",
        help="make it the signing key as `keys activate` would by default: at once if no key signs, "
        "else once it has been published long enough for scanners to hold it",
    )
    new.set_defaults(run=keys)
    actions.add_parser("list", help="every key with its state").set_defaults(run=keys)
    for action, text in _KEY_ACTIONS:
        named = actions.add_parser(action, help=text)
        named.add_argument("key", help="kid or thumbprint (prefix)")
        if action == "activate":
            when = named.add_mutually_exclusive_group()
            when.add_argument(
                "--at",
                type=moment,
                metavar="TIME",
                help="when it starts signing: ISO 8601 with a time zone, e.g. 2030-01-01T08:00:00+08:00",
            )
            when.add_argument(
                "--after",
                type=duration,
                metavar="DURATION",
                help="how long from now it starts signing, e.g. 90s, 10m, 1h30m (0 for at once). "
                "Default: as soon as the key has been published for the JWKS max-age plus one key "
                "refresh, so every scanner's cached key set holds it first (at once if no key signs)",
            )
        named.set_defaults(run=keys)


_DURATION: Final = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s?)?")


def duration(text: str) -> timedelta:
    """`90`, `90s`, `10m`, `1h30m`, `2d`: a non-negative duration."""
    found = _DURATION.fullmatch(text.strip())
    if not text.strip() or found is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 90s, 10m or 1h30m")
    days, hours, minutes, seconds = (int(part or 0) for part in found.groups())
    return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)


def moment(text: str) -> datetime:
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time like 2030-01-01T08:00:00+08:00") from None
    if at.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no time zone; add one, e.g. +08:00 or Z")
    return at


def key_refs_as_operands(argv: list[str]) -> list[str]:
    """Key ids are base64url and may begin with `-`, which argparse would read as an option:
    `keys activate -x3Fq… --after 0s` becomes `keys activate --after 0s -- -x3Fq…` (the key last, after
    `--`, so the options around it are still read as options)."""
    for i in range(len(argv) - 1):
        if argv[i] != "keys" or argv[i + 1] not in _KEY_ACTION_NAMES:
            continue
        j = i + 2
        while j < len(argv):
            token = argv[j]
            if token == "--":
                return argv
            if token in _VALUED_OPTIONS:
                j += 2  # the option and its value
            elif token in _FLAGS or token.split("=", 1)[0] in _VALUED_OPTIONS:
                j += 1
            elif token.startswith("-"):
                return [*argv[:j], *argv[j + 1 :], "--", token]
            else:
                j += 1
        return argv
    return argv


async def keys(args: argparse.Namespace, settings: Settings) -> int:
    from app.db import connection
    from app.keys import lifecycle

    # Processes see a new key within one refresh; scanners then cache the key set for the JWKS max-age.
    lead = timedelta(seconds=lifecycle.JWKS_MAX_AGE_SECONDS + settings.refresh_seconds)
    now = datetime.now(UTC)
    try:
        async with connection(settings.database_url) as conn:
            if args.action == "new":
                thumbprint = await lifecycle.new_key(conn, settings.keys_dir, args.alg)
                if not args.activate:
                    print(f"{thumbprint} pending")
                else:
                    activation = await lifecycle.schedule_activation(conn, thumbprint, now=now, lead=lead)
                    print(_activation(activation, now, "active"))
            elif args.action == "list":
                for r in await lifecycle.list_keys(conn):
                    scheduled = f"  activates {r['activate_at'].isoformat()}" if r["activate_at"] else ""
                    print(
                        f"{r['kid']}  {r['alg']:5}  {r['state']:8}  {r['thumbprint']}  "
                        f"created {r['created_at']:%Y-%m-%d %H:%M}{scheduled}"
                    )
            elif args.action == "activate":
                at = args.at if args.after is None else now + args.after
                activation = await lifecycle.schedule_activation(conn, args.key, now=now, at=at, lead=lead)
                print(_activation(activation, now, "activated"))
            else:
                action = {"retire": lifecycle.retire, "revoke": lifecycle.revoke}
                print(f"{await action[args.action](conn, args.key)} {args.action}d")
    except lifecycle.KeyError_ as exc:
        print(f"healthcode keys: {exc}", file=sys.stderr)
        return 1
    return 0


def _activation(activation: Activation, now: datetime, done: str) -> str:
    if not activation.scheduled:
        return f"{activation.thumbprint} {done}"
    wait = round((activation.at - now).total_seconds())
    return f"{activation.thumbprint} scheduled: signs from {activation.at.isoformat()} (in {wait} s)"
