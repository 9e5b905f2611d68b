"""GET /v1/qr.png and /v1/qr.svg: the QR image of a token, rendered off the status path and cached."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from aiohttp import web

from app.http.appkeys import CLIENTS, SIGNER
from app.http.client_limits import admit
from app.http.problems import InvalidField
from app.limits import QR
from signing.errors import BadToken
from signing.jws import MAX_TOKEN_LENGTH
from signing.qr import render_png, render_svg

routes = web.RouteTableDef()


class RenderCache:
    """Least-recently-used images by (format, token): a client refreshing its screen costs no render."""

    def __init__(self, capacity: int = 4096) -> None:
        self.capacity = capacity
        self._images: OrderedDict[tuple[str, str], bytes] = OrderedDict()

    def get(self, fmt: str, token: str, render: Callable[[str], bytes]) -> bytes:
        key = (fmt, token)
        image = self._images.get(key)
        if image is None:
            image = render(token)
            self._images[key] = image
            if len(self._images) > self.capacity:
                self._images.popitem(last=False)
        else:
            self._images.move_to_end(key)
        return image


_cache = RenderCache()


async def _qr(request: web.Request, fmt: str, render: Callable[[str], bytes], content_type: str) -> web.Response:
    client = request.app[CLIENTS].authenticate(request.headers.get("Authorization"), kind="citizen-backend")
    await admit(request, client, QR)
    token = request.query.get("token", "")
    if not token or len(token) > MAX_TOKEN_LENGTH:
        raise InvalidField("token", "missing", f"pass the token as ?token=, at most {MAX_TOKEN_LENGTH} characters")
    verifier = request.app[SIGNER].verifier
    assert verifier is not None
    now = int(time.time())
    try:
        claims = verifier.verify(token, now)
    except BadToken as exc:
        # Only our own live tokens are rendered, so the endpoint is not a free QR printer.
        raise InvalidField("token", exc.reason, f"the token cannot be rendered: {exc.reason}") from None
    max_age = max(0, int(str(claims["exp"])) - now)
    return web.Response(
        body=_cache.get(fmt, token, render),
        content_type=content_type,
        headers={"Cache-Control": f"private, max-age={max_age}"},
    )


@routes.get("/v1/qr.png")
async def qr_png(request: web.Request) -> web.Response:
    return await _qr(request, "png", render_png, "image/png")


@routes.get("/v1/qr.svg")
async def qr_svg(request: web.Request) -> web.Response:
    return await _qr(request, "svg", render_svg, "image/svg+xml")
