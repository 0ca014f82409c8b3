"""Zones (polygons) and lines in normalised coordinates, and the events tracks make with them.

Pure geometry and bookkeeping, no WebRTC and no metrics: the media server feeds each result's tracks in
(`ZoneMonitor.update`) and sends the events it returns (data channel, Prometheus counters).

A track's position is the bottom centre of its box (where a person or a car touches the ground), in
coordinates normalised by the frame's width and height, (0, 0) top left, (1, 1) bottom right.
- `zone_enter` / `zone_exit`: the point went into / out of the polygon; a track that disappears while inside
  exits, so every enter has its exit.
- `line_cross`: the point went from one side of the segment to the other, within the segment's extent.
  `direction` is `in` when it went from the line's counter-clockwise side to its clockwise side as seen on
  screen (a line drawn left to right: moving down is `in`; drawn top to bottom: moving right to left is
  `in`), else `out`. A band of `hysteresis` (a fraction of the frame's diagonal) on either side of the line
  counts as neither side, so a box jittering on the line fires once, not at every wobble.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from inference.tracking import TrackSnapshot

NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.\- ]{1,64}$")
MAX_POINTS = 64

Coordinate = Annotated[float, Field(ge=0.0, le=1.0)]
Point = tuple[Coordinate, Coordinate]
EventType = Literal["zone_enter", "zone_exit", "line_cross"]


def _valid_name(value: str) -> str:
    if not NAME_PATTERN.match(value):
        raise ValueError("a name is 1-64 letters, digits, spaces or _.-")
    return value


class ZoneSpec(BaseModel):
    """A polygon in normalised coordinates (at least 3 points)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str
    polygon: tuple[Point, ...] = Field(min_length=3, max_length=MAX_POINTS)

    _name = field_validator("name")(_valid_name)


class LineSpec(BaseModel):
    """A segment from `a` to `b` in normalised coordinates."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str
    a: Point
    b: Point

    _name = field_validator("name")(_valid_name)

    @field_validator("b")
    @classmethod
    def _not_a_point(cls, value: tuple[float, float], info: Any) -> tuple[float, float]:
        a = info.data.get("a")
        if a is not None and math.dist(a, value) < 1e-3:
            raise ValueError("a line needs two distinct end points")
        return value


@dataclass(frozen=True, slots=True)
class ZoneEvent:
    type: EventType
    name: str  # the zone's or the line's
    track_id: int
    class_id: int
    label: str
    time: float  # wall-clock seconds (Unix time) when the result was made
    pts_s: float  # the frame's presentation time, seconds (the stream's own clock)
    direction: Literal["in", "out"] | None = None  # line_cross only
    source: Literal["server", "peer"] = "server"  # configured on the server, or by this peer

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": self.type,
            "name": self.name,
            "track_id": self.track_id,
            "class_id": self.class_id,
            "label": self.label,
            "time": round(self.time, 3),
            "pts_s": round(self.pts_s, 4),
            "source": self.source,
        }
        if self.direction is not None:
            out["direction"] = self.direction
        return out


def point_in_polygon(point: tuple[float, float], polygon: Sequence[tuple[float, float]]) -> bool:
    """Even-odd rule (ray casting)."""
    x, y = point
    inside = False
    n = len(polygon)
    for i in range(n):
        x1, y1 = polygon[i]
        x2, y2 = polygon[(i + 1) % n]
        if (y1 > y) != (y2 > y) and x < x1 + (y - y1) * (x2 - x1) / (y2 - y1):
            inside = not inside
    return inside


def anchor(track: TrackSnapshot, width: int, height: int) -> tuple[float, float]:
    """The track's bottom centre, normalised."""
    x1, _, x2, y2 = track.box
    return ((x1 + x2) / 2 / width, y2 / height)


@dataclass(slots=True)
class _TrackState:
    zones: set[tuple[str, str]] = field(default_factory=set)  # (source, zone name)
    sides: dict[tuple[str, str], int] = field(default_factory=dict)  # (source, line name) -> -1 / +1


