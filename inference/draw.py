"""Draw detections onto a BGR image with cv2: boxes, "label 0.87" (tracked: "label 3 (0.87)") on a filled
tag, one colour per class."""

from __future__ import annotations

import colorsys
from collections.abc import Iterable
from functools import lru_cache

import cv2
import numpy as np

from inference.preprocess import validate_image
from inference.types import Detection

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_GOLDEN = 0.618033988749895


@lru_cache(maxsize=1024)
def class_colour(class_id: int) -> tuple[int, int, int]:
    """A stable BGR colour per class: golden-ratio hue steps keep neighbouring ids far apart."""
    hue = (class_id * _GOLDEN) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(b * 255), int(g * 255), int(r * 255)


def _text_colour(bg: tuple[int, int, int]) -> tuple[int, int, int]:
    b, g, r = bg
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)


def draw_detections(
    image: np.ndarray, detections: Iterable[Detection], *, inplace: bool = False
) -> np.ndarray:
    """Boxes and score tags on `image` (HxWx3 uint8 BGR); a copy unless `inplace`."""
    validate_image(image)
    # cv2 draws into the buffer itself: rows may be padded (e.g. a video frame's linesize), but pixels
    # within a row must be packed and in order.
    if inplace and not (image.flags.writeable and image.strides[1:] == (3, 1) and image.strides[0] > 0):
        raise ValueError("inplace drawing needs a writeable image whose rows are packed BGR pixels")
    canvas = image if inplace else image.copy(order="C")
    h, w = canvas.shape[:2]
    # Scale strokes and text with the image so they stay legible on 4K and unobtrusive on 320x240.
    thickness = max(1, round(min(h, w) / 320))
    font_scale = max(0.35, min(h, w) / 1000)
    font_thickness = max(1, thickness - 1)
    for det in detections:
        colour = class_colour(det.class_id)
        x1, y1, x2, y2 = (round(v) for v in det.box)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, thickness, cv2.LINE_AA)
        # A tracked object's id is what people read first ("person 3"); the score follows.
        text = (
            f"{det.label} {det.score:.2f}"
            if det.track_id is None
            else f"{det.label} {det.track_id} ({det.score:.2f})"
        )
        (tw, th), baseline = cv2.getTextSize(text, _FONT, font_scale, font_thickness)
        tag_h = th + baseline + 2 * thickness
        # Tag above the box, or just inside its top edge when the box touches the top of the image.
        top = y1 - tag_h if y1 - tag_h >= 0 else y1
        left = min(max(x1, 0), max(w - tw - 2 * thickness, 0))
        cv2.rectangle(canvas, (left, top), (left + tw + 2 * thickness, top + tag_h), colour, cv2.FILLED)
        cv2.putText(
            canvas,
            text,
            (left + thickness, top + th + thickness),
            _FONT,
            font_scale,
            _text_colour(colour),
            font_thickness,
            cv2.LINE_AA,
        )
    return canvas
