"""NanoDet / GFL heads: per stride, sigmoid class scores [N, A, C] and box distributions [N, A, 4*(R+1)].

Each side (left, top, right, bottom) is a discrete distribution over R+1 bins; its expectation times the
stride is the distance from the anchor centre to that side. Only anchors above the score threshold have their
distributions decoded, which keeps post-processing well under a millisecond at normal thresholds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from inference.decoders import allowed_classes, best_class, finalize, get_output, top_candidates
from inference.errors import InferenceError
from inference.preprocess import Transform
from inference.spec import ModelSpec, NanoDetDecoderSpec
from inference.types import Detection, DetectParams

# Anchor centre of cell (x, y) is ((x + CENTRE_OFFSET) * stride, (y + CENTRE_OFFSET) * stride). The original
# NanoDet GFL head (the NanoDet-g generation) uses cell centres; NanoDet-Plus moved to the cell corner (0.0).
CENTRE_OFFSET = 0.5


class NanoDetDecoder:
    def __init__(self, spec: ModelSpec, *, centre_offset: float = CENTRE_OFFSET) -> None:
        if not isinstance(spec.decoder, NanoDetDecoderSpec):
            raise TypeError(f"NanoDetDecoder needs a nanodet decoder spec, got {spec.decoder.type!r}")
        dec = spec.decoder
        if not len(dec.strides) == len(dec.cls_outputs) == len(dec.reg_outputs):
            raise ValueError("nanodet spec needs one cls and one reg output per stride")
        self._spec = spec
        self._dec = dec
        self._bins = np.arange(dec.reg_max + 1, dtype=np.float32)
        # Anchor centres and strides of every level, concatenated in output order: [A_total, 2], [A_total].
        centres, strides, sizes = [], [], []
        for s in dec.strides:
            h, w = math.ceil(spec.input_height / s), math.ceil(spec.input_width / s)
            ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)  # row-major: anchor index = y * w + x
            centres.append(np.stack([(xs.ravel() + centre_offset) * s, (ys.ravel() + centre_offset) * s], 1))
            strides.append(np.full(h * w, s, dtype=np.float32))
            sizes.append(h * w)
        self._centres = np.concatenate(centres)
        self._strides = np.concatenate(strides)
        self._level_sizes = tuple(sizes)

    def decode(
        self, outputs: dict[str, np.ndarray], transforms: Sequence[Transform], params: DetectParams
    ) -> list[tuple[Detection, ...]]:
        n = len(transforms)
        nbins = self._dec.reg_max + 1
        cls_levels = [get_output(outputs, name, n) for name in self._dec.cls_outputs]
        reg_levels = [get_output(outputs, name, n) for name in self._dec.reg_outputs]
        for name, size, cls, reg in zip(
            self._dec.cls_outputs, self._level_sizes, cls_levels, reg_levels, strict=True
        ):
            if cls.ndim != 3 or cls.shape[1] != size or reg.shape != (n, size, 4 * nbins):
                raise InferenceError(
                    f"nanodet level {name}: cls {cls.shape} / reg {reg.shape} do not fit "
                    f"{size} anchors x {4 * nbins} bins for a {self._spec.input_width}x"
                    f"{self._spec.input_height} input"
                )
        allowed = allowed_classes(params, cls_levels[0].shape[2])

        results: list[tuple[Detection, ...]] = []
        for i, transform in enumerate(transforms):
            # Best class per anchor level by level, so the [A, C] scores are never copied.
            per_level = [best_class(c[i], allowed) for c in cls_levels]
            best = np.concatenate([b for b, _ in per_level])
            class_ids = np.concatenate([k for _, k in per_level])
            cand = top_candidates(best, params.score_threshold)
            if cand.size == 0:
                results.append(())
                continue
            reg = self._gather(reg_levels, i, cand).reshape(-1, 4, nbins)
            boxes = self._boxes(reg, cand)
            results.append(
                finalize(boxes, best[cand], class_ids[cand], transform, params, self._spec.class_names)
            )
        return results

    def _gather(self, reg_levels: Sequence[np.ndarray], image: int, anchors: np.ndarray) -> np.ndarray:
        """Rows `anchors` (indices into all levels) of image `image`'s distributions, as float32 [K, B]."""
        out = np.empty((anchors.size, reg_levels[0].shape[2]), dtype=np.float32)
        start = 0
        for reg, size in zip(reg_levels, self._level_sizes, strict=True):
            mask = (anchors >= start) & (anchors < start + size)
            out[mask] = reg[image, anchors[mask] - start]
            start += size
        return out

    def _boxes(self, reg: np.ndarray, anchors: np.ndarray) -> np.ndarray:
        """[K, 4, R+1] bin logits of anchors [K] -> [K, 4] x1, y1, x2, y2 in input pixels."""
        logits = reg - reg.max(axis=2, keepdims=True)  # stable softmax
        weights = np.exp(logits)
        dist = (weights @ self._bins) / weights.sum(axis=2)  # expected bin per side, [K, 4]
        dist *= self._strides[anchors, None]
        cx, cy = self._centres[anchors, 0], self._centres[anchors, 1]
        boxes = np.stack([cx - dist[:, 0], cy - dist[:, 1], cx + dist[:, 2], cy + dist[:, 3]], axis=1)
        # Like upstream NanoDet, boxes are clipped to the input before mapping back.
        np.clip(boxes[:, 0::2], 0.0, float(self._spec.input_width), out=boxes[:, 0::2])
        np.clip(boxes[:, 1::2], 0.0, float(self._spec.input_height), out=boxes[:, 1::2])
        return boxes
