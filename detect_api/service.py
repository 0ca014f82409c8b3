"""The detect API's request core, shared by its two adapters (REST in app.py, gRPC in grpc_service.py), which
never import each other: the lifespan state, image decoding and preparation, class-option parsing, annotation."""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field

import numpy as np
from prometheus_client import CollectorRegistry

from detect_api.errors import ApiError
from detect_api.settings import Settings
from inference.draw import draw_detections
from inference.imageio import decode_image, encode_jpeg
from inference.pipeline import Detector, Prepared
from inference.types import Detection
from observability.gpu import GpuSampler
from observability.metrics import InferenceMetrics


@dataclass
class ApiState:
    settings: Settings
    registry: CollectorRegistry
    metrics: InferenceMetrics
    gpu: GpuSampler | None
    detector: Detector | None  # None until the lifespan has built it
    owns_detector: bool
    decode_slots: asyncio.Semaphore
    model_name: str = ""
    class_ids: dict[str, int] = field(default_factory=dict)  # lower-case name -> id

    @property
    def ready(self) -> bool:
        return self.detector is not None and self.detector.ready

    def require_detector(self) -> Detector:
        if self.detector is None or not self.detector.ready:
            raise ApiError(
                503,
                "not_ready",
                "the model is not loaded yet (or the server is shutting down)",
                {"Retry-After": str(self.settings.retry_after_s)},
            )
        return self.detector


def decode_and_prepare(
    data: bytes, max_pixels: int, detector: Detector
) -> tuple[np.ndarray, Prepared, float]:
    """Decode and pre-process in one worker-thread call (one hop from the event loop, not two)."""
    t0 = time.perf_counter()
    image = decode_image(data, max_pixels=max_pixels)
    decode_ms = (time.perf_counter() - t0) * 1e3
    return image, detector.prepare(image), decode_ms


_ASCII_ID = re.compile(r"[0-9]+")


def parse_classes(text: str, class_ids: dict[str, int]) -> frozenset[int]:
    """`person, car` or `0,2` (mixed is fine) -> class ids; an unknown entry is a 422 listing the valid ones."""
    wanted: set[int] = set()
    unknown: list[str] = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        # ASCII digits only: str.isdigit() also takes '²' (int() then raises) and '٣' (int() reads 3).
        if _ASCII_ID.fullmatch(item) and int(item) < len(class_ids):
            wanted.add(int(item))
        elif item.lower() in class_ids:
            wanted.add(class_ids[item.lower()])
        elif item.isnumeric() and not _ASCII_ID.fullmatch(item):
            raise ApiError(400, "invalid_class_id", f"class ids are ASCII digits 0-9, got {item!r}")
        else:
            unknown.append(item)
    if unknown or not wanted:
        names = ", ".join(class_ids)
        problem = f"unknown class(es) {', '.join(map(repr, unknown))}" if unknown else "no class given"
        raise ApiError(
            422,
            "unknown_class",
            f"{problem}; use names or ids 0..{len(class_ids) - 1} of: {names}",
        )
    return frozenset(wanted)


def annotate(image: np.ndarray, detections: tuple[Detection, ...], quality: int) -> bytes:
    return encode_jpeg(draw_detections(image, detections, inplace=True), quality=quality)
