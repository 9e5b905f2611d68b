"""The pages and their files as HTTP answers: compressed, revalidated, same-origin only; JWKS with CORS."""

from __future__ import annotations

import gzip

import pytest

from app.web.assets import assets
from tests.browser import CHROMIUM_ENV, chromium_path
from tests.conftest import Api


async def test_pages_are_served_with_a_same_origin_policy_and_revalidate(api: Api) -> None:
    for path in ("/code/", "/scan/", "/console/"):
        r = await api.get(path, headers={"Accept-Encoding": "identity"})
        assert r.status == 200, path
        assert r.content_type == "text/html"
        assert "default-src 'self'" in r.headers["Content-Security-Policy"]
        assert r.headers["Cache-Control"] == "no-cache"
        again = await api.get(path, headers={"If-None-Match": r.headers["ETag"]})
        assert again.status == 304


async def test_files_are_gzipped_when_asked_and_unknown_ones_are_404(api: Api) -> None:
    r = await api.get("/web/jsqr.min.js", headers={"Accept-Encoding": "gzip"}, auto_decompress=False)
    assert (r.status, r.headers["Content-Encoding"]) == (200, "gzip")
    assert gzip.decompress(await r.read()) == assets()["jsqr.min.js"].body
    for name in ("nothing.js", "code.html", "..%2Fassets.py"):
        missing = await api.get(f"/web/{name}")
        assert missing.status == 404, name
        assert missing.content_type == "application/problem+json"


async def test_the_scanner_config_names_the_issuer(api: Api) -> None:
    r = await api.get("/scan/config.json")
    assert await r.json() == {"issuer": "healthcode", "jwks": "/.well-known/jwks.json"}


async def test_jwks_may_be_fetched_and_revalidated_from_another_origin(api: Api) -> None:
    r = await api.get("/.well-known/jwks.json", headers={"Origin": "https://scanner.example"})
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    assert r.headers["Access-Control-Expose-Headers"] == "ETag"
    preflight = await api.options(
        "/.well-known/jwks.json",
        headers={
            "Origin": "https://scanner.example",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "if-none-match",
        },
    )
    assert preflight.status == 204
    assert preflight.headers["Access-Control-Allow-Headers"] == "If-None-Match"
    unchanged = await api.get("/.well-known/jwks.json", headers={"If-None-Match": r.headers["ETag"]})
    assert (unchanged.status, unchanged.headers["Access-Control-Allow-Origin"]) == (304, "*")


def test_the_code_page_and_its_files_stay_small() -> None:
    """The code page's own files, uncompressed; the browser test measures what actually travels."""
    files = ("code.html", "code.js", "code.css")
    assert sum(len(assets()[name].body) for name in files) < 30_000


def test_without_chromium_the_browser_tests_fail_saying_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CHROMIUM_ENV, "")
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(pytest.fail.Exception, match="apt-get install chromium"):
        chromium_path()
