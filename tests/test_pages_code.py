"""The citizen's code page in a real browser: colours, the pop-up, the clock, renewal before expiry."""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path

import asyncpg
import pytest
from playwright.async_api import Browser, Page

from app.identity import mask_number
from app.settings import Settings
from app.web.backend import CLIENTS_FILE, write_demo_people
from tests.alert_people import HIGH_RISK, arrival, high_risk_area
from tests.browser import PHONE, Transfer, browser, record_figure, shots
from tests.conftest import AppFactory
from tests.test_api_status import insert_status
from tests.test_openapi import assert_documented

__all__ = ["browser", "shots"]
# The tests that drive a browser take 2 to 9 s each: marked slow (they run in `make test`).

PEOPLE = {"green": "500103199003071239", "yellow": "11010519491231002X", "red": "440305200002294564"}
# The colour of the first dark pixel of the QR canvas (the top-left finder pattern).
FIRST_DARK_PIXEL = """() => {
    const c = document.getElementById('qr'), d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    for (let i = 0; i < d.length; i += 4)
        if (d[i] + d[i + 1] + d[i + 2] < 600) return `rgb(${d[i]}, ${d[i + 1]}, ${d[i + 2]})`;
    return 'none';
}"""
GREEN, YELLOW, RED = "rgb(10, 125, 59)", "rgb(201, 138, 0)", "rgb(196, 22, 28)"


@pytest.fixture
async def demo_people(db: asyncpg.Connection, settings: Settings, client_keys: dict[str, str]) -> dict[str, str]:
    """A green and a red person, as the demo's files name them (the yellow arrival is made by its test)."""
    now = int(time.time())
    await insert_status(db, settings.pepper, PEOPLE["green"], name="张三", last_test=(now - 26 * 3600, "negative"))
    await insert_status(
        db, settings.pepper, PEOPLE["red"], name="王五", colour="red", reasons=("confirmed",), complete=False, doses=1
    )
    (settings.keys_dir / CLIENTS_FILE).write_text(json.dumps({"citizen-backend": client_keys["citizen-backend"]}))
    write_demo_people(settings.keys_dir, PEOPLE)
    return PEOPLE


async def open_code(browser: Browser, base: str, person: str) -> tuple[Page, Transfer]:
    page = await browser.new_page(viewport=PHONE)
    transfer = Transfer(page)
    await page.goto(f"{base}code/?person={person}")
    await page.wait_for_selector("#card[data-state=shown]")
    return page, transfer


async def qr_colour(page: Page) -> str:
    """The colour of the QR's first dark module (top-left finder pattern), as rgb()."""
    return str(await page.evaluate(FIRST_DARK_PIXEL))


@pytest.mark.slow
async def test_green_code_with_clock_moving_band_and_a_small_page(
    make_client: AppFactory, browser: Browser, demo_people: dict[str, str], shots: Path
) -> None:
    api = await make_client()
    page, transfer = await open_code(browser, str(api.make_url("/")), "green")
    assert await page.get_attribute("#card", "data-colour") == "green"
    assert await page.text_content("#colour") == "绿码"
    assert await page.text_content("#name") == "张*"
    assert await page.text_content("#number") == mask_number(PEOPLE["green"])
    assert await qr_colour(page) == GREEN
    assert await page.eval_on_selector("#colour", "e => getComputedStyle(e).backgroundColor") == GREEN
    assert "已完成全程疫苗接种" in (await page.text_content("#vaccine") or "")
    assert "阴性（26 小时前）" in (await page.text_content("#test") or "")
    assert "失效" in (await page.text_content("#expiry") or "")
    assert await page.is_hidden("#alert")
    # The clock ticks and the band moves: a screenshot of the screen is told from the screen itself.
    clock = await page.text_content("#clock")
    await page.wait_for_function("t => document.getElementById('clock').textContent !== t", arg=clock)
    top = await page.eval_on_selector("#sweep", "e => e.getBoundingClientRect().top")
    await page.wait_for_function("t => document.getElementById('sweep').getBoundingClientRect().top !== t", arg=top)
    # Nothing comes from elsewhere, and the whole page (with its first status) stays under 100 KB.
    assert all(url.startswith(str(api.make_url("/"))) for url in transfer.urls), transfer.urls
    total = await transfer.total()
    assert total < 100_000, total
    record_figure(shots, "code_page_transfer_bytes", total)
    assert await page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    await page.screenshot(path=shots / "code-green.png")


