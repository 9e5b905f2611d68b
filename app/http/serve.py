"""Running the application under uvloop with graceful shutdown."""

from __future__ import annotations

import uvloop
from aiohttp import web
from aiohttp.log import access_logger

from app.http.app import create_app
from app.settings import Settings

# In-flight requests get this long to finish after SIGTERM before connections are closed.
SHUTDOWN_GRACE_SECONDS = 15.0


def serve(settings: Settings, *, host: str, port: int, access_log: bool = False, reuse_port: bool = False) -> None:
    web.run_app(
        create_app(settings),
        host=host,
        port=port,
        access_log=access_logger if access_log else None,
        reuse_port=reuse_port,
        shutdown_timeout=SHUTDOWN_GRACE_SECONDS,
        handle_signals=True,
        loop=uvloop.new_event_loop(),
        print=lambda text: print(text, flush=True),
    )
