"""Multi-object tracking for live video: ByteTrack-style association on a time-based Kalman motion model.

Why our own small module: `supervision`'s ByteTrack counts time in frames and keeps its motion state
internal, while the live path needs each track's state at an arbitrary time (the pts of every outgoing
frame, see `TrackSnapshot.box_at`) and results that arrive at an irregular rate (only some frames are
inferred). The association follows ByteTrack (Zhang et al., 2022): detections above the high threshold
are matched first to every track by IoU (Hungarian, `scipy.optimize.linear_sum_assignment`), then the
low-score ones to the tracks still unmatched, so an object whose score dips under occlusion keeps its id;
a new track needs two hits before it gets an id; a lost track is kept `max_lost_s` for re-association.

The state is (cx, cy, w, h) and their velocities in pixels per second; the noise scales with the box
height as in ByteTrack (per-frame weights, taken at 30 fps). Each track runs two such filters: ByteTrack's
for association, and for the boxes drawn and sent one that also estimates an acceleration (white jerk noise
per coordinate, reset on a sudden turn): on a slow engine a box is drawn on frames 80-250 ms newer than its
result's.
Pure numpy + scipy, no WebRTC: the media server runs one `Tracker` per peer in its worker thread and reads
the immutable snapshots it returns.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from inference.types import Box, Detection

# Noise weights are per frame at 30 fps, times the box height, as ByteTrack's.
_FPS = 30.0
_MIN_SIDE = 1.0  # px: a predicted box never collapses


@dataclass(frozen=True, slots=True)
class TrackerConfig:
    high_threshold: float = 0.35  # first association and new tracks (the detector's threshold by default)
    low_threshold: float = 0.1  # second association only: keeps tracks through score dips
    match_iou: float = 0.2  # first association: IoU at least this
    low_match_iou: float = 0.5  # second association (low-score detections are less reliable)
    min_hits: int = 2  # hits before a track gets an id (one-frame false positives get none)
    duplicate_iou: float = 0.4  # an unmatched detection this close to a matched track starts no track
    max_lost_s: float = 1.0  # a track unmatched this long is removed
    max_predict_s: float = 0.5  # `box_at` extrapolates at most this far from the track's last update
    # ByteTrack's weights, for association.
    position_noise: float = 1.0 / 20.0
    velocity_noise: float = 1.0 / 160.0
    # The drawn boxes' filter: per coordinate a position, velocity and acceleration with white jerk noise
    # (`display_jerk_noise` box heights per s^2.5; sizes a tenth of it), measurements `display_measurement_noise`
    # box heights apart (NanoDet's centre jitters about 1.5 px on a 240 px person). A result is 80-250 ms old
    # when its box is drawn (its frame's pts to the drawn frame's), and a constant velocity misses a turning
    # person by a*dt^2/2 plus the velocity's own lag. A measurement more than `maneuver_gate` box heights off
    # the prediction is a sudden turn (a bounce): the coordinate restarts from the last two measurements
    # (velocity) with no acceleration, or the pre-turn acceleration would overshoot. `box_at` applies an
    # acceleration for at most `acceleration_horizon_s`, then carries on at the velocity reached. Tuned with an
    # offline replay of the live path's timing on real detections (docs/benchmarks.md: centre error with the
    # engine at 40 and 80 ms). None for the jerk noise: constant velocity (`constant_velocity`, the earlier
    # model, which uses `display_position_noise` and `display_velocity_noise`).
    display_position_noise: float = 1.0 / 20.0
    display_velocity_noise: float = 1.0 / 10.0
    display_jerk_noise: float | None = 13.0
    display_measurement_noise: float = 1.0 / 60.0
    maneuver_gate: float = 1.0 / 12.0
    acceleration_horizon_s: float = 0.2

    def __post_init__(self) -> None:
        if not 0.0 <= self.low_threshold <= self.high_threshold <= 1.0:
            raise ValueError("expected 0 <= low_threshold <= high_threshold <= 1")
        if self.min_hits < 1 or self.max_lost_s <= 0 or self.max_predict_s < 0:
            raise ValueError("min_hits >= 1, max_lost_s > 0 and max_predict_s >= 0 expected")
        if (
            min(
                self.position_noise,
                self.velocity_noise,
                self.display_position_noise,
                self.display_velocity_noise,
                self.display_measurement_noise,
                self.maneuver_gate,
            )
            <= 0
        ):
            raise ValueError("noise weights must be > 0")
        if self.display_jerk_noise is not None and self.display_jerk_noise <= 0:
            raise ValueError("display_jerk_noise must be > 0 (None: constant velocity)")
        if self.acceleration_horizon_s < 0:
            raise ValueError("acceleration_horizon_s must be >= 0")


def constant_velocity(config: TrackerConfig) -> TrackerConfig:
    """`config` with the earlier display filter: constant velocity, 16x ByteTrack's velocity noise."""
    return dataclasses.replace(config, display_jerk_noise=None)


