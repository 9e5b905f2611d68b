"""Real-browser tests: Debian's Chromium driven by Playwright's Python package, never a downloaded browser.

The service under test is the aiohttp test server of `make_client`, on a local port in the test's own
event loop; Playwright's async API shares that loop. Screenshots and the pages' figures go to
HEALTHCODE_SCREENSHOTS when it is set (`make screens` sets docs/screens), else to the test's tmp_path.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

import pytest
from playwright.async_api import Browser, Page, async_playwright

CHROMIUM_ENV: Final = "HEALTHCODE_CHROMIUM"
SCREENSHOTS_ENV: Final = "HEALTHCODE_SCREENSHOTS"
# A phone: the pages must work 360 CSS pixels wide.
PHONE: Final = {"width": 360, "height": 740}


def chromium_path() -> str:
    """Debian's Chromium; a machine without it fails here with what to install, it is never skipped."""
    path = os.environ.get(CHROMIUM_ENV) or shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None or not Path(path).exists():
        pytest.fail(
            "the browser tests need Chromium: `apt-get install chromium` (Debian's package; .ci/run installs it "
            f"when missing), or set {CHROMIUM_ENV} to a Chromium executable. Playwright's own browser download "
            "is not used.",
            pytrace=False,
        )
    return path


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=chromium_path(),
            args=["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"],
        )
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    """Where screenshots and figures go."""
    out = Path(os.environ.get(SCREENSHOTS_ENV) or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    return out


def record_figure(out: Path, name: str, value: Any) -> None:
    """Add one measured figure to figures.json beside the screenshots."""
    path = out / "figures.json"
    figures = json.loads(path.read_text()) if path.exists() else {}
    figures[name] = value
    path.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")


class Transfer:
    """Bytes the page received over the network (bodies as sent, compressed), counted per response."""

    def __init__(self, page: Page) -> None:
        self.total = 0
        self.urls: list[str] = []
        page.on("requestfinished", self._finished)

    async def _finished(self, request: Any) -> None:
        sizes = await request.sizes()
        self.total += sizes["responseBodySize"] + sizes["responseHeadersSize"]
        self.urls.append(request.url)
