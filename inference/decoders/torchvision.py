"""torchvision-style detection outputs (Faster R-CNN, RetinaNet, SSD, FCOS, ... and anything shaped like
them): boxes [N, K, 4] x1, y1, x2, y2 in input pixels, labels [N, K] and scores [N, K], already through the
model's own NMS. Images with fewer than K detections are padded with score 0 (the batch needs one K).

torchvision's COCO models count label 0 as background and leave gaps ("N/A"): give them class_names
that include those entries, so that labels index class_names directly."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from inference.decoders import finalize, get_output
from inference.decoders.end2end import class_mask
from inference.errors import InferenceError
from inference.preprocess import Transform
from inference.spec import ModelSpec, TorchvisionDecoderSpec
from inference.types import Detection, DetectParams


class TorchvisionDecoder:
    def __init__(self, spec: ModelSpec) -> None:
        if not isinstance(spec.decoder, TorchvisionDecoderSpec):
            raise TypeError(f"TorchvisionDecoder needs a torchvision decoder spec, got {spec.decoder.type!r}")
        self._spec = spec
        self._dec = spec.decoder

    def decode(
        self, outputs: dict[str, np.ndarray], transforms: Sequence[Transform], params: DetectParams
    ) -> list[tuple[Detection, ...]]:
        n = len(transforms)
        boxes = get_output(outputs, self._dec.boxes_output, n)
        labels = get_output(outputs, self._dec.labels_output, n)
        scores = get_output(outputs, self._dec.scores_output, n)
        if (
            boxes.ndim != 3
            or boxes.shape[2] != 4
            or labels.shape != boxes.shape[:2]
            or scores.shape != labels.shape
        ):
            raise InferenceError(
                f"torchvision outputs boxes {boxes.shape}, labels {labels.shape}, scores {scores.shape} "
                "are not [N, K, 4], [N, K], [N, K]"
            )
        results: list[tuple[Detection, ...]] = []
        for i, transform in enumerate(transforms):
            s = scores[i].astype(np.float32)
            ids = np.rint(labels[i]).astype(np.int64)
            # Padding rows have score 0, below any threshold a caller may set (the servers require > 0).
            keep = np.flatnonzero((s >= params.score_threshold) & (s > 0) & class_mask(ids, params))
            results.append(
                finalize(
                    boxes[i, keep].astype(np.float32),
                    s[keep],
                    ids[keep],
                    transform,
                    params,
                    self._spec.class_names,
                    nms=False,
                )
            )
        return results
