"""Per-detection sprites: moved boxes look like boxes drawn where they moved to."""

from __future__ import annotations

import dataclasses

import numpy as np
from av import VideoFrame

from inference.types import Detection
from media_server.frames import i420_array
from media_server.overlay import render_overlay, render_sprites


def _frame() -> VideoFrame:
    rng = np.random.default_rng(0)
    i420 = rng.integers(40, 200, (480 * 3 // 2, 640), dtype=np.uint8)
    frame = VideoFrame.from_ndarray(i420, format="yuv420p")
    frame.pts = 3000
    return frame


def test_sprites_without_offsets_are_the_overlay_and_moved_ones_match_a_redraw() -> None:
    a = Detection(0, "person", 0.9, (100.0, 120.0, 260.0, 400.0), 3)
    b = Detection(2, "car", 0.8, (400.0, 200.0, 600.0, 300.0), 7)
    frame = _frame()
    sprites = render_sprites([a, b], 640, 480)
    still = i420_array(sprites.apply(frame))
    assert np.array_equal(still, i420_array(render_overlay([a, b], 640, 480).apply(frame)))
    moved = sprites.apply(frame, [(40, -20), (0, 0)])
    assert moved.pts == 3000
    shifted = dataclasses.replace(a, box=(140.0, 100.0, 300.0, 380.0))
    redraw = i420_array(render_overlay([shifted, b], 640, 480).apply(frame))
    got = i420_array(moved)
    luma = slice(0, 480)
    changed = (redraw[luma] != i420_array(frame)[luma]) | (got[luma] != i420_array(frame)[luma])
    agree = (got[luma] == redraw[luma])[changed].mean()
    assert changed.sum() > 1000 and agree > 0.97, agree
