"""Zones and lines drawn on the video in real headless Chromium produce events from the real media server
and model: the fake camera plays a real photo of a person moving back and forth across the frame."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

from tests.browser import chromium_launch_options, require_chromium, write_y4m
from tests.media_support import loopback_settings, running_server
from tools.scenes import moving_person

pytestmark = pytest.mark.slow
FPS = 30


async def _wait(page: Any, expression: str, timeout_ms: float, what: str) -> Any:
    try:
        return await page.wait_for_function(expression, timeout=timeout_ms, polling=100)
    except Exception as e:  # Playwright's TimeoutError; say what the page saw
        seen = await page.evaluate(
            "() => ({status: window.rtdetect.status, error: window.rtdetect.error, results: "
            "window.rtdetect.results, zones: window.rtdetect.zonesAccepted, events: window.rtdetect.events})"
        )
        raise AssertionError(f"timed out waiting for {what}; page state {seen}") from e


async def test_zones_drawn_in_chromium_produce_events(model_dir: Path, tmp_path: Path) -> None:
    chromium = require_chromium()
    from playwright import async_api as playwright_api

    scene = moving_person(200.0)  # one back-and-forth in about 4.6 s; the clip loops seamlessly
    period = 2 * (scene.width - scene.sprites[0][0].size[0]) / 200.0  # tools.scenes.glide's period
    clip = write_y4m(
        tmp_path / "walk.y4m", (scene.render(i / FPS)[0] for i in range(round(period * FPS))), FPS
    )
    settings = loopback_settings(model_dir=model_dir)
    async with running_server(settings) as server, playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(**chromium_launch_options(fake_camera=clip, executable=chromium))
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            await page.goto(server.url + "/")
            await page.uncheck("#stamp")  # the clip's own pixels, no frame-number strip
            await page.click("#start")
            await _wait(page, "() => window.rtdetect.status === 'connected'", 20_000, "the connection")
            await _wait(page, "() => window.rtdetect.results > 0", 20_000, "results")
            canvas = page.locator("#zones")
            box = await canvas.bounding_box()
            assert box is not None
            # A line down the middle: two clicks.
            await page.select_option("#draw-mode", "line")
            await canvas.click(position={"x": box["width"] * 0.5, "y": box["height"] * 0.02})
            await canvas.click(position={"x": box["width"] * 0.5, "y": box["height"] * 0.98})
            # A zone over the left third: four corners, then "close zone".
            await page.select_option("#draw-mode", "zone")
            for x, y in ((0.0, 0.0), (0.33, 0.0), (0.33, 1.0), (0.0, 1.0)):
                await canvas.click(
                    position={"x": max(box["width"] * x, 1), "y": max(box["height"] * y - 1, 1)}
                )
            await page.click("#zone-close")
            await _wait(
                page,
                "() => window.rtdetect.zonesAccepted && window.rtdetect.zonesAccepted.zones.length === 1 "
                "&& window.rtdetect.zonesAccepted.lines.length === 1",
                10_000,
                "the server to accept the zone and the line",
            )
            await _wait(
                page,
                "() => ['in', 'out'].every(d => window.rtdetect.events.some(e => e.type === 'line_cross'"
                " && e.label === 'person' && e.direction === d))"
                " && window.rtdetect.events.some(e => e.type === 'zone_exit' && e.label === 'person')",
                40_000,
                "line crossings and a zone exit",
            )
            events = await page.evaluate("() => window.rtdetect.events")
            listed = await page.locator("#events li").all_text_contents()
        finally:
            await browser.close()
    # (The photo also holds a suitcase-like object the model sees at times: its events come too.)
    assert all(e["source"] == "peer" and e["name"] in ("line 1", "zone 1") for e in events)
    crossings = [e for e in events if e["type"] == "line_cross" and e["label"] == "person"]
    assert {e["direction"] for e in crossings} == {"in", "out"}
    for track_id in {e["track_id"] for e in events if e["name"] == "zone 1"}:
        zone = [e["type"] for e in events if e["name"] == "zone 1" and e["track_id"] == track_id]
        assert zone[0] == "zone_enter" and all(a != b for a, b in itertools.pairwise(zone)), zone
    assert any("crossed line 1" in text for text in listed)