@dataclass(frozen=True, slots=True)
class Geometry:
    """The zones and lines one stream is checked against, each tagged with where it came from."""

    zones: tuple[tuple[ZoneSpec, Literal["server", "peer"]], ...] = ()
    lines: tuple[tuple[LineSpec, Literal["server", "peer"]], ...] = ()

    @classmethod
    def of(
        cls,
        server_zones: Sequence[ZoneSpec] = (),
        server_lines: Sequence[LineSpec] = (),
        peer_zones: Sequence[ZoneSpec] = (),
        peer_lines: Sequence[LineSpec] = (),
    ) -> Geometry:
        return cls(
            tuple((z, "server") for z in server_zones) + tuple((z, "peer") for z in peer_zones),
            tuple((ln, "server") for ln in server_lines) + tuple((ln, "peer") for ln in peer_lines),
        )

    def __bool__(self) -> bool:
        return bool(self.zones or self.lines)


def _event(
    kind: EventType,
    name: str,
    track: TrackSnapshot,
    source: Literal["server", "peer"],
    time: float,
    pts_s: float,
    direction: Literal["in", "out"] | None = None,
) -> ZoneEvent:
    assert track.track_id is not None
    return ZoneEvent(kind, name, track.track_id, track.class_id, track.label, time, pts_s, direction, source)


class ZoneMonitor:
    """Per stream: turns successive tracker results into zone and line events. One thread at a time."""

    def __init__(self, geometry: Geometry | None = None, *, hysteresis: float = 0.01) -> None:
        self.geometry = geometry or Geometry()
        self.hysteresis = hysteresis
        self._states: dict[int, _TrackState] = {}

    def set_geometry(self, geometry: Geometry) -> None:
        """New zones and lines: tracks start afresh against them (no events for the change itself)."""
        self.geometry = geometry
        self._states.clear()

    def update(
        self,
        tracks: Sequence[TrackSnapshot],
        removed: Sequence[TrackSnapshot],
        width: int,
        height: int,
        *,
        time: float,
        pts_s: float,
    ) -> list[ZoneEvent]:
        events: list[ZoneEvent] = []
        geometry = self.geometry
        if not geometry:
            return events
        diagonal = math.hypot(width, height)
        band = self.hysteresis * diagonal
        for track in tracks:
            if track.track_id is None or not track.matched:
                continue  # unconfirmed, or coasting on a prediction: no events from guesses
            state = self._states.setdefault(track.track_id, _TrackState())
            x, y = anchor(track, width, height)

            for zone, source in geometry.zones:
                inside = point_in_polygon((x, y), zone.polygon)
                key = (source, zone.name)
                if inside and key not in state.zones:
                    state.zones.add(key)
                    events.append(_event("zone_enter", zone.name, track, source, time, pts_s))
                elif not inside and key in state.zones:
                    state.zones.discard(key)
                    events.append(_event("zone_exit", zone.name, track, source, time, pts_s))
            px, py = x * width, y * height
            for line, source in geometry.lines:
                ax, ay = line.a[0] * width, line.a[1] * height
                bx, by = line.b[0] * width, line.b[1] * height
                dx, dy = bx - ax, by - ay
                length = math.hypot(dx, dy)
                distance = (dx * (py - ay) - dy * (px - ax)) / length  # > 0: the clockwise side
                along = ((px - ax) * dx + (py - ay) * dy) / (length * length)
                side = 1 if distance > band else -1 if distance < -band else 0
                previous = state.sides.get((source, line.name))
                if side == 0:
                    continue
                state.sides[(source, line.name)] = side
                if previous is not None and side != previous and -0.05 <= along <= 1.05:
                    events.append(
                        _event(
                            "line_cross", line.name, track, source, time, pts_s, "in" if side > 0 else "out"
                        )
                    )
        for track in removed:
            if track.track_id is None:
                continue
            if track.track_id not in self._states:
                continue
            state = self._states.pop(track.track_id)
            for zone, source in geometry.zones:
                if (source, zone.name) in state.zones:
                    events.append(_event("zone_exit", zone.name, track, source, time, pts_s))
        return events
