"""The operator console in a real browser: a batch with its counts, an appeal proposed and approved by
two operators, the signing keys, and the live chart from /metrics."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.async_api import Browser, Page

from tests.appeals_world import World, world
from tests.browser import Transfer, browser, record_figure, shots
from tests.test_ingest_helpers import bad_checksum, csv_body, number, upload
from tests.test_openapi import assert_documented

__all__ = ["browser", "shots", "world"]
# The tests that drive a browser take 2 to 9 s each: marked slow (they run in `make test`).


async def sign_in(page: Page, secret: str) -> None:
    await page.fill("#key", secret)
    await page.click("#login button")


@pytest.mark.slow
async def test_the_console_shows_a_batch_an_appeal_and_the_keys(
    world: World, browser: Browser, client_keys: dict[str, str], shots: Path
) -> None:
    api = world.api
    _, batch = await upload(
        api,
        client_keys["agency"],
        "population",
        csv_body("id_type,id_number,name", f"resident,{number(1)},张三", f"resident,{bad_checksum(2)},李四"),
    )
    await world.red_person()
    appeal = await world.file()
    page = await browser.new_page(viewport={"width": 1100, "height": 900})
    transfer = Transfer(page)
    await page.goto(str(api.make_url("/console/?every=0.5")))
    await page.wait_for_load_state("load")
    # The page's own files; the live chart then scrapes /metrics (about 6 KB each time).
    record_figure(shots, "console_page_transfer_bytes", await transfer.total("/console/", "/web/console."))
    await sign_in(page, client_keys["operator"])

    row = page.locator(f"#batches tr[data-id='{batch['id']}']")
    await row.wait_for()
    cells = await row.locator("td").all_text_contents()
    assert cells[1:7] == ["test-agency", "population", "done", "2", "1", "1"]
    appeal_row = page.locator(f"#appeals tr[data-id='{appeal['id']}']")
    assert await appeal_row.get_attribute("data-state") == "open"
    assert "red" in (await appeal_row.text_content() or "")
    # Each table fills as its own answer arrives: the keys' row is waited for, not assumed.
    await page.locator("#keys tr[data-state=active]").first.wait_for()
    assert await page.locator("#keys tr[data-state=active]").count() == 1
    # Live figures: two scrapes make a point; the legend shows its values.
    await page.wait_for_function("() => Number(document.getElementById('chart').dataset.points) >= 3", timeout=15_000)
    assert "cache hit %" in (await page.text_content("#legend") or "")
    await page.screenshot(path=shots / "console.png", full_page=True)

    # Alice proposes green; Bob, the second operator, approves it.
    page.on("dialog", lambda dialog: dialog.accept("checked with the lab"))
    await appeal_row.get_by_role("button", name="提议改绿 Propose green").click()
    await page.wait_for_selector(f"#appeals tr[data-id='{appeal['id']}'][data-state=proposed]")
    await page.evaluate("sessionStorage.clear()")
    await page.reload()
    await sign_in(page, world.bob["Authorization"].removeprefix("Bearer "))
    await page.locator(f"#appeals tr[data-id='{appeal['id']}']").get_by_role("button", name="批准 Approve").click()
    await page.wait_for_selector(f"#appeals tr[data-id='{appeal['id']}']", state="detached")
    assert (await world.show(world.alice, appeal["id"]))["state"] == "upheld"


async def test_the_console_read_routes_are_for_operators_only(world: World, client_keys: dict[str, str]) -> None:
    await upload(
        world.api, client_keys["agency"], "population", csv_body("id_type,id_number,name", f"resident,{number(1)},张三")
    )
    for path in ("/v1/operator/batches", "/v1/operator/keys"):
        assert (await world.api.get(path, headers=world.citizen)).status == 403
        assert (await world.api.get(path)).status == 401
        r = await world.api.get(path, headers=world.alice)
        assert r.status == 200, await r.text()
        await assert_documented(r, path, "get")
    r = await world.api.get("/v1/operator/batches?limit=0", headers=world.alice)
    assert r.status == 422
    assert (await assert_documented(r, "/v1/operator/batches", "get"))["field"] == "limit"
    for path in ("/v1/operator/batches?state=done", "/v1/operator/keys?limit=5"):
        r = await world.api.get(path, headers=world.alice)
        body = await assert_documented(r, path.split("?")[0], "get")
        assert (r.status, body["code"]) == (422, "unknown_parameter")