@dataclass(frozen=True, slots=True)
class TrackSnapshot:
    """One track as of its last update: safe to read from another thread."""

    track_id: int | None  # None until confirmed (min_hits)
    class_id: int
    label: str
    score: float
    mean: tuple[float, ...]  # cx, cy, w, h, vcx, vcy, vw, vh (px, px/s)
    time: float  # seconds, the time of the frame of the last update
    matched: bool  # updated by the latest result (False: coasting, lost)
    max_predict_s: float
    acceleration: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # px/s^2 (cx, cy, w, h)
    acceleration_horizon_s: float = 0.2

    @property
    def box(self) -> Box:
        return _to_box(self.mean[:4])

    @property
    def velocity(self) -> tuple[float, float]:
        return self.mean[4], self.mean[5]

    def box_at(self, t: float) -> Box:
        """The box moved to time `t` (seconds, the same clock as the updates: the pts of the frame drawn)
        from the time of the frame it was detected in, with the track's velocity and acceleration."""
        dt = min(max(t - self.time, -self.max_predict_s), self.max_predict_s)
        m, a = self.mean, self.acceleration
        k = _acceleration_gain(dt, self.acceleration_horizon_s)
        return _to_box([m[i] + m[i + 4] * dt + a[i] * k for i in range(4)])

    def detection(self, box: Box | None = None) -> Detection:
        return Detection(self.class_id, self.label, self.score, box or self.box, self.track_id)


def _to_box(cxcywh: Sequence[float]) -> Box:
    cx, cy, w, h = cxcywh
    w, h = max(w, _MIN_SIDE), max(h, _MIN_SIDE)
    return (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)


def _measure(box: Box) -> np.ndarray:
    x1, y1, x2, y2 = box
    return np.array([(x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, _MIN_SIDE), max(y2 - y1, _MIN_SIDE)])


def _acceleration_gain(dt: float, horizon_s: float) -> float:
    """How far an acceleration of 1 px/s^2 moves a box in `dt` s when it acts for at most `horizon_s`:
    dt^2/2, then linear in dt at the velocity reached, so an extrapolation far from the last result (a lost
    track, `max_predict_s`) does not run away quadratically. Odd in dt (a frame older than the result)."""
    s = abs(dt)
    k = s * s / 2 if s <= horizon_s else horizon_s * (s - horizon_s / 2)
    return math.copysign(k, dt)


