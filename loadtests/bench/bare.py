"""The baseline: the least an aiohttp JSON endpoint can do under uvloop, served like `healthcode serve`.

Same route as the status endpoint, same server settings (uvloop, no access log), an answer of a small
JSON object made by orjson; the request body is left unread. Run: `python -m loadtests.bench.bare --port P`.
"""

from __future__ import annotations

import argparse

import orjson
import uvloop
from aiohttp import web


async def bare_status(request: web.Request) -> web.Response:
    return web.Response(body=orjson.dumps({"colour": "green"}), content_type="application/json")


async def healthz(request: web.Request) -> web.Response:
    return web.Response(body=b'{"status":"ok"}', content_type="application/json")


def create_bare_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/v1/status", bare_status)
    app.router.add_get("/healthz", healthz)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(
        create_bare_app(),
        host=args.host,
        port=args.port,
        access_log=None,
        loop=uvloop.new_event_loop(),
        print=lambda text: print(text, flush=True),
    )


if __name__ == "__main__":
    main()
