"""GET /code/, /scan/, /console/ and /web/{name}: the pages and their files, from memory.

Every page is same-origin only (Content-Security-Policy): no fonts, scripts or styles from elsewhere,
and no inline script, so a page cannot be made to run code it was not shipped with.
"""

from __future__ import annotations

from typing import Final

from aiohttp import web

from app.http.appkeys import SETTINGS
from app.http.handlers.common import json_response
from app.http.problems import NotFound
from app.web.assets import Asset, assets

routes = web.RouteTableDef()

CSP: Final = (
    "default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob: mediastream:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors *; form-action 'none'"
)
# Pages revalidate every time (a new release shows at once); their files are named by the page that
# loads them and revalidated cheaply with the ETag.
_PAGE_CACHE: Final = "no-cache"
_FILE_CACHE: Final = "public, max-age=300"


def _send(request: web.Request, asset: Asset, cache_control: str) -> web.Response:
    headers = {
        "ETag": asset.etag,
        "Cache-Control": cache_control,
        "Content-Security-Policy": CSP,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Vary": "Accept-Encoding",
    }
    if request.headers.get("If-None-Match") == asset.etag:
        return web.Response(status=304, headers=headers)
    body = asset.body
    if asset.gzipped is not None and "gzip" in request.headers.get("Accept-Encoding", ""):
        body = asset.gzipped
        headers["Content-Encoding"] = "gzip"
    return web.Response(body=body, headers={**headers, "Content-Type": asset.content_type})


@routes.get("/code/")
async def code_page(request: web.Request) -> web.Response:
    return _send(request, assets()["code.html"], _PAGE_CACHE)


@routes.get("/scan/")
async def scan_page(request: web.Request) -> web.Response:
    return _send(request, assets()["scan.html"], _PAGE_CACHE)


@routes.get("/console/")
async def console_page(request: web.Request) -> web.Response:
    return _send(request, assets()["console.html"], _PAGE_CACHE)


@routes.get("/scan/sw.js")
async def scanner_worker(request: web.Request) -> web.Response:
    """The scanner's service worker; served under /scan/ so that its scope is the scanner page."""
    return _send(request, assets()["scan-sw.js"], _PAGE_CACHE)


@routes.get("/web/{name}")
async def page_file(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    asset = assets().get(name)
    if asset is None or name.endswith(".html") or name == "scan-sw.js":
        raise NotFound(f"no page file {name}")
    return _send(request, asset, _FILE_CACHE)


@routes.get("/scan/config.json")
async def scanner_config(request: web.Request) -> web.Response:
    """What an offline scanner checks besides the signature: the issuer its tokens must name."""
    return json_response(
        {"issuer": request.app[SETTINGS].issuer, "jwks": "/.well-known/jwks.json"},
        headers={"Cache-Control": "public, max-age=3600"},
    )
