"""`healthcode`: the one command-line entry point, with a subcommand per operator task."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from app.ingest import commands as ingest_commands
from app.settings import Settings, SettingsError

Command = Callable[[argparse.Namespace, Settings], Coroutine[Any, Any, int]]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="healthcode",
        description="Health-code status service. Configuration comes from the environment "
        "(DATABASE_URL, REDIS_URL, HEALTHCODE_PEPPER or HEALTHCODE_PEPPER_FILE, HEALTHCODE_KEYS_DIR).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="serve the HTTP API (uvloop, graceful shutdown on SIGTERM)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--access-log", action="store_true", help="log every request (off: it costs throughput)")
    serve.add_argument(
        "--reuse-port", action="store_true", help="SO_REUSEPORT, so several processes can share the port"
    )

    sub.add_parser("migrate", help="apply the numbered SQL migrations under sql/ that are not yet applied")

    keys = sub.add_parser("keys", help="signing keys: new, list, activate, retire, revoke")
    keys_sub = keys.add_subparsers(dest="action", required=True, metavar="ACTION")
    new = keys_sub.add_parser("new", help="generate a key (pending: published, not yet signing)")
    new.add_argument("--alg", choices=("ES256", "EdDSA"), default="ES256")
    new.add_argument("--activate", action="store_true", help="make it the signing key at once")
    keys_sub.add_parser("list", help="every key with its state")
    for action, text in (
        ("activate", "make this key the signing key; the previous one is retired"),
        ("retire", "stop signing with this key; it stays published until its tokens expire"),
        ("revoke", "withdraw this key at once: unpublished, its tokens refused"),
    ):
        keys_sub.add_parser(action, help=text).add_argument("key", help="kid or thumbprint (prefix)")

    clients = sub.add_parser("clients", help="API clients: add, list, revoke")
    clients_sub = clients.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = clients_sub.add_parser("add", help="create a client and print its secret (shown once)")
    add.add_argument("--kind", required=True, choices=("citizen-backend", "scanner", "agency"))
    add.add_argument("--name", required=True)
    add.add_argument("--scope", action="append", default=[], help="for agencies: a record kind it may upload")
    clients_sub.add_parser("list", help="every client, without secrets")
    clients_sub.add_parser("revoke", help="revoke a client by name").add_argument("name")

    cache = sub.add_parser("cache", help="the Redis cache")
    cache_sub = cache.add_subparsers(dest="action", required=True, metavar="ACTION")
    cache_sub.add_parser("warm", help="rebuild every status entry in Redis from Postgres")

    demo = sub.add_parser("demo", help="migrate, create demo keys and clients, load a synthetic population")
    demo.add_argument("--people", type=int, default=10_000, help="how many synthetic people (default 10000)")
    demo.add_argument("--seed", type=int, default=2022)
    demo.add_argument("--list", action="store_true", help="print some synthetic identity numbers per colour")
    demo.add_argument("--base-url", default="http://127.0.0.1:8080")
    ingest_commands.add_parsers(sub)
    return parser


def _key_refs_as_operands(argv: list[str]) -> list[str]:
    """Key ids are base64url and may begin with `-`, which argparse would read as an option:
    `keys activate -x3Fq…` becomes `keys activate -- -x3Fq…`."""
    for i in range(len(argv) - 2):
        ref = argv[i + 2]
        is_ref = ref.startswith("-") and ref not in ("-h", "--help", "--")
        if argv[i] == "keys" and argv[i + 1] in ("activate", "retire", "revoke") and is_ref:
            return [*argv[: i + 2], "--", *argv[i + 2 :]]
    return argv


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(_key_refs_as_operands(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"healthcode: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command == "serve":
        from app.http.serve import serve

        serve(settings, host=args.host, port=args.port, access_log=args.access_log, reuse_port=args.reuse_port)
        return 0
    command = _COMMANDS[args.command if args.command in _COMMANDS else f"{args.command} {args.action}"]
    return asyncio.run(command(args, settings))


async def _with_conn(settings: Settings, job: Callable[[Any], Awaitable[int]]) -> int:
    from app.db import connect

    conn = await connect(settings.database_url)
    try:
        return await job(conn)
    finally:
        await conn.close()


async def _migrate(args: argparse.Namespace, settings: Settings) -> int:
    from app.db import migrate

    async def job(conn: Any) -> int:
        applied = await migrate(conn)
        print(f"applied {len(applied)} migration(s)" + "".join(f"\n  {m.version:03d}_{m.name}" for m in applied))
        return 0

    return await _with_conn(settings, job)


async def _keys(args: argparse.Namespace, settings: Settings) -> int:
    from app.keys import lifecycle as keys

    async def job(conn: Any) -> int:
        try:
            if args.action == "new":
                thumbprint = await keys.new_key(conn, settings.keys_dir, args.alg)
                if args.activate:
                    await keys.activate(conn, thumbprint)
                print(f"{thumbprint} {'active' if args.activate else 'pending'}")
            elif args.action == "list":
                for r in await keys.list_keys(conn):
                    print(
                        f"{r['kid']}  {r['alg']:5}  {r['state']:8}  {r['thumbprint']}  "
                        f"created {r['created_at']:%Y-%m-%d %H:%M}"
                    )
            else:
                action = {"activate": keys.activate, "retire": keys.retire, "revoke": keys.revoke}[args.action]
                print(f"{await action(conn, args.key)} {args.action}d")
        except keys.KeyError_ as exc:
            print(f"healthcode keys: {exc}", file=sys.stderr)
            return 1
        return 0

    return await _with_conn(settings, job)


async def _clients_add(args: argparse.Namespace, settings: Settings) -> int:
    from app.clients import add_client

    async def job(conn: Any) -> int:
        issued = await add_client(conn, args.name, args.kind, tuple(args.scope))
        print(f"client {issued.client.name} ({issued.client.kind}) created; its key, shown only this once:")
        print(issued.secret)
        return 0

    return await _with_conn(settings, job)


async def _clients_list(args: argparse.Namespace, settings: Settings) -> int:
    from app.clients import list_clients

    async def job(conn: Any) -> int:
        for r in await list_clients(conn):
            state = f"revoked {r['revoked_at']:%Y-%m-%d}" if r["revoked_at"] else "active"
            print(f"{r['id']:5}  {r['name']:32}  {r['kind']:16}  {r['key_prefix']}…  {state}  {','.join(r['scopes'])}")
        return 0

    return await _with_conn(settings, job)


async def _clients_revoke(args: argparse.Namespace, settings: Settings) -> int:
    from app.clients import revoke_client

    async def job(conn: Any) -> int:
        if await revoke_client(conn, args.name):
            print(f"client {args.name} revoked")
            return 0
        print(f"healthcode clients: no active client named {args.name}", file=sys.stderr)
        return 1

    return await _with_conn(settings, job)


async def _cache_warm(args: argparse.Namespace, settings: Settings) -> int:
    from app.statuses.warm import warm_cache

    count = await warm_cache(settings, progress=True)
    print(f"warmed {count} status entries")
    return 0


async def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from app.dev.demo import run_demo

    return await run_demo(settings, people=args.people, seed=args.seed, list_people=args.list, base_url=args.base_url)


_COMMANDS: dict[str, Command] = {
    "migrate": _migrate,
    "keys new": _keys,
    "keys list": _keys,
    "keys activate": _keys,
    "keys retire": _keys,
    "keys revoke": _keys,
    "clients add": _clients_add,
    "clients list": _clients_list,
    "clients revoke": _clients_revoke,
    "cache warm": _cache_warm,
    "demo": _demo,
    **ingest_commands.COMMANDS,
}
