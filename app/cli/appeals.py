"""`healthcode appeals`: operators review appeals: list, show, decide (propose, approve, reject, end).

The operator is the operator client whose key is in HEALTHCODE_OPERATOR_KEY (never an argument: the
command line is visible to other users of the host). Two operators are two keys, so the rule that a
colour change needs two people holds here as it does over the API.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from app.appeals.model import CATEGORIES, STATES, Operator
from app.settings import Settings
from signing.colours import COLOURS

if TYPE_CHECKING:
    import asyncpg

KEY_VARIABLE = "HEALTHCODE_OPERATOR_KEY"


def add_parser(sub: Any) -> None:
    appeals = sub.add_parser(
        "appeals",
        help="review appeals (operators; the operator's key in HEALTHCODE_OPERATOR_KEY)",
        description=f"Review appeals as the operator whose client key is in {KEY_VARIABLE} "
        "(`healthcode clients add --kind operator --name NAME` creates one per person).",
    )
    actions = appeals.add_subparsers(dest="action", required=True, metavar="ACTION")

    listing = actions.add_parser("list", help="appeals, newest first")
    listing.add_argument("--state", choices=STATES)
    listing.add_argument("--category", choices=CATEGORIES)
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--before", type=int, help="only appeals older than this id (the next page)")
    listing.set_defaults(run=list_appeals)

    show = actions.add_parser("show", help="one appeal: the person (masked), their status, every decision")
    show.add_argument("appeal_id", type=int)
    show.set_defaults(run=show_appeal)

    decide = actions.add_parser(
        "decide",
        help="propose a colour change, approve another operator's proposal, reject, or end a change early",
        description="A colour change takes two operators: one proposes (--colour, --hours or --until), "
        "another approves it (--proposal, the id `show` gives). A rejection or ending a change early takes one.",
    )
    decide.add_argument("appeal_id", type=int)
    decide.add_argument("decision", choices=("propose", "approve", "reject", "end"))
    decide.add_argument("--reason", required=True, help="why (kept with the decision and in the audit log)")
    decide.add_argument("--colour", choices=COLOURS, help="propose: the colour while the change lasts")
    until = decide.add_mutually_exclusive_group()
    until.add_argument("--hours", type=float, help="propose: the change expires this many hours from now")
    until.add_argument("--until", type=datetime.fromisoformat, help="propose: it expires at this ISO 8601 time")
    decide.add_argument("--proposal", type=int, help="approve: the id of the proposal approved")
    decide.set_defaults(run=decide_appeal)


async def list_appeals(args: argparse.Namespace, settings: Settings) -> int:
    from app.appeals import store
    from app.db import connection

    async with connection(settings.database_url) as conn:
        if await _operator(conn) is None:
            return 1
        rows = await store.list_appeals(
            conn, state=args.state, category=args.category, before=args.before, limit=max(1, args.limit)
        )
    for a in rows:
        filed = datetime.fromtimestamp(a["filed_at"], UTC).strftime("%Y-%m-%d %H:%M")
        person = a["person"]
        print(
            f"{a['id']:7}  {a['state']:9}  {a['category']:21}  {filed}  "
            f"{person['name'] or '-'} {person['id_number'] or '-'}  now {person['colour'] or '-'}"
        )
    if not rows:
        print("no appeals", file=sys.stderr)
    return 0


async def show_appeal(args: argparse.Namespace, settings: Settings) -> int:
    import orjson

    from app.appeals import store
    from app.appeals.errors import AppealError
    from app.db import connection

    async with connection(settings.database_url) as conn:
        if await _operator(conn) is None:
            return 1
        try:
            view = await store.operator_view(conn, args.appeal_id)
        except AppealError as exc:
            print(f"healthcode appeals: {exc.detail}", file=sys.stderr)
            return 1
    print(orjson.dumps(view, option=orjson.OPT_INDENT_2).decode())
    return 0


async def decide_appeal(args: argparse.Namespace, settings: Settings) -> int:
    import time

    from app.appeals import model
    from app.appeals.decisions import decide
    from app.appeals.errors import AppealError
    from app.statuses.standalone import open_publisher

    now = int(time.time())
    expires_at: int | None = None
    if args.hours is not None:
        expires_at = int((datetime.now(UTC) + timedelta(hours=args.hours)).timestamp())
    elif args.until is not None:
        expires_at = int((args.until if args.until.tzinfo else args.until.replace(tzinfo=UTC)).timestamp())
    try:
        decision = model.decision(
            args.decision, args.reason, colour=args.colour, expires_at=expires_at, proposal_id=args.proposal
        )
        async with open_publisher(settings) as (conn, publisher):
            operator = await _operator(conn)
            if operator is None:
                return 1
            decision_id = await decide(conn, args.appeal_id, operator, decision, publisher=publisher, now=now)
            state = await conn.fetchval("SELECT state FROM appeals WHERE id = $1", args.appeal_id)
    except AppealError as exc:
        print(f"healthcode appeals: {exc.detail}", file=sys.stderr)
        return 1
    print(
        f"appeal {args.appeal_id}: {args.decision} recorded as decision {decision_id} by {operator.name}; now {state}"
    )
    return 0


async def _operator(conn: asyncpg.Connection) -> Operator | None:
    """The operator acting, from HEALTHCODE_OPERATOR_KEY; None (and a message) when it names none."""
    from app.clients import client_by_secret

    secret = os.environ.get(KEY_VARIABLE, "")
    client = await client_by_secret(conn, secret) if secret.strip() else None
    if client is None or client.kind != "operator":
        print(
            f"healthcode appeals: set {KEY_VARIABLE} to the key of an active operator client "
            "(healthcode clients add --kind operator --name NAME)",
            file=sys.stderr,
        )
        return None
    return Operator(client.id, client.name)
