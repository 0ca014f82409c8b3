"""The live page in real headless Chromium: a fake camera plays a clip of a person, the page streams it
through the Streamlit server's relay to the real media server (real model), and the video that comes back
has the person's box drawn on it."""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import pytest
import requests

from tests.browser import chromium_launch_options, photo_clip, require_chromium
from tests.web_servers import LOOPBACK, media_server, streamlit_ui
from tools.servers import tail

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.slow

CLIP_SIZE = (640, 480)
GRAB_VIDEO_FRAME = """() => {
    const video = document.querySelector('video');
    if (!video || video.videoWidth === 0) return null;
    const canvas = document.createElement('canvas');
    canvas.width = video.videoWidth;
    canvas.height = video.videoHeight;
    canvas.getContext('2d').drawImage(video, 0, 0);
    return canvas.toDataURL('image/png');
}"""


@dataclass(frozen=True)
class LiveStack:
    media_url: str
    ui_url: str
    logs: Path


@pytest.fixture(scope="module")
def live_stack(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    """The media server and the UI, both real, on loopback, as `make run` starts them."""
    require_chromium()
    logs = tmp_path_factory.mktemp("live-logs")
    with media_server(model_dir, logs) as media_url:
        env = {
            "RTDETECT_UI_MEDIA_SERVER_URL": media_url,
            "RTDETECT_UI_ICE_HOST_ADDRESSES": LOOPBACK,
            "RTDETECT_UI_ICE_SERVERS": "[]",
        }
        with streamlit_ui(logs, env) as ui_url:
            yield LiveStack(media_url, ui_url, logs)


@contextmanager
def explained_failure(page: Page, stack: LiveStack, out: Path) -> Iterator[None]:
    """On a failed assertion: a screenshot and the servers' logs, in the failure message."""
    try:
        yield
    except AssertionError as e:
        page.screenshot(path=str(out / "failure.png"), full_page=True)
        logs = "\n".join(f"--- {p.name}\n{tail(p, 30)}" for p in sorted(stack.logs.glob("*.log")))
        raise AssertionError(f"{e}\n(screenshot: {out / 'failure.png'})\n{logs}") from e


def red_mask(image_bgr: np.ndarray) -> np.ndarray:
    """Pixels in the colour the servers draw class 0 (person) with: saturated red."""
    b, g, r = (image_bgr[..., i].astype(int) for i in range(3))
    return (r > 150) & (r - g > 80) & (r - b > 80)


def box_edges_drawn(image_bgr: np.ndarray, box: tuple[float, float, float, float], band: int = 4) -> float:
    """The share of the box's left, top and right edges that have a red pixel within `band` px (the least
    of the three): about 1 where the box is drawn."""
    mask = red_mask(image_bgr)
    x1, y1, x2, y2 = (round(v) for v in box)
    rows = range(y1 + 40, y2 - 40)
    cols = range(x1 + 40, x2 - 40)
    left = np.mean([mask[y, max(0, x1 - band) : x1 + band + 1].any() for y in rows])
    right = np.mean([mask[y, max(0, x2 - band) : x2 + band + 1].any() for y in rows])
    top = np.mean([mask[max(0, y1 - band) : y1 + band + 1, x].any() for x in cols])
    return float(min(left, right, top))


TABLE_ROWS = """table => Array.from(table.querySelectorAll('tr'), tr =>
    Array.from(tr.querySelectorAll('th, td'), cell => cell.innerText.trim()))"""


def person_box(rows: list[list[str]]) -> tuple[float, float, float, float] | None:
    """The box of the first `person` row of the live table (label, score, x1, y1, x2, y2)."""
    for cells in rows:
        if "person" in cells:
            x1, y1, x2, y2 = (float(c) for c in cells[-4:])
            return x1, y1, x2, y2
    return None


def test_live_page_shows_the_person_boxed_by_the_media_server(
    live_stack: LiveStack, photos: dict[str, np.ndarray], tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    media_url, ui_url = live_stack.media_url, live_stack.ui_url
    clip = photo_clip(tmp_path / "astronaut.y4m", photos["astronaut"], CLIP_SIZE)
    source = cv2.resize(photos["astronaut"], CLIP_SIZE, interpolation=cv2.INTER_AREA)

    with sync_playwright() as p:
        browser = p.chromium.launch(**chromium_launch_options(fake_camera=clip))
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            with explained_failure(page, live_stack, tmp_path):
                run_live_session(page, media_url, ui_url, source, tmp_path)
        finally:
            browser.close()


def run_live_session(page: Page, media_url: str, ui_url: str, source: np.ndarray, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    page.goto(f"{ui_url}/live")
    component = page.frame_locator('iframe[title*="webrtc_streamer"]')
    component.get_by_role("button", name="START").click(timeout=60_000)

    # Detections reach the page over the relay's data channel.
    table = page.locator("table").filter(has_text="person")
    expect(table).to_be_visible(timeout=60_000)
    caption = page.get_by_text(re.compile(r"Latest detections in a \d+x\d+ frame")).inner_text()
    frame_w, frame_h = map(int, re.search(r"(\d+)x(\d+)", caption).groups())  # type: ignore[union-attr]
    rows = table.evaluate(TABLE_ROWS)
    box = person_box(rows)
    assert box is not None, rows
    # The model finds the astronaut (about [14,14,364,507] in the 512x512 photo).
    assert box[2] - box[0] > 0.5 * frame_w and box[3] - box[1] > 0.7 * frame_h

    # The video the browser plays is the media server's: the box is drawn where it was detected.
    webrtc = next(f for f in page.frames if "webrtc_streamer" in f.url)
    drawn, image = 0.0, None
    deadline = time.monotonic() + 20
    while drawn < 0.8 and time.monotonic() < deadline:
        data_url = webrtc.evaluate(GRAB_VIDEO_FRAME)
        if data_url:
            png = np.frombuffer(base64.b64decode(data_url.split(",", 1)[1]), np.uint8)
            image = cv2.imdecode(png, cv2.IMREAD_COLOR)
            sx, sy = image.shape[1] / frame_w, image.shape[0] / frame_h
            scaled = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
            drawn = box_edges_drawn(image, scaled)
        else:
            page.wait_for_timeout(200)
    assert image is not None, "the video never played"
    cv2.imwrite(str(tmp_path / "returned.png"), image)
    assert drawn >= 0.8, f"box edges drawn on {drawn:.0%} of their length (frame in {tmp_path})"
    # Control: the camera's own picture has no such red outline there.
    assert box_edges_drawn(source, box) < 0.5

    # Stats from the data channel are on the page, and no error.
    expect(page.get_by_text("Video FPS")).to_be_visible()
    assert page.locator('[data-testid="stAlertContentError"]').count() == 0

    # STOP ends the session on the media server too (the relay closes its peer connection).
    [first] = peers(media_url)
    component.get_by_role("button", name="STOP").click()
    wait_until(page, lambda: not peers(media_url), 15, "the media server to drop the relay's peer after STOP")
    expect(page.get_by_text("Press START")).to_be_visible(timeout=15_000)

    # START again: a new relay, a new peer on the media server, detections again.
    component.get_by_role("button", name="START").click()
    wait_until(page, lambda: len(peers(media_url)) == 1, 30, "a new peer after the second START")
    [second] = peers(media_url)
    assert second["peer_id"] != first["peer_id"]
    wait_until(page, lambda: peers(media_url)[0]["frames_inferred"] > 0, 30, "frames from the second session")
    expect(page.locator("table").filter(has_text="person")).to_be_visible(timeout=60_000)


def peers(media_url: str) -> list[dict[str, Any]]:
    body: dict[str, list[dict[str, Any]]] = requests.get(f"{media_url}/peers", timeout=5).json()
    return body["peers"]


def wait_until(page: Page, condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for {what}"
        page.wait_for_timeout(200)