@pytest.mark.slow
async def test_yellow_code_pops_up_what_to_do_in_chinese_then_english(
    make_client: AppFactory,
    browser: Browser,
    demo_people: dict[str, str],
    shots: Path,
    db: asyncpg.Connection,
    settings: Settings,
) -> None:
    api = await make_client()
    # Arrived from a high-risk area 10 hours ago with a negative test from the day before: one local test
    # within 24 hours of arrival clears it.
    await high_risk_area(db)
    await arrival(api.app, db, settings.pepper, PEOPLE["yellow"], hours_ago=10, tests=(-30,))
    page, _ = await open_code(browser, str(api.make_url("/")), "yellow")
    assert await page.get_attribute("#card", "data-colour") == "yellow"
    assert await qr_colour(page) == YELLOW
    assert await page.is_visible("#alert")
    assert await page.text_content("#alert-title") == "请主动报备"
    assert await page.text_content("#alert-area") == f"您近期到达过风险地区：{HIGH_RISK}（高风险）。"
    assert await page.text_content("#alert-todo") == "请在抵达后 24 小时内完成 1 次核酸检测。"
    deadline = datetime.fromtimestamp(time.time() + 14 * 3600)  # arrival + 24 h, in the browser's zone
    assert deadline.strftime("%H:") in (await page.text_content("#alert-deadline") or "")
    await page.screenshot(path=shots / "code-yellow-popup.png")
    await page.click("#alert-ok")
    assert await page.is_hidden("#alert")
    await page.click("#lang")
    assert await page.text_content("#colour") == "Yellow"
    assert await page.text_content("#alert-title") == "Please report your arrival"
    assert await page.evaluate("document.documentElement.lang") == "en"


@pytest.mark.slow
async def test_red_code(make_client: AppFactory, browser: Browser, demo_people: dict[str, str], shots: Path) -> None:
    api = await make_client()
    page, _ = await open_code(browser, str(api.make_url("/")), "red")
    assert await page.get_attribute("#card", "data-colour") == "red"
    assert await page.text_content("#colour") == "红码"
    assert await qr_colour(page) == RED
    assert await page.text_content("#vaccine") == "已接种 1 剂"
    assert await page.text_content("#test") == "无核酸检测记录"
    await page.screenshot(path=shots / "code-red.png")


@pytest.mark.slow
async def test_the_code_is_renewed_before_it_expires(
    make_client: AppFactory, browser: Browser, demo_people: dict[str, str]
) -> None:
    api = await make_client(token_ttl_seconds=3)
    page, _ = await open_code(browser, str(api.make_url("/")), "green")
    first = await page.get_attribute("#qr", "data-token")
    expires = int(await page.get_attribute("#card", "data-expires") or 0)
    await page.wait_for_function("t => document.getElementById('qr').dataset.token !== t", arg=first, timeout=5000)
    assert time.time() < expires  # the new code came while the old one was still good
    assert int(await page.get_attribute("#card", "data-expires") or 0) > expires


async def test_the_reference_backend_answer_fits_its_documented_schema(
    make_client: AppFactory, demo_people: dict[str, str]
) -> None:
    api = await make_client()
    r = await api.post("/demo/backend/status", json={"person": "green"})
    answer = await assert_documented(r, "/demo/backend/status", "post")
    assert (answer["colour"], answer["alert"], answer["qr"][0]) == ("green", None, "0" * len(answer["qr"]))
    r = await api.post("/demo/backend/status", json={"person": "nobody"})
    assert r.status == 404


async def test_the_reference_backend_answers_only_for_the_demo(make_client: AppFactory, settings: Settings) -> None:
    api = await make_client()
    r = await api.post("/demo/backend/status", json={"person": "green"})
    assert r.status == 404, await r.text()
    assert (await r.json())["type"] == "/problems/not-found"
