"""The scanner page in a real browser: offline verification with the network cut, online with it back,
queued scans sent once, a QR read through Chromium's fake camera."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from playwright.async_api import Browser, BrowserContext, FilePayload, Page

from app.http.appkeys import FRONT_DOOR, HANDLES, SCANS, SIGNER
from app.keys.lifecycle import activate, new_key
from app.settings import Settings
from signing.encoding import b64url_decode, b64url_encode
from signing.keys import EDDSA
from signing.qr import module_matrix, render_png
from tests.browser import PHONE, Transfer, browser, launch, record_figure, shots, y4m_of
from tests.conftest import Api, AppFactory
from tests.support import bearer
from tests.test_api_status import insert_status

__all__ = ["browser", "shots"]
pytestmark = pytest.mark.slow

GREEN_PERSON, YELLOW_PERSON = "500103199003071239", "11010519491231002X"


@pytest.fixture
async def people(db: asyncpg.Connection, settings: Settings) -> None:
    now = int(time.time())
    await insert_status(db, settings.pepper, GREEN_PERSON, last_test=(now - 20 * 3600, "negative"))
    await insert_status(db, settings.pepper, YELLOW_PERSON, colour="yellow", reasons=("risk_area_arrival",), popup=True)


async def token_of(api: Api, key: str, number: str) -> str:
    r = await api.post(
        "/v1/status",
        data=orjson.dumps({"id_number": number}),
        headers={**bearer(key), "Content-Type": "application/json"},
    )
    assert r.status == 200, await r.text()
    return str((await r.json())["token"])


def tampered(token: str) -> str:
    """The same token claiming green: the payload changed, the signature kept."""
    header, payload, signature = token.split(".")
    claims = orjson.loads(b64url_decode(payload))
    claims["st"] = "G" if claims["st"] != "G" else "Y"
    return f"{header}.{b64url_encode(orjson.dumps(claims))}.{signature}"


def expired(api: Api) -> str:
    """A genuine token signed ten minutes ago with a five-minute life."""
    app = api.app
    then = int(time.time()) - 600
    token: str = app[SIGNER].status_signer().sign_status(app[HANDLES].seal(b"\x01" * 16, then), "G", 0, 1, then, ver=1)
    return token


async def open_scanner(context: BrowserContext, api: Api, shots: Path | None = None) -> Page:
    page = await context.new_page()
    transfer = Transfer(page)
    await page.goto(str(api.make_url("/scan/")))
    await page.wait_for_selector("body[data-ready=true]", state="attached")
    if shots is not None:  # the page, its decoder and the keys, as a gate's phone first loads them
        record_figure(shots, "scanner_page_transfer_bytes", await transfer.total())
    return page


def page_fetches(api: Api) -> dict[tuple[str, str, int], int]:
    """How often the service answered for the scanner page and its files."""
    routes = ("/scan/", "/scan/config.json", "/web/{name}")
    return {key: count for key, count in api.app[FRONT_DOOR].counts.items() if key[1] in routes}


async def scan(page: Page, token: str) -> dict[str, Any]:
    """Feed the page a photo of the QR; answer the verdict it shows."""
    if await page.is_visible("#verdict"):
        await page.click("#verdict")
    await page.set_input_files(
        "#image", files=FilePayload(name="qr.png", mimeType="image/png", buffer=render_png(token))
    )
    await page.wait_for_selector("#verdict[data-ms]")
    verdict: dict[str, Any] = await page.eval_on_selector(
        "#verdict",
        "v => ({pass: v.dataset.pass, reason: v.dataset.reason, ms: +v.dataset.ms, decode: +v.dataset.decodeMs})",
    )
    await page.eval_on_selector("#verdict", "v => { delete v.dataset.ms; }")
    return verdict


async def test_offline_with_the_network_cut_genuine_tampered_and_expired(
    make_client: AppFactory, browser: Browser, people: None, client_keys: dict[str, str], shots: Path
) -> None:
    api = await make_client()
    genuine = await token_of(api, client_keys["citizen-backend"], GREEN_PERSON)
    yellow = await token_of(api, client_keys["citizen-backend"], YELLOW_PERSON)
    context = await browser.new_context(viewport=PHONE)
    page = await open_scanner(context, api, shots)
    await page.wait_for_function("navigator.serviceWorker.controller !== null")
    await context.set_offline(True)
    # Reloaded with the network cut: the page and its files from the service worker, the keys from storage.
    served = page_fetches(api)
    reloaded = await page.reload()
    assert reloaded is not None and reloaded.from_service_worker
    assert page_fetches(api) == served  # none of the page's files reached the service
    await page.wait_for_selector("body[data-ready=true]", state="attached")
    assert await page.get_attribute("#net", "data-online") == "false"

    ok = await scan(page, genuine)
    assert (ok["pass"], ok["reason"]) == ("true", "ok")
    await page.screenshot(path=shots / "scan-pass.png")
    record_figure(shots, "scanner_decode_to_verdict_ms", ok["ms"])
    record_figure(shots, "scanner_photo_decode_ms", ok["decode"])
    assert (await scan(page, tampered(genuine)))["reason"] == "bad_signature"
    await page.screenshot(path=shots / "scan-stop.png")
    assert (await scan(page, expired(api)))["reason"] == "expired"
    assert (await scan(page, yellow))["reason"] == "Y"
    # The gate's policy, from the token alone: a test within 12 hours fails a 20-hour-old test.
    await page.click("#verdict")
    await page.click("#settings summary")
    await page.fill("#max-age", "12")
    await page.click("#save")
    assert (await scan(page, await token_of(api, client_keys["citizen-backend"], GREEN_PERSON)))["reason"] == "test_age"
    # Keys last fetched two days ago, and still no network: the scanner works on, and says so.
    assert await page.get_attribute("#keys", "data-stale") == "false"
    await page.evaluate(
        "() => { const k = JSON.parse(localStorage.getItem('hc-jwks')); k.fetched -= 2 * 86400e3;"
        " localStorage.setItem('hc-jwks', JSON.stringify(k)); }"
    )
    await page.reload()
    await page.wait_for_selector("#keys[data-stale=true]")
    assert (await scan(page, expired(api)))["reason"] == "expired"


async def test_online_scans_made_offline_are_queued_and_sent_once_when_the_network_returns(
    make_client: AppFactory, browser: Browser, people: None, client_keys: dict[str, str], shots: Path
) -> None:
    api = await make_client()
    citizen = client_keys["citizen-backend"]
    context = await browser.new_context(viewport=PHONE)
    page = await open_scanner(context, api)
    responses: list[tuple[str, int]] = []
    page.on("response", lambda r: responses.append((r.url.removeprefix(str(api.make_url(""))), r.status)))
    await page.click("#settings summary")
    await page.fill("#scanner-key", client_keys["scanner"])
    await page.check("#online")
    await page.click("#save")
    assert client_keys["scanner"] not in page.url

    # Online: the service is asked, and the scan recorded.
    live = await scan(page, await token_of(api, citizen, GREEN_PERSON))
    assert live["pass"] == "true"
    await page.wait_for_selector("#verdict[data-online=green]")
    recorder = api.app[SCANS]
    assert recorder.to_stream == 1

    # Offline: verified on the spot, queued.
    await context.set_offline(True)
    queued = await scan(page, await token_of(api, citizen, GREEN_PERSON))
    assert queued["pass"] == "true"
    await page.wait_for_selector("#queue[data-count='1']")
    assert recorder.to_stream == 1

    # Back online: the queue is sent once, and the keys revalidated with their ETag.
    await context.set_offline(False)
    await page.wait_for_selector("#queue[data-count='0']", state="attached")
    assert recorder.to_stream == 2
    assert ("/.well-known/jwks.json", 304) in responses


async def test_a_qr_through_the_fake_camera(
    make_client: AppFactory, people: None, client_keys: dict[str, str], tmp_path: Path
) -> None:
    api = await make_client()
    token = await token_of(api, client_keys["citizen-backend"], GREEN_PERSON)
    video = y4m_of(module_matrix(token), tmp_path / "qr.y4m")
    async with launch(f"--use-file-for-fake-video-capture={video}") as camera_browser:
        page = await open_scanner(await camera_browser.new_context(viewport=PHONE), api)
        await page.click("#camera")
        await page.wait_for_selector("#verdict[data-ms]")
        assert await page.get_attribute("#verdict", "data-reason") == "ok"


async def test_an_ed25519_token_verifies_offline_with_webcrypto(
    make_client: AppFactory,
    browser: Browser,
    people: None,
    client_keys: dict[str, str],
    db: asyncpg.Connection,
    settings: Settings,
) -> None:
    api = await make_client()
    await activate(db, await new_key(db, settings.keys_dir, EDDSA))
    await api.app[SIGNER].refresh(db)
    token = await token_of(api, client_keys["citizen-backend"], GREEN_PERSON)
    assert orjson.loads(b64url_decode(token.split(".")[0]))["alg"] == "EdDSA"
    context = await browser.new_context(viewport=PHONE)
    page = await open_scanner(context, api)
    await context.set_offline(True)
    assert (await scan(page, token))["reason"] == "ok"
    assert (await scan(page, tampered(token)))["reason"] == "bad_signature"
