"""YOLOX: the YOLOv5 layout [N, A, 5 + C] (objectness x class, both already through a sigmoid), with boxes
either raw (YOLOX's default export: grid offsets and log sizes per stride) or decoded to input pixels.

Raw anchors are ordered stride by stride, row-major within each grid (index = y * w + x), as YOLOX's head
concatenates them; anchor (x, y) of stride s decodes to cx = (dx + x) * s, cy = (dy + y) * s,
w = exp(dw) * s, h = exp(dh) * s (the grid starts at the cell corner, no 0.5 offset).
YOLOX's own pre-processing pads at the bottom/right; rtdetect's letterbox centres the image, which the
boxes follow through the Transform either way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from inference.decoders import get_output
from inference.decoders.yolov5 import decode_objectness
from inference.errors import InferenceError
from inference.preprocess import Transform
from inference.spec import ModelSpec, YoloXDecoderSpec
from inference.types import Detection, DetectParams


class YoloXDecoder:
    def __init__(self, spec: ModelSpec) -> None:
        if not isinstance(spec.decoder, YoloXDecoderSpec):
            raise TypeError(f"YoloXDecoder needs a yolox decoder spec, got {spec.decoder.type!r}")
        self._spec = spec
        self._dec = spec.decoder
        grids, strides = [], []
        for s in self._dec.strides:
            h, w = math.ceil(spec.input_height / s), math.ceil(spec.input_width / s)
            ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
            grids.append(np.stack([xs.ravel(), ys.ravel()], axis=1))
            strides.append(np.full(h * w, s, dtype=np.float32))
        self._grid = np.concatenate(grids)  # [A, 2] cell x, y
        self._strides = np.concatenate(strides)  # [A]

    @property
    def num_anchors(self) -> int:
        return int(self._strides.size)

    def decode(
        self, outputs: dict[str, np.ndarray], transforms: Sequence[Transform], params: DetectParams
    ) -> list[tuple[Detection, ...]]:
        out = get_output(outputs, self._dec.output, len(transforms))
        raw = self._dec.boxes == "raw"
        if raw and (out.ndim != 3 or out.shape[1] != self.num_anchors):
            raise InferenceError(
                f"yolox output {self._dec.output!r} has shape {out.shape}: raw boxes need "
                f"{self.num_anchors} anchors for strides {self._dec.strides} at "
                f"{self._spec.input_width}x{self._spec.input_height}"
            )
        return decode_objectness(
            out, transforms, params, self._spec, family="yolox", box_fn=self._grid_decode if raw else None
        )

    def _grid_decode(self, rows: np.ndarray, anchors: np.ndarray) -> np.ndarray:
        stride = self._strides[anchors, None]
        xy = (rows[:, :2] + self._grid[anchors]) * stride
        wh = np.exp(rows[:, 2:4]) * stride
        return np.concatenate([xy, wh], axis=1)
