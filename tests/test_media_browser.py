"""Real headless Chromium with a fake camera (a real photo of a person) against the real media server.

Chromium comes from Debian (`chromium`), driven by Python Playwright with executable_path: Playwright's own
browser download is never used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.browser import chromium_launch_options, photo_clip, require_chromium
from tests.media_support import loopback_settings, running_server

pytestmark = pytest.mark.slow


async def _wait(page: Any, expression: str, timeout_ms: float, what: str) -> Any:
    try:
        return await page.wait_for_function(expression, timeout=timeout_ms, polling=100)
    except Exception as e:  # Playwright's TimeoutError; report what the page saw instead
        snapshot = await page.evaluate(
            "() => ({status: window.rtdetect.status, error: window.rtdetect.error, "
            "decoded: window.rtdetect.framesDecoded, presented: window.rtdetect.framesPresented, "
            "results: window.rtdetect.results})"
        )
        raise AssertionError(f"timed out waiting for {what}; page state {snapshot}") from e


@pytest.mark.parametrize("codec", ["VP8", "H264"])
async def test_chromium_page_shows_annotated_video_and_detections(
    codec: str, model_dir: Path, photos: dict[str, np.ndarray], tmp_path: Path
) -> None:
    chromium = require_chromium()
    from playwright import async_api as playwright_api

    clip = photo_clip(tmp_path / "astronaut.y4m", photos["astronaut"])
    settings = loopback_settings(model_dir=model_dir)
    async with running_server(settings) as server, playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(**chromium_launch_options(fake_camera=clip, executable=chromium))
        try:
            page = await browser.new_page()
            console: list[str] = []
            page.on("console", lambda msg: console.append(msg.text))
            await page.goto(server.url + "/")
            await page.select_option("#codec", codec)
            await page.click("#start")

            await _wait(page, "() => window.rtdetect.status === 'connected'", 20_000, "the connection")
            # The returned video plays: real dimensions and decoded frames increasing.
            await _wait(page, "() => document.getElementById('remote').videoWidth > 0", 20_000, "video size")
            first = await page.evaluate("() => window.rtdetect.framesPresented")
            await _wait(
                page,
                f"() => window.rtdetect.framesPresented >= {first} + 60",
                20_000,
                "60 more presented frames",
            )
            assert await page.evaluate("() => document.getElementById('remote').videoWidth") == 640
            decoded = await page.evaluate("() => window.rtdetect.framesDecoded")
            await _wait(
                page, f"() => window.rtdetect.framesDecoded > {decoded}", 5_000, "more decoded frames"
            )

            # Detections from the data channel reach the page and its list: the fake camera shows a person.
            await _wait(
                page,
                "() => [...document.querySelectorAll('#detections td:first-child')]"
                ".some(td => td.textContent === 'person')",
                20_000,
                "a person in the detections list",
            )
            # ...and keep coming (a stalled inference task once stopped them while the video went on).
            results = await page.evaluate("() => window.rtdetect.results")
            await _wait(page, f"() => window.rtdetect.results >= {results} + 30", 15_000, "30 more results")
            # The page measures the round trip from the numbers it stamps into its frames.
            await _wait(page, "() => window.rtdetect.rttMs.length >= 10", 10_000, "round-trip measurements")
            rtts = await page.evaluate("() => window.rtdetect.rttMs")
            assert 0 < float(np.median(rtts)) < 1000, rtts
            assert server.state.peers.max_peers >= len(server.state.peers) == 1

            await page.click("#stop")
            await _wait(page, "() => window.rtdetect.status === 'idle'", 5_000, "the stop")
            await server.state.peers.wait_empty(10.0)
            assert not [line for line in console if "error" in line.lower()], console
        finally:
            await browser.close()


async def test_chromium_page_asks_for_the_key_once_and_streams_with_it(
    model_dir: Path, photos: dict[str, np.ndarray], tmp_path: Path
) -> None:
    """Auth on: the page asks for the key on the server's first 401, asks again for a wrong one, keeps the
    right one for the tab and sends it on every request (config, offer)."""
    chromium = require_chromium()
    from playwright import async_api as playwright_api

    from inference.apikeys import hash_key, new_key

    key = new_key()
    clip = photo_clip(tmp_path / "astronaut.y4m", photos["astronaut"])
    settings = loopback_settings(model_dir=model_dir, auth=True, api_key_hashes=[hash_key(key)])
    async with running_server(settings) as server, playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(**chromium_launch_options(fake_camera=clip, executable=chromium))
        try:
            page = await browser.new_page()
            await page.goto(server.url + "/")
            # The page's first request (GET config) got a 401: it asks for the key.
            await page.wait_for_selector("#auth", state="visible", timeout=10_000)
            await page.fill("#api-key", "rtd_not-the-key")
            await page.click("#auth button[type=submit]")
            await _wait(
                page,
                "() => !document.getElementById('auth').hidden && "
                "document.getElementById('auth-message').textContent.includes('not accepted')",
                10_000,
                "a second request for the key",
            )
            await page.fill("#api-key", key)
            await page.click("#auth button[type=submit]")
            await page.wait_for_selector("#auth", state="hidden", timeout=10_000)
            assert await page.evaluate("() => sessionStorage.getItem('rtdetect.apiKey')") == key

            await page.click("#start")
            await _wait(page, "() => window.rtdetect.status === 'connected'", 20_000, "the connection")
            first = await page.evaluate("() => window.rtdetect.framesPresented")
            await _wait(page, f"() => window.rtdetect.framesPresented >= {first} + 30", 20_000, "30 frames")
            await _wait(page, "() => window.rtdetect.results >= 10", 20_000, "detections on the data channel")
            assert await page.is_hidden("#auth")  # asked once: start sent the stored key
            assert len(server.state.peers) == 1

            # A reload in the same tab keeps the key: no new prompt, the config loads.
            await page.click("#stop")
            await server.state.peers.wait_empty(10.0)
            await page.reload(wait_until="networkidle")  # the config request has been answered
            assert await page.is_hidden("#auth")
            assert not await page.evaluate("() => window.rtdetect.keyRequested")
        finally:
            await browser.close()


async def test_a_page_on_another_site_cannot_start_a_stream(tmp_path: Path) -> None:
    """Real Chromium on a page of another origin (auth off, as `make run` serves): the "simple" text/plain
    POST the browser sends without asking is refused (415), the JSON one needs a CORS preflight the server
    never grants; no peer is created either way."""
    chromium = require_chromium()
    from aiohttp import web
    from aiortc import RTCConfiguration, RTCPeerConnection
    from aiortc.mediastreams import VideoStreamTrack
    from playwright import async_api as playwright_api

    from tests.media_support import LOOPBACK, FakeDetector

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTrack(VideoStreamTrack())
    pc.createDataChannel("detections")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp  # a valid offer: before the guards, the simple POST made a peer from it
    await pc.close()

    async def elsewhere(_: web.Request) -> web.Response:
        return web.Response(text="<html><body>elsewhere</body></html>", content_type="text/html")

    other_site = web.Application()
    other_site.router.add_get("/", elsewhere)
    runner = web.AppRunner(other_site)
    await runner.setup()
    site = web.TCPSite(runner, LOOPBACK, 0)
    await site.start()
    other_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with (
            running_server(loopback_settings(), FakeDetector()) as server,
            playwright_api.async_playwright() as pw,
        ):
            browser = await pw.chromium.launch(**chromium_launch_options(executable=chromium))
            try:
                page = await browser.new_page()
                await page.goto(f"http://{LOOPBACK}:{other_port}/")
                outcome = await page.evaluate(
                    """async ([target, sdp]) => {
                        const body = JSON.stringify({ sdp, type: "offer" });
                        const out = {};
                        try {
                          await fetch(target + "/offer", { method: "POST", mode: "no-cors",
                            headers: { "Content-Type": "text/plain" }, body });
                          out.simple = "sent";
                        } catch (e) { out.simple = "failed: " + e; }
                        try {
                          await fetch(target + "/offer", { method: "POST",
                            headers: { "Content-Type": "application/json" }, body });
                          out.json = "answered";
                        } catch (e) { out.json = "blocked"; }
                        return out;
                    }""",
                    [server.url, sdp],
                )
            finally:
                await browser.close()
            # The simple POST did reach the server (an opaque answer), and was refused there.
            assert outcome == {"simple": "sent", "json": "blocked"}, outcome
            assert len(server.state.peers) == 0  # it used to make one
            rejected = server.state.registry.get_sample_value(
                "rtdetect_live_offers_rejected_total", {"reason": "not_json"}
            )
            assert rejected == 1
    finally:
        await runner.cleanup()
