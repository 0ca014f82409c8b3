"""Screenshots of the UI for the README: docs/img/upload.png and docs/img/live.png.

Real pages against real backends: it starts the detect API, the media server (both with the real model)
and the Streamlit UI on free loopback ports, and drives Debian's Chromium (Playwright) with a fake camera
that plays a photo of a person. WebRTC stays on loopback: run as root and it re-runs itself in a
loopback-only network namespace, as `make test` does.

    .venv/bin/python scripts/screenshots.py [--model-dir DIR] [--out docs/img]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the server and browser helpers live in tests/

import cv2  # noqa: E402
from skimage import data  # noqa: E402

from inference.paths import default_model_dir  # noqa: E402
from tests.browser import chromium_launch_options, photo_clip  # noqa: E402
from tests.web_servers import LOOPBACK, detect_api, media_server, streamlit_ui  # noqa: E402

NETNS_FLAG = "RTDETECT_IN_NETNS"
VIEWPORT = {"width": 1400, "height": 900}


def in_loopback_namespace() -> None:
    """Re-run this script inside `unshare -n` (root only); elsewhere, carry on with a warning."""
    if os.environ.get(NETNS_FLAG) == "1" or shutil.which("unshare") is None:
        return
    if subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode != 0:
        print("!! cannot create a network namespace (need root): using the host's loopback", file=sys.stderr)
        return
    command = " ".join(["exec", sys.executable, *map(_quote, sys.argv)])
    env = {**os.environ, NETNS_FLAG: "1"}
    sys.exit(
        subprocess.run(["unshare", "-n", "sh", "-c", f"ip link set lo up && {command}"], env=env).returncode
    )


def _quote(arg: str) -> str:
    return "'" + arg.replace("'", "'\"'\"'") + "'"


def jpeg(image_rgb: object, path: Path) -> Path:
    cv2.imwrite(str(path), cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR))  # type: ignore[call-overload]
    return path


def upload_page(page: Any, ui_url: str, photos: list[Path], height: int = 1900) -> bytes:
    """The Streamlit upload page (a Playwright page) after the detect API answered for every photo: a PNG
    `height` pixels tall (Streamlit scrolls inside its main block, not the page: a tall viewport shows all)."""
    from playwright.sync_api import expect

    width = page.viewport_size["width"]
    page.goto(ui_url)  # the default page lives at the root
    page.locator('input[type="file"]').set_input_files([str(p) for p in photos])
    expect(page.locator('[data-testid="stImage"]')).to_have_count(len(photos), timeout=60_000)
    expect(page.get_by_text("Backend timings:")).to_have_count(len(photos), timeout=30_000)
    page.wait_for_load_state("networkidle")
    previous = page.viewport_size
    page.set_viewport_size({"width": width, "height": height})
    try:
        png: bytes = page.screenshot()
    finally:
        page.set_viewport_size(previous)
    return png


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model-dir", type=Path, default=Path(os.environ.get("RTDETECT_MODEL_DIR", default_model_dir()))
    )
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    args = parser.parse_args()
    in_loopback_namespace()

    from playwright.sync_api import expect, sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rtdetect-shots-") as tmp_name:
        tmp = Path(tmp_name)
        photos = [jpeg(data.astronaut(), tmp / "astronaut.jpg"), jpeg(data.coffee(), tmp / "coffee.jpg")]
        clip = photo_clip(tmp / "camera.y4m", cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
        with (
            detect_api(args.model_dir, tmp) as api_url,
            media_server(args.model_dir, tmp) as media_url,
            streamlit_ui(
                tmp,
                {
                    "RTDETECT_UI_DETECT_API_URL": api_url,
                    "RTDETECT_UI_MEDIA_SERVER_URL": media_url,
                    "RTDETECT_UI_ICE_HOST_ADDRESSES": LOOPBACK,
                },
            ) as ui_url,
            sync_playwright() as pw,
        ):
            browser = pw.chromium.launch(**chromium_launch_options(fake_camera=clip))
            try:
                page = browser.new_page(viewport=VIEWPORT)
                (args.out / "upload.png").write_bytes(upload_page(page, ui_url, photos))
                print(f"wrote {args.out / 'upload.png'}")

                page.goto(f"{ui_url}/live")
                page.frame_locator('iframe[title*="webrtc_streamer"]').get_by_role(
                    "button", name="START"
                ).click(timeout=60_000)
                expect(page.locator("table").filter(has_text="person")).to_be_visible(timeout=60_000)
                # Let the rates settle over their two-second window before the picture.
                page.wait_for_timeout(3_000)
                page.screenshot(path=str(args.out / "live.png"))
                print(f"wrote {args.out / 'live.png'}")
            finally:
                browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
