"""DETR family (RT-DETR, D-FINE, DEIM, RF-DETR, ...): boxes [N, Q, 4] as cx, cy, w, h normalised to the
input size, and class logits [N, Q, C] scored with a sigmoid (these models train with focal / varifocal
losses, one sigmoid per class, no background class).

Like RT-DETR's own post-processor, the best query x class pairs are taken over all Q * C of them (one query
may yield several classes), at most params.max_detections; the set prediction needs no NMS.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from inference.decoders import allowed_classes, cxcywh_to_xyxy, finalize, get_output, sigmoid
from inference.errors import InferenceError
from inference.preprocess import Transform
from inference.spec import DetrDecoderSpec, ModelSpec
from inference.types import Detection, DetectParams


class DetrDecoder:
    def __init__(self, spec: ModelSpec) -> None:
        if not isinstance(spec.decoder, DetrDecoderSpec):
            raise TypeError(f"DetrDecoder needs a detr decoder spec, got {spec.decoder.type!r}")
        self._spec = spec
        self._dec = spec.decoder

    def decode(
        self, outputs: dict[str, np.ndarray], transforms: Sequence[Transform], params: DetectParams
    ) -> list[tuple[Detection, ...]]:
        n = len(transforms)
        boxes = get_output(outputs, self._dec.boxes_output, n)
        logits = get_output(outputs, self._dec.logits_output, n)
        if boxes.ndim != 3 or boxes.shape[2] != 4 or logits.ndim != 3 or logits.shape[1] != boxes.shape[1]:
            raise InferenceError(
                f"detr outputs boxes {boxes.shape} and logits {logits.shape} are not [N, Q, 4] and [N, Q, C]"
            )
        num_classes = logits.shape[2]
        allowed = allowed_classes(params, num_classes)
        size = np.array([self._spec.input_width, self._spec.input_height] * 2, dtype=np.float32)
        results: list[tuple[Detection, ...]] = []
        for i, transform in enumerate(transforms):
            scores = logits[i].astype(np.float32)
            if allowed is not None:
                scores = scores[:, allowed]
            if scores.shape[1] == 0:  # none of the asked-for classes exists in this model
                results.append(())
                continue
            if self._dec.scores_are_logits:
                scores = sigmoid(scores)
            flat = scores.ravel()
            cand = np.flatnonzero(flat >= params.score_threshold)
            if cand.size > params.max_detections:
                cand = cand[np.argpartition(-flat[cand], params.max_detections - 1)[: params.max_detections]]
            queries, columns = np.divmod(cand, scores.shape[1])
            class_ids = allowed[columns] if allowed is not None else columns.astype(np.int64)
            b = boxes[i, queries].astype(np.float32)
            xyxy = cxcywh_to_xyxy(b[:, 0], b[:, 1], b[:, 2], b[:, 3]) * size
            results.append(
                finalize(xyxy, flat[cand], class_ids, transform, params, self._spec.class_names, nms=False)
            )
        return results