class _Kalman:
    """Constant velocity on (cx, cy, w, h), noise scaled by the box height (ByteTrack's model, in time)."""

    def __init__(self, z: np.ndarray, position_noise: float, velocity_noise: float) -> None:
        self._pos, self._vel = position_noise, velocity_noise
        self.mean = np.concatenate([z, np.zeros(4)])
        h = z[3]
        std = np.array([2 * self._pos * h] * 4 + [10 * self._vel * h * _FPS] * 4)
        self.cov = np.diag(np.square(std))

    @property
    def acceleration(self) -> tuple[float, float, float, float]:
        return (0.0, 0.0, 0.0, 0.0)

    @property
    def state(self) -> np.ndarray:
        """(cx, cy, w, h, vcx, vcy, vw, vh), as `_JerkFilter.state`."""
        return self.mean

    def predict(self, dt: float) -> None:
        f = np.eye(8)
        f[:4, 4:] = np.eye(4) * dt
        h = self.mean[3]
        frames = dt * _FPS  # the per-frame noise, once per frame interval elapsed
        q = np.square([self._pos * h] * 4 + [self._vel * h * _FPS] * 4) * frames
        self.mean = f @ self.mean
        self.cov = f @ self.cov @ f.T + np.diag(q)

    def update(self, z: np.ndarray, t: float = 0.0) -> None:
        r = np.diag(np.square([self._pos * self.mean[3]] * 4))
        s = _H @ self.cov @ _H.T + r
        gain = np.linalg.solve(s, (self.cov @ _H.T).T).T
        self.mean = self.mean + gain @ (z - _H @ self.mean)
        self.cov = (np.eye(8) - gain @ _H) @ self.cov


_H = np.eye(4, 8)
# Each coordinate's uncertainty when a track starts (or turns suddenly), in box heights (per s, per s^2):
# a person crossing a 640 px frame in a second or two, turning within a few tenths of a second.
_START_VELOCITY = 1.7
_START_ACCELERATION = 12.0


class _JerkFilter:
    """The drawn boxes' filter: per coordinate (cx, cy, w, h) a position, velocity and acceleration,
    continuous white jerk noise (a Wiener-process acceleration), every coordinate its own 3-state filter
    (they are independent), with a maneuver reset on cx and cy (TrackerConfig's comments)."""

    def __init__(
        self, z: np.ndarray, t: float, jerk_noise: float, measurement_noise: float, gate: float
    ) -> None:
        self._jerk, self._r, self._gate = jerk_noise, measurement_noise, gate
        # Position and size sides jerk alike in px; the size's noise is a tenth (a person's box breathes).
        self._jerk_scale = np.array([1.0, 1.0, 0.1, 0.1])
        self.mean = np.zeros((4, 3))
        self.mean[:, 0] = z
        self.cov = np.stack([self._start_cov(z[3])] * 4)
        self._last = (t, z.copy())

    def _start_cov(self, h: float, position_var: float | None = None) -> np.ndarray:
        r = self._r * h
        return np.diag(
            [
                r * r if position_var is None else position_var,
                (_START_VELOCITY * h) ** 2,
                (_START_ACCELERATION * h) ** 2,
            ]
        )

    @property
    def acceleration(self) -> tuple[float, float, float, float]:
        a = self.mean[:, 2]
        return (float(a[0]), float(a[1]), float(a[2]), float(a[3]))

    def predict(self, dt: float) -> None:
        f = np.array([[1.0, dt, dt * dt / 2], [0.0, 1.0, dt], [0.0, 0.0, 1.0]])
        q = np.array(
            [
                [dt**5 / 20, dt**4 / 8, dt**3 / 6],
                [dt**4 / 8, dt**3 / 3, dt**2 / 2],
                [dt**3 / 6, dt**2 / 2, dt],
            ]
        )
        h = self.mean[3, 0]
        spectral = np.square(self._jerk * h * self._jerk_scale)
        self.mean = self.mean @ f.T
        self.cov = f @ self.cov @ f.T + spectral[:, None, None] * q

    def update(self, z: np.ndarray, t: float) -> None:
        h = max(self.mean[3, 0], _MIN_SIDE)
        last_t, last_z = self._last
        for i in range(2):  # a sudden turn: restart from the last two measurements, no acceleration
            if abs(z[i] - self.mean[i, 0]) > self._gate * h and t > last_t:
                self.mean[i] = (z[i], (z[i] - last_z[i]) / (t - last_t), 0.0)
                self.cov[i] = self._start_cov(h)
        r2 = (self._r * h) ** 2
        s = self.cov[:, 0, 0] + r2  # one scalar measurement per coordinate
        gain = self.cov[:, :, 0] / s[:, None]
        self.mean = self.mean + gain * (z - self.mean[:, 0])[:, None]
        self.cov = self.cov - gain[:, :, None] * self.cov[:, None, 0, :]
        self._last = (t, z.copy())

    @property
    def state(self) -> np.ndarray:
        """(cx, cy, w, h, vcx, vcy, vw, vh), as the constant-velocity filter's mean."""
        return np.concatenate([self.mean[:, 0], self.mean[:, 1]])


