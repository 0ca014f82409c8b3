"""Greedy non-maximum suppression in pure numpy (no torchvision at serving time)."""

from __future__ import annotations

import numpy as np


def _as_boxes(boxes: np.ndarray) -> np.ndarray:
    # float64: batched_nms shifts boxes by large per-class offsets, which float32 would round.
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"boxes must be [K, 4] x1, y1, x2, y2, got {arr.shape}")
    return arr


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices of the boxes kept, highest score first; a box goes when its IoU with a kept one exceeds the
    threshold. Each round computes the IoU of the best remaining box against all others in one vector op."""
    boxes = _as_boxes(boxes)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if scores.shape[0] != boxes.shape[0]:
        raise ValueError(f"{boxes.shape[0]} boxes but {scores.shape[0]} scores")
    if boxes.shape[0] == 0:
        return np.empty(0, dtype=np.int64)

    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = np.clip(x2 - x1, 0.0, None) * np.clip(y2 - y1, 0.0, None)
    order = np.argsort(-scores, kind="stable")  # stable: equal scores keep their input order
    keep: list[int] = []
    while order.size > 0:
        best = int(order[0])
        keep.append(best)
        rest = order[1:]
        inter_w = np.clip(np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]), 0.0, None)
        inter_h = np.clip(np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]), 0.0, None)
        inter = inter_w * inter_h
        union = areas[best] + areas[rest] - inter
        # Degenerate (zero-area) pairs have union 0: treat their IoU as 0 rather than dividing by zero.
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def batched_nms(
    boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, iou_threshold: float
) -> np.ndarray:
    """Class-aware NMS: boxes of different classes never suppress each other.

    Shifts each class's boxes by its own offset larger than every coordinate, so one `nms` call over all
    boxes cannot make boxes of different classes overlap.
    """
    boxes = _as_boxes(boxes)
    class_ids = np.asarray(class_ids).reshape(-1)
    if class_ids.shape[0] != boxes.shape[0]:
        raise ValueError(f"{boxes.shape[0]} boxes but {class_ids.shape[0]} class ids")
    if boxes.shape[0] == 0:
        return np.empty(0, dtype=np.int64)
    shifted = boxes.copy()
    span = float(shifted.max() - min(float(shifted.min()), 0.0)) + 1.0
    shifted += (class_ids.astype(np.float64) * span)[:, None]
    return nms(shifted, scores, iou_threshold)
