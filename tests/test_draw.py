from __future__ import annotations

import numpy as np
import pytest

from inference.draw import class_colour, draw_detections
from inference.errors import InvalidImageError
from inference.types import Detection


def det(class_id: int, box: tuple[float, float, float, float], score: float = 0.87) -> Detection:
    return Detection(class_id=class_id, label=f"class{class_id}", score=score, box=box)


def test_draws_box_outline_and_tag_in_class_colour() -> None:
    image = np.zeros((480, 640, 3), np.uint8)
    out = draw_detections(image, [det(3, (100, 200, 300, 400))])
    assert out is not image and not image.any()  # the input is untouched
    colour = np.array(class_colour(3))
    assert (out[300, 100] == colour).all() and (out[300, 300] == colour).all()  # left and right edges
    assert (out[400, 200] == colour).all()  # bottom edge
    assert not out[300, 200].any()  # inside the box stays clear
    # The filled tag sits just above the box, starting at its left edge, with legible text on it.
    painted = (out == colour).all(axis=2)
    rows = np.nonzero(painted[:199, 100:300].any(axis=1))[0]
    assert 160 < rows.min() < 190  # a tag 10 to 40 px tall
    tag = out[rows.min() : 199, 100:150]
    assert (tag == colour).all(axis=2).mean() > 0.5
    text = (tag != colour).any(axis=2)
    assert text.any()  # the label's glyphs, in a contrasting colour
    assert not out[: rows.min()].any()  # nothing above the tag


def test_tag_moves_inside_when_the_box_touches_the_top() -> None:
    out = draw_detections(np.zeros((200, 200, 3), np.uint8), [det(0, (10, 0, 150, 150))])
    colour = np.array(class_colour(0))
    painted = (out == colour).all(axis=2)
    rows = np.nonzero(painted[:100, 12:40].mean(axis=1) > 0.5)[0]
    assert rows.min() == 0 and 8 < rows.max() < 30  # a tag from the top edge down, inside the box


def test_inplace_draws_into_the_given_array() -> None:
    image = np.zeros((100, 100, 3), np.uint8)
    out = draw_detections(image, [det(1, (10, 20, 60, 80))], inplace=True)
    assert out is image and image.any()
    # Padded rows (a video frame's linesize) are fine; reversed or strided pixels are not.
    padded = np.zeros((100, 128, 3), np.uint8)[:, :100]
    draw_detections(padded, [det(1, (10, 20, 60, 80))], inplace=True)
    assert padded.any()
    with pytest.raises(ValueError):
        draw_detections(np.zeros((100, 100, 3), np.uint8)[:, ::-1], [], inplace=True)
    readonly = np.zeros((10, 10, 3), np.uint8)
    readonly.flags.writeable = False
    with pytest.raises(ValueError):
        draw_detections(readonly, [], inplace=True)


def test_colours_are_stable_and_distinct() -> None:
    assert class_colour(5) == class_colour(5)
    colours = {class_colour(i) for i in range(80)}
    assert len(colours) == 80
    assert all(all(0 <= c <= 255 for c in colour) for colour in colours)


def test_line_thickness_scales_with_image_size() -> None:
    def stroke(size: int) -> int:
        image = np.zeros((size, size, 3), np.uint8)
        mid = size // 2
        out = draw_detections(image, [det(2, (size / 4, size / 4, 3 * size / 4, 3 * size / 4))])
        return int(out[mid, : size // 2].any(axis=1).sum())  # lit pixels across the left edge

    assert stroke(2000) > stroke(300) >= 1


def test_boxes_outside_the_image_and_no_detections() -> None:
    image = np.zeros((50, 60, 3), np.uint8)
    out = draw_detections(image, [det(1, (-100, -100, 1000, 1000)), det(2, (55, 45, 59, 49), 0.5)])
    assert out.shape == image.shape
    assert not draw_detections(image, []).any()


def test_rejects_non_bgr_images() -> None:
    with pytest.raises(InvalidImageError):
        draw_detections(np.zeros((10, 10), np.uint8), [])
