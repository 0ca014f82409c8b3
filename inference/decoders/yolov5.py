"""YOLOv5-style exports: one output [N, A, 5 + C]; per anchor cx, cy, w, h (input pixels), objectness, then
C class scores. A class's score is objectness x class score; class-aware NMS follows. YOLOX shares this
layout (see yolox.py) and this module's `decode_objectness`."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from inference.decoders import (
    allowed_classes,
    best_class,
    cxcywh_to_xyxy,
    finalize,
    get_output,
    sigmoid,
    top_candidates,
)
from inference.errors import InferenceError
from inference.preprocess import Transform
from inference.spec import ModelSpec, YoloV5DecoderSpec
from inference.types import Detection, DetectParams

# [K, 4] raw box rows of the candidate anchors [K] -> [K, 4] cx, cy, w, h in input pixels.
BoxFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def decode_objectness(
    out: np.ndarray,
    transforms: Sequence[Transform],
    params: DetectParams,
    spec: ModelSpec,
    *,
    family: str,
    scores_are_logits: bool = False,
    box_fn: BoxFn | None = None,
) -> list[tuple[Detection, ...]]:
    """[N, A, 5 + C] objectness x class outputs -> detections per image."""
    if out.ndim != 3 or out.shape[2] <= 5:
        raise InferenceError(f"{family} output has shape {out.shape}, not [N, A, 5 + C]")
    allowed = allowed_classes(params, out.shape[2] - 5)
    results: list[tuple[Detection, ...]] = []
    for i, transform in enumerate(transforms):
        pred = out[i]  # [A, 5 + C]
        obj = pred[:, 4].astype(np.float32)
        cls = pred[:, 5:]
        if scores_are_logits:
            obj, cls = sigmoid(obj), sigmoid(cls)
        # No anchor scores above its objectness: skip the [A, C] product for anchors that cannot pass.
        live = np.flatnonzero(obj >= params.score_threshold)
        best, class_ids = best_class(cls[live] * obj[live, None], allowed)
        cand = top_candidates(best, params.score_threshold)
        anchors = live[cand]
        if anchors.size == 0:
            results.append(())
            continue
        rows = pred[anchors, :4].astype(np.float32)
        cxcywh = box_fn(rows, anchors) if box_fn is not None else rows
        boxes = cxcywh_to_xyxy(cxcywh[:, 0], cxcywh[:, 1], cxcywh[:, 2], cxcywh[:, 3])
        results.append(finalize(boxes, best[cand], class_ids[cand], transform, params, spec.class_names))
    return results


class YoloV5Decoder:
    def __init__(self, spec: ModelSpec) -> None:
        if not isinstance(spec.decoder, YoloV5DecoderSpec):
            raise TypeError(f"YoloV5Decoder needs a yolov5 decoder spec, got {spec.decoder.type!r}")
        self._spec = spec
        self._dec = spec.decoder

    def decode(
        self, outputs: dict[str, np.ndarray], transforms: Sequence[Transform], params: DetectParams
    ) -> list[tuple[Detection, ...]]:
        out = get_output(outputs, self._dec.output, len(transforms))
        return decode_objectness(
            out,
            transforms,
            params,
            self._spec,
            family="yolov5",
            scores_are_logits=self._dec.scores_are_logits,
        )