class _Track:
    """Two filters on the same measurements: a steady one for association (ByteTrack's noise: ids survive
    jittery detections) and a responsive one for display (boxes follow a turning object within a few
    results); docs/benchmarks.md has both figures."""

    def __init__(self, detection: Detection, t: float, config: TrackerConfig) -> None:
        z = _measure(detection.box)
        self.filter = _Kalman(z, config.position_noise, config.velocity_noise)
        self.display: _Kalman | _JerkFilter = (
            _Kalman(z, config.display_position_noise, config.display_velocity_noise)
            if config.display_jerk_noise is None
            else _JerkFilter(
                z, t, config.display_jerk_noise, config.display_measurement_noise, config.maneuver_gate
            )
        )
        self.acceleration_horizon_s = config.acceleration_horizon_s
        self.time = t
        self.class_id, self.label, self.score = detection.class_id, detection.label, detection.score
        self.hits = 1
        self.track_id: int | None = None
        self.last_matched = t
        self.matched = True

    def predict(self, t: float) -> None:
        dt = t - self.time
        if dt <= 0:
            return
        self.filter.predict(dt)
        self.display.predict(dt)
        self.time = t

    def update(self, detection: Detection, t: float) -> None:
        z = _measure(detection.box)
        self.filter.update(z)
        self.display.update(z, t)
        self.score = detection.score
        self.hits += 1
        self.last_matched = t
        self.matched = True

    @property
    def box(self) -> Box:
        """Where association looks for this track's next detection."""
        return _to_box([float(v) for v in self.filter.mean[:4]])

    def snapshot(self, max_predict_s: float) -> TrackSnapshot:
        return TrackSnapshot(
            self.track_id,
            self.class_id,
            self.label,
            self.score,
            tuple(float(v) for v in self.display.state),
            self.time,
            self.matched,
            max_predict_s,
            self.display.acceleration,
            self.acceleration_horizon_s,
        )


