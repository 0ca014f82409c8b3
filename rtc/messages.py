"""The data channel's messages, typed in one place (JSON text, one object per message, `type` first).

Server -> client:
- `detections`: one per inference result: the frame it came from (`seq`, `pts`, `time_base`, size), its
  detections (`track_id` on tracked ones), timings and the peer's frame counters.
- `events`: zone and line events of that result (`zone_enter`, `zone_exit`, `line_cross` with direction),
  each with track id, class and time; sent only when there are some.
- `config`: the peer's settings after a `config` request; `zones`: its zones and lines after a `zones`
  request; `pong`: the answer to `ping`; `error`: a request that was refused (the connection lives on).
Client -> server:
- `{"type": "config", "score_threshold": 0.5}`
- `{"type": "ping", "t": <anything>}`
- `{"type": "zones", "zones": [{"name": "door", "polygon": [[x, y], ...]}],
   "lines": [{"name": "gate", "a": [x, y], "b": [x, y]}]}`: this peer's own zones and lines (normalised
  coordinates), replacing its previous ones; the server's configured ones always apply as well.

The server never buffers without bound: when the client does not read (the channel's `bufferedAmount` over
a limit), results and events are dropped and counted (`rtdetect_live_results_dropped_total`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, NotRequired, TypedDict

from pydantic import BaseModel, ConfigDict, Field

from inference.types import Detection
from inference.zones import LineSpec, ZoneEvent, ZoneSpec

DATA_CHANNEL_LABEL = "detections"


class DetectionDict(TypedDict):
    label: str
    class_id: int
    score: float
    box: list[float]  # x1, y1, x2, y2 in the frame's pixels
    track_id: NotRequired[int]


class DetectionsMessage(TypedDict):
    type: Literal["detections"]
    seq: int  # per peer, from 0: the frame the result was computed on
    pts: int | None
    time_base: str | None  # "1/90000"
    width: int
    height: int
    detections: list[DetectionDict]
    inference_ms: float
    detect_ms: float
    age_ms: float  # frame received -> result published, inside the server
    batch_size: int
    frames_in: int
    frames_inferred: int
    frames_dropped: int


class EventDict(TypedDict):
    type: Literal["zone_enter", "zone_exit", "line_cross"]
    name: str
    track_id: int
    class_id: int
    label: str
    time: float  # Unix time, seconds
    pts_s: float  # the frame's presentation time, seconds
    source: Literal["server", "peer"]
    direction: NotRequired[Literal["in", "out"]]


class EventsMessage(TypedDict):
    type: Literal["events"]
    seq: int
    events: list[EventDict]


class ConfigMessage(TypedDict):
    type: Literal["config"]
    score_threshold: float


class ZonesMessage(TypedDict):
    type: Literal["zones"]
    zones: list[dict[str, Any]]
    lines: list[dict[str, Any]]


class PongMessage(TypedDict):
    type: Literal["pong"]
    t: Any
    server_time: float


class ErrorMessage(TypedDict):
    type: Literal["error"]
    detail: str


ServerMessage = DetectionsMessage | EventsMessage | ConfigMessage | ZonesMessage | PongMessage | ErrorMessage


def detection_dicts(detections: Sequence[Detection]) -> list[DetectionDict]:
    return [d.to_dict() for d in detections]  # type: ignore[misc]


def events_message(seq: int, events: Sequence[ZoneEvent]) -> EventsMessage:
    return {"type": "events", "seq": seq, "events": [e.to_dict() for e in events]}  # type: ignore[misc]


class ZonesRequest(BaseModel):
    """A client's zones and lines; limits on their number come from the server's settings."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    type: Literal["zones"]
    zones: tuple[ZoneSpec, ...] = Field(default=(), max_length=64)
    lines: tuple[LineSpec, ...] = Field(default=(), max_length=64)

    def check_limit(self, max_items: int) -> None:
        if len(self.zones) + len(self.lines) > max_items:
            raise ValueError(
                f"at most {max_items} zones and lines per peer, got {len(self.zones) + len(self.lines)}"
            )
        names = [z.name for z in self.zones] + [ln.name for ln in self.lines]
        if len(set(names)) != len(names):
            raise ValueError("zone and line names must be unique")

    def to_message(self) -> ZonesMessage:
        return {
            "type": "zones",
            "zones": [z.model_dump(mode="json") for z in self.zones],
            "lines": [ln.model_dump(mode="json") for ln in self.lines],
        }
