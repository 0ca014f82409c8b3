"""Ultralytics YOLOv8-style exports: one output [N, 4 + C, A]; rows cx, cy, w, h (input pixels), then C
class scores. Anchor-free, one box per anchor, so decoding is a transpose, a max and a threshold."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from inference.decoders import allowed_classes, best_class, finalize, get_output, top_candidates
from inference.errors import InferenceError
from inference.preprocess import Transform
from inference.spec import ModelSpec, YoloV8DecoderSpec
from inference.types import Detection, DetectParams


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class YoloV8Decoder:
    def __init__(self, spec: ModelSpec) -> None:
        if not isinstance(spec.decoder, YoloV8DecoderSpec):
            raise TypeError(f"YoloV8Decoder needs a yolov8 decoder spec, got {spec.decoder.type!r}")
        self._spec = spec
        self._dec = spec.decoder

    def decode(
        self, outputs: dict[str, np.ndarray], transforms: Sequence[Transform], params: DetectParams
    ) -> list[tuple[Detection, ...]]:
        out = get_output(outputs, self._dec.output, len(transforms))
        if out.ndim != 3 or out.shape[1] <= 4:
            raise InferenceError(f"yolov8 output {self._dec.output!r} has shape {out.shape}, not [N, 4+C, A]")
        allowed = allowed_classes(params, out.shape[1] - 4)
        # The sigmoid is monotonic: pick the best class on raw logits, then squash one score per anchor.
        threshold = params.score_threshold
        results: list[tuple[Detection, ...]] = []
        for i, transform in enumerate(transforms):
            pred = out[i]  # [4 + C, A]
            best, class_ids = best_class(pred[4:].T, allowed)
            if self._dec.scores_are_logits:
                best = _sigmoid(best.astype(np.float32))
            cand = top_candidates(best, threshold)
            if cand.size == 0:
                results.append(())
                continue
            cx, cy, w, h = (pred[k, cand].astype(np.float32) for k in range(4))
            boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
            results.append(
                finalize(boxes, best[cand], class_ids[cand], transform, params, self._spec.class_names)
            )
        return results
