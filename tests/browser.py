"""Real headless Chromium for tests: launch options (flags from ENVIRONMENT.md) and a fake camera clip.

Drives Debian's /usr/bin/chromium through Python Playwright (never `playwright install`). Works with the
sync and the async Playwright API alike:

    with sync_playwright() as p:
        browser = p.chromium.launch(**chromium_launch_options(fake_camera=clip))

Tests that need a browser call `require_chromium()` first: it skips, with the reason, where Chromium or
Playwright is missing on a developer's machine, and fails in CI, where `make test` has installed both and a
skip would hide a broken install.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

CHROMIUM = "/usr/bin/chromium"

# What worked on these machines for a WebRTC round trip with an aiortc peer on loopback.
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream=fps=30",
    "--allow-loopback-in-peer-connection",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--autoplay-policy=no-user-gesture-required",
)


def require_chromium() -> str:
    """The Chromium binary; without it (or Playwright) a skip with its reason, or a failure in CI."""
    missing = None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing = "Python Playwright is not installed (pip install -e .[dev])"
    path = shutil.which("chromium") or (CHROMIUM if Path(CHROMIUM).exists() else None)
    if path is None:
        missing = "Chromium is not installed (apt-get install chromium chromium-driver)"
    if missing is not None:
        if os.environ.get("CI"):
            pytest.fail(missing)
        pytest.skip(missing)
    assert path is not None
    return path


def chromium_launch_options(*, fake_camera: Path | None = None, executable: str = CHROMIUM) -> dict[str, Any]:
    """Keyword arguments for Playwright's `chromium.launch`: headless, fake camera, loopback WebRTC.

    `fake_camera` is a .y4m clip that the fake camera plays in a loop (see `write_y4m`); without it Chromium
    shows its own moving test pattern.
    """
    args = list(CHROMIUM_ARGS)
    if fake_camera is not None:
        args.append(f"--use-file-for-fake-video-capture={fake_camera}")
    return {"executable_path": executable, "headless": True, "args": args}


def write_y4m(path: Path, frames: Iterable[np.ndarray], fps: int = 30) -> Path:
    """Write HxWx3 uint8 BGR frames (all one even size) as a YUV4MPEG2 clip, 4:2:0, for the fake camera."""
    with path.open("wb") as out:
        header_written = False
        for image in frames:
            h, w = image.shape[:2]
            if w % 2 or h % 2:
                raise ValueError(f"4:2:0 needs an even frame size, got {w}x{h}")
            if not header_written:
                out.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode("ascii"))
                header_written = True
            # cv2's I420 is the Y plane, then U, then V: exactly a y4m frame's payload.
            out.write(b"FRAME\n")
            out.write(cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420).tobytes())
        if not header_written:
            raise ValueError("no frames")
    return path


def photo_clip(
    path: Path, photo_bgr: np.ndarray, size: tuple[int, int] = (640, 480), frames: int = 30
) -> Path:
    """A still photo as a camera clip of `frames` frames at `size` (width, height)."""
    image = cv2.resize(photo_bgr, size, interpolation=cv2.INTER_AREA)
    return write_y4m(path, (image for _ in range(frames)))
