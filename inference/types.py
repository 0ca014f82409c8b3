"""Typed results shared by every server: no arrays whose meaning lives in a comment."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

Box = tuple[float, float, float, float]  # x1, y1, x2, y2 in the source image's pixels


@dataclass(frozen=True, slots=True)
class Detection:
    class_id: int
    label: str
    score: float
    box: Box
    track_id: int | None = None  # live video only: the tracker's id (inference/tracking.py)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "label": self.label,
            "class_id": self.class_id,
            "score": round(self.score, 4),
            "box": [round(v, 1) for v in self.box],
        }
        if self.track_id is not None:
            out["track_id"] = self.track_id
        return out


@dataclass(frozen=True, slots=True)
class DetectParams:
    """Per-request post-processing parameters (validated by the servers)."""

    score_threshold: float = 0.35
    iou_threshold: float = 0.6
    max_detections: int = 100
    classes: frozenset[int] | None = None  # None: every class


@dataclass(slots=True)
class Timings:
    """Milliseconds spent in each stage of one image's trip through the core."""

    decode: float = 0.0
    preprocess: float = 0.0
    inference: float = 0.0
    postprocess: float = 0.0
    total: float = 0.0

    def to_dict(self) -> dict[str, float]:
        # Per request, twice: fields() is several times cheaper than asdict()'s recursive deep copy.
        return {f.name: round(getattr(self, f.name), 3) for f in fields(self)}


@dataclass(frozen=True, slots=True)
class DetectionResult:
    detections: tuple[Detection, ...]
    width: int
    height: int
    batch_size: int  # how many images shared the engine call that produced this result
    timings: Timings = field(default_factory=Timings)