def iou_matrix(a: Sequence[Box], b: Sequence[Box]) -> np.ndarray:
    if not a or not b:
        return np.zeros((len(a), len(b)))
    pa, pb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    x1 = np.maximum(pa[:, None, 0], pb[None, :, 0])
    y1 = np.maximum(pa[:, None, 1], pb[None, :, 1])
    x2 = np.minimum(pa[:, None, 2], pb[None, :, 2])
    y2 = np.minimum(pa[:, None, 3], pb[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (pa[:, 2] - pa[:, 0]) * (pa[:, 3] - pa[:, 1])
    area_b = (pb[:, 2] - pb[:, 0]) * (pb[:, 3] - pb[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)


def _associate(
    tracks: list[_Track], dets: list[Detection], min_iou: float
) -> tuple[list[tuple[int, int]], list[int], list[int]]:
    """Matched (track, detection) index pairs, unmatched tracks, unmatched detections. Same class only."""
    if not tracks or not dets:
        return [], list(range(len(tracks))), list(range(len(dets)))
    iou = iou_matrix([t.box for t in tracks], [d.box for d in dets])
    same = np.array([[t.class_id == d.class_id for d in dets] for t in tracks])
    iou = np.where(same, iou, 0.0)
    rows, cols = linear_sum_assignment(-iou)
    pairs = [(int(r), int(c)) for r, c in zip(rows, cols, strict=True) if iou[r, c] >= min_iou]
    used_t, used_d = {r for r, _ in pairs}, {c for _, c in pairs}
    return (
        pairs,
        [i for i in range(len(tracks)) if i not in used_t],
        [j for j in range(len(dets)) if j not in used_d],
    )


class Tracker:
    """One per video stream. Not thread-safe: call `update` from one thread at a time."""

    def __init__(self, config: TrackerConfig | None = None) -> None:
        self.config = config or TrackerConfig()
        self._tracks: list[_Track] = []
        self._ids = itertools.count(1)
        self.last_id = 0  # the newest id given (ids count up from 1)
        self.removed: list[TrackSnapshot] = []  # tracks dropped by the latest update (zone exits)

    def update(self, detections: Sequence[Detection], t: float) -> tuple[TrackSnapshot, ...]:
        """Associate one result's detections (frame time `t`, seconds, increasing) with the tracks.

        Returns every live track (matched ones carry this frame's score; confirmed ones an id)."""
        cfg = self.config
        seen_last = {id(tr) for tr in self._tracks if tr.matched}
        for track in self._tracks:
            track.predict(t)
            track.matched = False
        high = [d for d in detections if d.score >= cfg.high_threshold]
        low = [d for d in detections if cfg.low_threshold <= d.score < cfg.high_threshold]
        confirmed = [tr for tr in self._tracks if tr.track_id is not None]
        tentative = [tr for tr in self._tracks if tr.track_id is None]

        # 1. High-score detections against every confirmed track (lost ones included).
        pairs, rest_tracks, rest_high = _associate(confirmed, high, cfg.match_iou)
        for ti, di in pairs:
            confirmed[ti].update(high[di], t)
        # 2. Low-score detections against the confirmed tracks seen by the previous result (not lost ones).
        recent = [confirmed[i] for i in rest_tracks if id(confirmed[i]) in seen_last]
        pairs, _, _ = _associate(recent, low, cfg.low_match_iou)
        for ti, di in pairs:
            recent[ti].update(low[di], t)
        # 3. Tentative tracks against the high-score detections left.
        high_left = [high[j] for j in rest_high]
        pairs, _, new = _associate(tentative, high_left, cfg.match_iou)
        for ti, di in pairs:
            track = tentative[ti]
            track.update(high_left[di], t)
            if track.hits >= cfg.min_hits:
                track.track_id = self.last_id = next(self._ids)
        # 4. New tracks; a tentative track that missed once is gone, a confirmed one after max_lost_s.
        self.removed = []
        kept: list[_Track] = []
        for track in self._tracks:
            if track.matched or (track.track_id is not None and t - track.last_matched <= cfg.max_lost_s):
                kept.append(track)
            elif track.track_id is not None:
                self.removed.append(track.snapshot(cfg.max_predict_s))
        # A detection overlapping a track this result already matched is a second box on the same object
        # (NMS keeps pairs under its IoU): no new track, or the object would soon carry two ids.
        taken = [tr.box for tr in kept if tr.matched]
        overlap = iou_matrix([high_left[j].box for j in new], taken)
        for row, j in enumerate(new):
            if taken and overlap[row].max() >= cfg.duplicate_iou:
                continue
            track = _Track(high_left[j], t, cfg)
            if cfg.min_hits <= 1:
                track.track_id = self.last_id = next(self._ids)
            kept.append(track)
        self._tracks = kept
        return tuple(tr.snapshot(cfg.max_predict_s) for tr in self._tracks)


def tracked_detections(tracks: Sequence[TrackSnapshot]) -> tuple[Detection, ...]:
    """This result's detections with their ids: the tracks matched by it, at their filtered boxes."""
    return tuple(tr.detection() for tr in tracks if tr.matched)
