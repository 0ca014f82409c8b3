"""The live path's tracking, box prediction, zone and data-channel settings (mixed into the media server's
Settings: RTDETECT_MEDIA_ prefix)."""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode

from inference.zones import LineSpec, ZoneSpec


class LiveTrackingSettings(BaseSettings):
    # Per peer, detections become tracks with ids (inference/tracking.py); off: plain detections.
    tracking: bool = True
    # Each track's box moved to every outgoing frame's time (needs tracking); off: boxes where detected.
    predict_boxes: bool = True
    # Predicted with each track's acceleration (inference/tracking.py); off: constant velocity, the earlier model, which
    # misses a turning person by tens of pixels on a slow engine (docs/benchmarks.md).
    predict_acceleration: bool = True
    # ByteTrack's second association: detections this score or more (below the peer's threshold) keep a
    # track alive through an occlusion; they are neither drawn nor sent.
    track_low_threshold: float = Field(default=0.1, ge=0.0, le=1.0)
    track_max_lost_s: float = Field(default=1.0, gt=0.0, le=30.0)  # an unseen track keeps its id this long
    # Server-wide zones and lines, JSON: [{"name": "door", "polygon": [[0.1, 0.2], ...]}] and
    # [{"name": "gate", "a": [0.5, 0], "b": [0.5, 1]}]. Their names are the only zone label values in
    # Prometheus; a peer's own zones (data channel, browser page) are counted under "peer".
    zones: Annotated[list[ZoneSpec], NoDecode] = Field(default_factory=list)
    lines: Annotated[list[LineSpec], NoDecode] = Field(default_factory=list)
    max_peer_zones: int = Field(default=8, ge=0, le=64)  # zones + lines one peer may set
    # A client that does not read its data channel: results are dropped (and counted) past this backlog.
    data_channel_max_buffered_bytes: int = Field(default=256 * 1024, ge=1024)

    @field_validator("zones", "lines", mode="before")
    @classmethod
    def _json(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            return json.loads(text) if text else []
        return value

    @model_validator(mode="after")
    def _unique_names(self) -> LiveTrackingSettings:
        names = [z.name for z in self.zones] + [ln.name for ln in self.lines]
        if len(set(names)) != len(names):
            raise ValueError("zone and line names must be unique")
        return self
