"""Real-browser tests: Debian's Chromium driven by Playwright's Python package, never a downloaded browser.

The service under test is the aiohttp test server of `make_client`, on a local port in the test's own
event loop; Playwright's async API shares that loop. Screenshots and the pages' figures go to
HEALTHCODE_SCREENSHOTS when it is set (`make screens` sets docs/screens), else to the test's tmp_path.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

import pytest
from playwright.async_api import Browser, Page, Request, ViewportSize, async_playwright

CHROMIUM_ENV: Final = "HEALTHCODE_CHROMIUM"
SCREENSHOTS_ENV: Final = "HEALTHCODE_SCREENSHOTS"
# A phone: the pages must work 360 CSS pixels wide.
PHONE: Final = ViewportSize(width=360, height=740)


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


@contextlib.asynccontextmanager
async def launch(*args: str) -> AsyncIterator[Browser]:
    """Headless Chromium; the camera prompt is answered yes, and the camera is a fake one."""
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=chromium_path(),
            args=["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream", *args],
        )
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with launch() as launched:
        yield launched


def y4m_of(matrix: list[list[bool]], path: Path, *, width: int = 640, height: int = 480, frames: int = 3) -> Path:
    """A short raw video (YUV4MPEG2, 4:2:0) of a QR on white, for Chromium's fake camera to loop."""
    box = min(width, height) * 9 // 10 // len(matrix)
    left, top = (width - box * len(matrix)) // 2, (height - box * len(matrix)) // 2
    luma = bytearray(b"\xff" * (width * height))
    for y, row in enumerate(matrix):
        line = b"".join(b"\x00" * box if dark else b"\xff" * box for dark in row)
        for dy in range(box):
            start = (top + y * box + dy) * width + left
            luma[start : start + len(line)] = line
    chroma = b"\x80" * (width * height // 2)
    frame = b"FRAME\n" + bytes(luma) + chroma
    path.write_bytes(f"YUV4MPEG2 W{width} H{height} F10:1 Ip A1:1 C420jpeg\n".encode() + frame * frames)
    return path


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
    """Bytes a page received over the network (headers and bodies as sent, so compressed), per request."""

    def __init__(self, page: Page) -> None:
        self.requests: list[Request] = []
        page.on("requestfinished", self._finished)

    def _finished(self, request: Request) -> None:
        self.requests.append(request)

    @property
    def urls(self) -> list[str]:
        return [request.url for request in self.requests]

    async def total(self, *only: str) -> int:
        """The sum over every request, or over those whose URL holds one of `only`."""
        total = 0
        for request in self.requests:
            if only and not any(part in request.url for part in only):
                continue
            sizes = await request.sizes()
            total += sizes["responseBodySize"] + sizes["responseHeadersSize"]
        return total
