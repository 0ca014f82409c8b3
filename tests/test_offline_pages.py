"""Browser pages work offline and load with no 4xx: the detect API's /docs and /redoc (assets served from a
package, no CDN) and the media server's page, in real headless Chromium on loopback. Every request that
leaves loopback is refused and recorded, so a page that still reaches for a CDN fails here even on a
machine with internet."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import uvicorn
from aiohttp import web

from detect_api.app import create_app
from detect_api.settings import Settings
from inference.pipeline import Detector
from media_server.app import create_app as create_media_app
from tests.browser import chromium_launch_options, require_chromium
from tests.detect_api_support import FAKE_SPEC, FakeEngine
from tests.media_support import FakeDetector, loopback_settings
from tools.servers import LOOPBACK, free_port


@asynccontextmanager
async def detect_api_server() -> AsyncIterator[str]:
    """The detect API over real HTTP (uvicorn) on a fake engine: the pages need no model."""
    detector = Detector(FakeEngine(), FAKE_SPEC)  # type: ignore[arg-type]
    app = create_app(Settings(gpu_sample_interval_s=0, grpc_port=0), detector=detector)
    port = free_port()
    # Access log on: Chromium's own requests (the favicon) never reach Playwright's events, only the log.
    server = uvicorn.Server(uvicorn.Config(app, host=LOOPBACK, port=port, log_config=None, access_log=True))
    task = asyncio.create_task(server.serve())
    try:
        async with httpx.AsyncClient() as client:
            for _ in range(100):
                if server.started:
                    break
                await asyncio.sleep(0.05)  # uvicorn has no started event to await
            assert server.started, "uvicorn did not start"
            assert (await client.get(f"http://{LOOPBACK}:{port}/healthz")).status_code == 200
        yield f"http://{LOOPBACK}:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


def server_4xx(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Answers of 400 or more in the servers' access logs (uvicorn's and aiohttp's)."""
    bad = []
    for record in caplog.records:
        if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
            if int(record.args[4]) >= 400:
                bad.append(record.getMessage())
        elif record.name == "aiohttp.access" and re.search(r'" [45]\d\d ', record.getMessage()):
            bad.append(record.getMessage())
    return bad


async def favicon_answer(caplog: pytest.LogCaptureFixture, logger: str, timeout_s: float = 10.0) -> str:
    """The access-log line of the browser's favicon request (Chromium makes it after the load, by itself)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        for record in caplog.records:
            if record.name == logger and "favicon" in record.getMessage():
                return record.getMessage()
        await asyncio.sleep(0.05)  # polling the log until a deadline
    raise AssertionError(f"no favicon request within {timeout_s} s")


class PageLog:
    """Every response of 400 or more, every failed request, every request that left loopback."""

    def __init__(self) -> None:
        self.bad: list[str] = []
        self.offsite: list[str] = []

    async def attach(self, page: Any) -> None:
        async def route(r: Any) -> None:
            url = r.request.url
            if url.startswith(f"http://{LOOPBACK}") or url.startswith("data:") or url.startswith("blob:"):
                await r.continue_()
            else:
                self.offsite.append(url)
                await r.abort()

        await page.route("**/*", route)
        page.on("response", lambda resp: resp.status >= 400 and self.bad.append(f"{resp.status} {resp.url}"))
        page.on("requestfailed", lambda req: self.bad.append(f"failed {req.url}"))


@asynccontextmanager
async def chromium_page() -> AsyncIterator[tuple[Any, PageLog]]:
    chromium = require_chromium()
    from playwright import async_api as playwright_api

    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(**chromium_launch_options(executable=chromium))
        try:
            page = await browser.new_page()
            log = PageLog()
            await log.attach(page)
            yield page, log
        finally:
            await browser.close()


async def test_docs_render_the_detect_operation_offline(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "uvicorn.access")
    async with detect_api_server() as url, chromium_page() as (page, log):
        await page.goto(f"{url}/docs")
        # Swagger UI built the operation list from /openapi.json: the /detect operation is on the page.
        await page.wait_for_selector('.opblock-summary-path[data-path="/detect"]', timeout=20_000)
        assert await page.locator("#operations-default-detect_detect_post").count() == 1
        assert " 200" in await favicon_answer(caplog, "uvicorn.access")
        assert log.offsite == [] and log.bad == [], (log.offsite, log.bad)
    assert server_4xx(caplog) == []


async def test_redoc_renders_offline(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "uvicorn.access")
    async with detect_api_server() as url, chromium_page() as (page, log):
        await page.goto(f"{url}/redoc")
        await page.get_by_text("Detect objects in an image").first.wait_for(timeout=20_000)
        assert " 200" in await favicon_answer(caplog, "uvicorn.access")
        assert log.offsite == [] and log.bad == [], (log.offsite, log.bad)
    assert server_4xx(caplog) == []


async def test_docs_assets_are_served_from_the_package() -> None:
    async with detect_api_server() as url, httpx.AsyncClient() as client:
        page = (await client.get(f"{url}/docs")).text
        assert "cdn" not in page.lower() and "/docs-assets/swagger-ui-bundle.js" in page
        js = await client.get(f"{url}/docs-assets/swagger-ui-bundle.js")
        assert js.status_code == 200 and len(js.content) > 500_000
        assert "SwaggerUIBundle" in js.text[:2000]


async def test_media_server_page_loads_with_no_4xx(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "aiohttp.access")
    detector = FakeDetector()
    await detector.start()
    # aiohttp's plain runner, for its access log (the server's own runner keeps it off): Chromium asks for
    # /favicon.ico by itself, which no Playwright event shows; only the server's log does.
    runner = web.AppRunner(create_media_app(loopback_settings(), detector=detector))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, LOOPBACK, port).start()
    try:
        async with chromium_page() as (page, log):
            await page.goto(f"http://{LOOPBACK}:{port}/")
            await page.wait_for_selector("#start", timeout=10_000)
            # The icon the page names is served: Chromium no longer falls back to /favicon.ico (a 404).
            assert '"GET /static/favicon.svg' in await favicon_answer(caplog, "aiohttp.access")
            await page.wait_for_load_state("networkidle")
            assert log.offsite == [] and log.bad == [], (log.offsite, log.bad)
    finally:
        await runner.cleanup()
    requests = [r.getMessage() for r in caplog.records if r.name == "aiohttp.access"]
    assert any('"GET / ' in line for line in requests), requests
    assert server_4xx(caplog) == []
