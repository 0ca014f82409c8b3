"""End-to-end NMS-free heads (YOLOv10, YOLO26, and exports with NMS built into the graph): one output
[N, K, 6] = x1, y1, x2, y2 in input pixels, score, class id. The model already chose one box per object,
so there is no NMS: only the threshold, the class filter and max_detections."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from inference.decoders import finalize, get_output
from inference.errors import InferenceError
from inference.preprocess import Transform
from inference.spec import EndToEndDecoderSpec, ModelSpec
from inference.types import Detection, DetectParams


def class_mask(class_ids: np.ndarray, params: DetectParams) -> np.ndarray:
    """Rows whose class the caller asked for (all valid ids when params.classes is None)."""
    valid = class_ids >= 0  # some exports pad with class -1
    if params.classes is None:
        return valid
    return valid & np.isin(class_ids, np.fromiter(params.classes, dtype=np.int64))


class EndToEndDecoder:
    def __init__(self, spec: ModelSpec) -> None:
        if not isinstance(spec.decoder, EndToEndDecoderSpec):
            raise TypeError(f"EndToEndDecoder needs an end2end decoder spec, got {spec.decoder.type!r}")
        self._spec = spec
        self._dec = spec.decoder

    def decode(
        self, outputs: dict[str, np.ndarray], transforms: Sequence[Transform], params: DetectParams
    ) -> list[tuple[Detection, ...]]:
        out = get_output(outputs, self._dec.output, len(transforms))
        if out.ndim != 3 or out.shape[2] != 6:
            raise InferenceError(f"end2end output {self._dec.output!r} has shape {out.shape}, not [N, K, 6]")
        results: list[tuple[Detection, ...]] = []
        for i, transform in enumerate(transforms):
            pred = out[i]
            scores = pred[:, 4].astype(np.float32)
            class_ids = np.rint(pred[:, 5]).astype(np.int64)  # float outputs carry integral class ids
            keep = np.flatnonzero((scores >= params.score_threshold) & class_mask(class_ids, params))
            results.append(
                finalize(
                    pred[keep, :4].astype(np.float32),
                    scores[keep],
                    class_ids[keep],
                    transform,
                    params,
                    self._spec.class_names,
                    nms=False,
                )
            )
        return results
