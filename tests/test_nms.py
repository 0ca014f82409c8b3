from __future__ import annotations

import numpy as np
import pytest

from inference.nms import batched_nms, nms


def iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def reference_nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, classes: np.ndarray | None = None):
    """Textbook greedy NMS, one pair at a time."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    keep: list[int] = []
    for i in order:
        if all(
            (classes is not None and classes[i] != classes[k]) or iou(boxes[i], boxes[k]) <= threshold
            for k in keep
        ):
            keep.append(i)
    return keep


def test_suppresses_overlaps_and_orders_by_score() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [0, 0, 10, 10.5]], np.float32)
    scores = np.array([0.5, 0.9, 0.7, 0.3], np.float32)
    keep = nms(boxes, scores, 0.5)
    assert keep.tolist() == [1, 2]
    assert keep.dtype == np.int64


def test_threshold_is_exclusive_at_the_iou() -> None:
    boxes = np.array([[0, 0, 10, 10], [5, 0, 15, 10]], np.float32)  # IoU exactly 1/3
    scores = np.array([0.9, 0.8])
    assert nms(boxes, scores, 0.33).tolist() == [0]
    assert nms(boxes, scores, 0.34).tolist() == [0, 1]


def test_empty_and_degenerate() -> None:
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).tolist() == []
    assert batched_nms(np.zeros((0, 4)), np.zeros(0), np.zeros(0, int), 0.5).tolist() == []
    # Zero-area boxes have no IoU with anything (no NaN, nothing suppressed).
    boxes = np.array([[5, 5, 5, 5], [5, 5, 5, 5], [0, 0, 10, 10]], np.float32)
    assert sorted(nms(boxes, np.array([0.9, 0.8, 0.7]), 0.1).tolist()) == [0, 1, 2]


def test_shape_errors() -> None:
    with pytest.raises(ValueError):
        nms(np.zeros((3, 5)), np.zeros(3), 0.5)
    with pytest.raises(ValueError):
        nms(np.zeros((3, 4)), np.zeros(2), 0.5)
    with pytest.raises(ValueError):
        batched_nms(np.zeros((3, 4)), np.zeros(3), np.zeros(2), 0.5)


def test_batched_nms_is_class_aware() -> None:
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [1, 1, 10, 10], [100, 100, 120, 130]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    classes = np.array([0, 1, 0, 1])
    assert batched_nms(boxes, scores, classes, 0.5).tolist() == [0, 1, 3]
    # Same boxes, one class: the duplicates go.
    assert batched_nms(boxes, scores, np.zeros(4, int), 0.5).tolist() == [0, 3]


def test_batched_offsets_cover_negative_coordinates() -> None:
    # An offset of class_id * max(coordinate) would shift class 1 only by 10 here and leave the two boxes
    # overlapping (IoU 0.53); the offset must span the whole coordinate range.
    boxes = np.array([[-50, -50, 10, 10], [-50, -50, 10, 10]], np.float32)
    assert batched_nms(boxes, np.array([0.9, 0.8]), np.array([0, 1]), 0.3).tolist() == [0, 1]


@pytest.mark.parametrize("seed", range(20))
def test_matches_reference_on_random_boxes(seed: int) -> None:
    rng = np.random.default_rng(seed)
    k = 60
    xy = rng.uniform(0, 200, (k, 2))
    wh = rng.uniform(5, 80, (k, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
    scores = rng.permutation(k).astype(np.float32) / k  # distinct scores: a unique correct order
    classes = rng.integers(0, 3, k)
    threshold = float(rng.uniform(0.2, 0.7))
    assert nms(boxes, scores, threshold).tolist() == reference_nms(boxes, scores, threshold)
    assert batched_nms(boxes, scores, classes, threshold).tolist() == reference_nms(
        boxes, scores, threshold, classes
    )
