"""Model-family post-processing: raw engine outputs -> typed detections in source-image pixels.

Engines only move tensors; everything that depends on how a model family lays out its outputs lives here.
Decoders are registered by name like the engine backends and imported only when a spec asks for them.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from inference.errors import InferenceError
from inference.nms import batched_nms
from inference.preprocess import Transform
from inference.spec import ModelSpec
from inference.types import Detection, DetectParams

# Candidates kept (by score) before NMS: bounds NMS time when a low threshold lets thousands through.
PRE_NMS_TOP_K = 1000


class Decoder(Protocol):
    def decode(
        self, outputs: dict[str, np.ndarray], transforms: Sequence[Transform], params: DetectParams
    ) -> list[tuple[Detection, ...]]:
        """One tuple per image, best score first, at most params.max_detections each."""
        ...


# spec.decoder.type -> "module:Class". Each class takes the ModelSpec; each name has its DecoderSpec in
# inference.spec (the discriminated union), which says the decoder's outputs and options.
DECODERS: dict[str, str] = {
    "nanodet": "inference.decoders.nanodet:NanoDetDecoder",
    "yolov8": "inference.decoders.yolov8:YoloV8Decoder",
    "yolov5": "inference.decoders.yolov5:YoloV5Decoder",
    "yolox": "inference.decoders.yolox:YoloXDecoder",
    "end2end": "inference.decoders.end2end:EndToEndDecoder",
    "detr": "inference.decoders.detr:DetrDecoder",
    "torchvision": "inference.decoders.torchvision:TorchvisionDecoder",
}


def create_decoder(spec: ModelSpec) -> Decoder:
    """The decoder registered for spec.decoder.type."""
    try:
        target = DECODERS[spec.decoder.type]
    except KeyError as e:  # pragma: no cover - the spec's union only admits registered types
        raise ValueError(f"no decoder for type {spec.decoder.type!r}; have {sorted(DECODERS)}") from e
    module_name, _, class_name = target.partition(":")
    decoder: Decoder = getattr(importlib.import_module(module_name), class_name)(spec)
    return decoder


def get_output(outputs: dict[str, np.ndarray], name: str, batch: int) -> np.ndarray:
    """outputs[name] with its batch axis checked, or an error naming what the engine returned instead."""
    try:
        arr = outputs[name]
    except KeyError as e:
        raise InferenceError(f"engine returned no output {name!r} (got {sorted(outputs)})") from e
    if arr.ndim < 1 or arr.shape[0] != batch:
        raise InferenceError(f"output {name!r} has shape {arr.shape}, expected a batch of {batch}")
    return arr


def allowed_classes(params: DetectParams, num_classes: int) -> np.ndarray | None:
    """Sorted class indices the caller asked for, or None for all of them."""
    if params.classes is None:
        return None
    return np.asarray(sorted(c for c in params.classes if 0 <= c < num_classes), dtype=np.int64)


def best_class(scores: np.ndarray, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Per anchor, the best score and its class among the allowed ones. `scores` is [A, C].

    The class filter applies before the max, so asking for persons finds a person even where another
    class scores higher at the same anchor.
    """
    if allowed is not None:
        if allowed.size == 0:
            return np.empty(0, dtype=scores.dtype), np.empty(0, dtype=np.int64)
        sub = scores[:, allowed]
        idx = sub.argmax(axis=1)
        return np.take_along_axis(sub, idx[:, None], axis=1)[:, 0], allowed[idx]
    idx = scores.argmax(axis=1)
    return np.take_along_axis(scores, idx[:, None], axis=1)[:, 0], idx.astype(np.int64)


def top_candidates(scores: np.ndarray, threshold: float, limit: int = PRE_NMS_TOP_K) -> np.ndarray:
    """Indices of scores >= threshold, at most `limit` of the highest."""
    cand = np.flatnonzero(scores >= threshold)
    if cand.size > limit:
        cand = cand[np.argpartition(-scores[cand], limit - 1)[:limit]]
    return cand


def cxcywh_to_xyxy(cx: np.ndarray, cy: np.ndarray, w: np.ndarray, h: np.ndarray) -> np.ndarray:
    """[K] each -> [K, 4] x1, y1, x2, y2 (float32)."""
    cx, cy, w, h = (np.asarray(v, dtype=np.float32) for v in (cx, cy, w, h))
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float32)))


def finalize(
    boxes: np.ndarray,
    scores: np.ndarray,
    class_ids: np.ndarray,
    transform: Transform,
    params: DetectParams,
    class_names: Sequence[str],
    *,
    nms: bool = True,
) -> tuple[Detection, ...]:
    """Candidate boxes in input pixels -> source pixels -> class-aware NMS -> typed detections.

    `nms=False` for heads that already give one box per object (end-to-end, DETR, torchvision): the
    candidates are only ordered by score and cut at params.max_detections.
    """
    if boxes.shape[0] == 0:
        return ()
    src = transform.to_source(boxes)
    if nms:
        keep = batched_nms(src, scores, class_ids, params.iou_threshold)[: params.max_detections]
    else:
        keep = np.argsort(-scores, kind="stable")[: params.max_detections]
    return tuple(
        Detection(
            class_id=int(class_ids[i]),
            label=class_names[class_ids[i]] if class_ids[i] < len(class_names) else str(int(class_ids[i])),
            score=float(scores[i]),
            box=(float(src[i, 0]), float(src[i, 1]), float(src[i, 2]), float(src[i, 3])),
        )
        for i in keep
    )
