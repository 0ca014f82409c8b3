"""How close a reduced-precision engine's detections are to the FP32 reference's, on the same photos.

The FP32 ONNX Runtime detections above GT_THRESHOLD are the ground truth; the candidate's detections down
to PRED_THRESHOLD are the predictions. Why those two thresholds: the truth is what serving would show
(its default threshold is 0.35), while the low prediction threshold keeps a box whose score merely slid
from 0.31 to 0.29 from counting as a miss. Extra low-score boxes rank below every real match, so they cost
nothing unless they outrank one: the FP32 reference scores exactly 1.0 against itself. The score is COCO
mAP@0.5:0.95 (pycocotools, the reference implementation) and recall at IoU 0.5 over all reference boxes.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from inference.types import Detection

GT_THRESHOLD = 0.3
PRED_THRESHOLD = 0.05


@dataclass(frozen=True, slots=True)
class ImageDetections:
    """One image's detections: boxes [K, 4] x1, y1, x2, y2 in its pixels, scores [K], class ids [K]."""

    width: int
    height: int
    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    @classmethod
    def from_detections(cls, width: int, height: int, detections: Sequence[Detection]) -> ImageDetections:
        return cls(
            width=width,
            height=height,
            boxes=np.asarray([d.box for d in detections], dtype=np.float64).reshape(-1, 4),
            scores=np.asarray([d.score for d in detections], dtype=np.float64),
            classes=np.asarray([d.class_id for d in detections], dtype=np.int64),
        )

    def above(self, threshold: float) -> ImageDetections:
        keep = self.scores >= threshold
        return ImageDetections(
            self.width, self.height, self.boxes[keep], self.scores[keep], self.classes[keep]
        )


@dataclass(frozen=True, slots=True)
class Score:
    map: float  # mAP@0.5:0.95
    recall50: float  # share of reference boxes matched (same class, IoU >= 0.5)
    reference_boxes: int
    images: int


def _xywh(boxes: np.ndarray) -> np.ndarray:
    out = boxes.astype(np.float64).copy()
    out[:, 2:] -= out[:, :2]
    return out


def score(
    reference: Sequence[ImageDetections],
    predicted: Sequence[ImageDetections],
    *,
    gt_threshold: float = GT_THRESHOLD,
    pred_threshold: float = PRED_THRESHOLD,
) -> Score:
    """Score `predicted` against `reference` (same images, same order)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if len(reference) != len(predicted):
        raise ValueError(f"{len(reference)} reference images but {len(predicted)} predicted")
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    categories: set[int] = set()
    for image_id, (ref, pred) in enumerate(zip(reference, predicted, strict=True), start=1):
        images.append({"id": image_id, "width": ref.width, "height": ref.height})
        truth = ref.above(gt_threshold)
        for box, cls in zip(_xywh(truth.boxes), truth.classes, strict=True):
            categories.add(int(cls) + 1)
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": int(cls) + 1,
                "bbox": [float(v) for v in box], "area": float(box[2] * box[3]), "iscrowd": 0,
            })  # fmt: skip
        guess = pred.above(pred_threshold)
        for box, s, cls in zip(_xywh(guess.boxes), guess.scores, guess.classes, strict=True):
            categories.add(int(cls) + 1)
            results.append({"image_id": image_id, "category_id": int(cls) + 1,
                            "bbox": [float(v) for v in box], "score": float(s)})  # fmt: skip
    if not annotations:
        raise ValueError(f"the reference has no detection above {gt_threshold}: nothing to score against")
    if not results:
        return Score(map=0.0, recall50=0.0, reference_boxes=len(annotations), images=len(images))

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress and its summary table
        gt = COCO()
        gt.dataset = {"images": images, "annotations": annotations,
                      "categories": [{"id": c} for c in sorted(categories)]}  # fmt: skip
        gt.createIndex()
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    mean_ap = max(0.0, float(ev.stats[0]))  # -1 means no ground truth in any category

    # Recall at IoU 0.5 over boxes (not averaged per class): from COCO's own matching at the largest
    # maxDets and the "all" area range.
    all_area = ev.params.areaRng[0]
    matched = total = 0
    for e in ev.evalImgs:
        if e is None or e["aRng"] != all_area:
            continue
        counted = ~np.asarray(e["gtIgnore"], dtype=bool)
        total += int(counted.sum())
        matched += int((np.asarray(e["gtMatches"])[0] > 0)[counted].sum())
    return Score(
        map=mean_ap,
        recall50=matched / total if total else 0.0,
        reference_boxes=len(annotations),
        images=len(images),
    )
