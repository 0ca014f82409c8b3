"""The detection track: per peer, a reader task, an inference task and a thin outgoing track.

    remote track --reader--> output buffer ------------------------> DetectionTrack.recv() -> encoder
                     \\--> inference buffer (backpressure policy) --> Detector (shared batcher)
                                          -> tracker + zones -> latest result + sprites, data channel

The reader drains aiortc's unbounded remote queue as fast as frames are decoded, so nothing queues up there
however slow inference is. Every frame goes back out (output FPS = input FPS) with the most recent result
drawn, each tracked box moved to that frame's time (its pts against the pts of the frame the result came
from); only inference skips frames, and every skipped frame is counted.

Thread round trips per inferred frame: three, all but the batcher's on the pipeline's own executor (never
the loop's default executor, which aiortc's encoders use): frame conversion + pre-processing, the engine
(batcher), decoding + tracking + zones + rendering. Drawing onto each outgoing frame runs on the loop (a
masked copy, about 0.2 ms at 640x480).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, runtime_checkable

from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import VideoFrame

from inference.errors import InferenceError, OverloadedError
from inference.pipeline import Prepared, RawOutput
from inference.ratelog import RateLimitedLog
from inference.tracking import Tracker, TrackerConfig, TrackSnapshot, constant_velocity
from inference.types import Box, DetectionResult, DetectParams
from inference.zones import Geometry, ZoneEvent, ZoneMonitor
from media_server.detector import DetectorLike
from media_server.frames import FrameConverter, FrameSource, normalize, to_bgr
from media_server.overlay import Sprites, render_sprites
from media_server.settings import BackpressurePolicy
from observability.live import LiveMetrics
from rtc.buffers import DropBuffer
from rtc.messages import DetectionsMessage, detection_dicts, events_message

logger = logging.getLogger(__name__)

# Frames waiting for the encoder. The sender pulls one frame per encode, so this stays at 0-1 unless the
# encoder falls behind; the bound keeps latency from growing if it does (dropped frames are counted).
OUTPUT_BUFFER_FRAMES = 8
# After an engine failure, wait before the next attempt: a broken engine must not spin the event loop.
FAILURE_BACKOFF_S = 0.2
# A failing engine fails every frame of every peer: one line per kind of failure per interval, server-wide.
_failure_log = RateLimitedLog(logger, interval_s=10.0)

ResultCallback = Callable[[Any], None]  # a data-channel message (rtc/messages.py), sent as JSON
T = TypeVar("T")


@dataclass(slots=True)
class InFrame:
    frame: VideoFrame
    seq: int  # per peer, from 0
    received: float  # time.monotonic() when the decoded frame reached the reader


@dataclass(frozen=True, slots=True)
class LiveResult:
    seq: int
    received: float
    published: float
    result: DetectionResult  # the detections sent and drawn (tracked: with ids, at their filtered boxes)
    sprites: Sprites
    tracks: tuple[TrackSnapshot, ...]  # the drawn detections' tracks, in the same order (empty untracked)
    events: tuple[ZoneEvent, ...] = ()


@dataclass(frozen=True, slots=True)
class LiveOptions:
    """Tracking, box prediction and zones for one peer's pipeline (from the server's settings)."""

    tracking: bool = True
    predict: bool = True
    low_threshold: float = 0.1
    max_lost_s: float = 1.0
    geometry: Geometry = dataclasses.field(default_factory=Geometry)
    acceleration: bool = True  # predicted with the tracks' acceleration; off: constant velocity

    def tracker_config(self, score_threshold: float) -> TrackerConfig:
        config = TrackerConfig(
            high_threshold=score_threshold,
            low_threshold=min(self.low_threshold, score_threshold),
            max_lost_s=self.max_lost_s,
        )
        return config if self.acceleration else constant_velocity(config)


@runtime_checkable
class StagedDetector(Protocol):
    """`inference.pipeline.Detector`'s detect in three steps, so the blocking two share thread hops with
    the pipeline's own work (test fakes without it take `detect`)."""

    def prepare(self, image: Any) -> Prepared: ...

    async def infer_prepared(self, prepared: Prepared) -> RawOutput: ...

    def finish(self, prepared: Prepared, raw: RawOutput, params: DetectParams = ...) -> DetectionResult: ...


def frame_time(item: InFrame) -> float:
    """Seconds on the stream's own clock (pts), the clock of both tracker updates and outgoing frames;
    the arrival time if the frame has no pts."""
    frame = item.frame
    if frame.pts is not None and frame.time_base is not None:
        return float(frame.pts * frame.time_base)
    return item.received


class PeerMedia(Protocol):
    """What a peer session drives: the track it sends back, fed by the track it receives."""

    outgoing: MediaStreamTrack
    params: DetectParams
    on_result: ResultCallback | None  # a detection result, as the data channel's JSON
    on_ended: Callable[[], None] | None  # the remote track ended
    on_crashed: Callable[[BaseException], None] | None  # a pipeline task died of a bug

    def start(self, source: FrameSource) -> None: ...

    async def stop(self) -> None: ...

    @property
    def last_activity(self) -> float: ...

    def stats(self) -> dict[str, Any]: ...


def result_message(
    item: InFrame, result: DetectionResult, published: float, stats: dict[str, Any]
) -> DetectionsMessage:
    """The JSON sent on the data channel for each detection result (schema: rtc/messages.py)."""
    frame = item.frame
    return {
        "type": "detections",
        "seq": item.seq,
        "pts": frame.pts,
        "time_base": str(frame.time_base) if frame.time_base is not None else None,
        "width": result.width,
        "height": result.height,
        "detections": detection_dicts(result.detections),
        "inference_ms": round(result.timings.inference, 3),
        "detect_ms": round(result.timings.total, 3),
        "age_ms": round((published - item.received) * 1e3, 3),
        "batch_size": result.batch_size,
        "frames_in": stats["frames_in"],
        "frames_inferred": stats["frames_inferred"],
        "frames_dropped": stats["frames_dropped_inference"],
    }


class _MediaBase:
    """Counters and the result callback shared by both pipelines."""

    def __init__(self, metrics: LiveMetrics, params: DetectParams) -> None:
        self.metrics = metrics
        self.params = params
        self.on_result: ResultCallback | None = None  # set by the peer session: sends on the data channel
        self.on_ended: Callable[[], None] | None = None
        self.on_crashed: Callable[[BaseException], None] | None = None
        self._last_activity = time.monotonic()
        self.frames_in = 0
        self.frames_out = 0
        self.frames_inferred = 0
        self.frames_dropped_inference = 0
        self.frames_dropped_output = 0
        self.inference_failures = 0

    @property
    def last_activity(self) -> float:
        return self._last_activity

    def stats(self) -> dict[str, Any]:
        return {
            "thread_hops": getattr(self, "thread_hops", 0),
            "tracks_started": getattr(self, "tracks_started", 0),
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "frames_inferred": self.frames_inferred,
            "frames_dropped_inference": self.frames_dropped_inference,
            "frames_dropped_output": self.frames_dropped_output,
            "inference_failures": self.inference_failures,
            "score_threshold": self.params.score_threshold,
        }

    def _received(self) -> float:
        now = time.monotonic()
        self._last_activity = now
        self.frames_in += 1
        self.metrics.frames_in.inc()
        return now

    def _sent(self, received: float) -> None:
        self.frames_out += 1
        self.metrics.frames_out.inc()
        self.metrics.frame_latency.observe(time.monotonic() - received)

    def _failed(self, error: Exception) -> None:
        kind = "overloaded" if isinstance(error, OverloadedError) else "inference"
        self.inference_failures += 1
        self.metrics.inference_failures.labels(error=kind).inc()
        _failure_log.warning(
            kind, "live detection failed (%d so far on this peer): %s", self.inference_failures, error
        )


class LivePipeline(_MediaBase):
    """rtdetect's pipeline for one peer (see the module docstring)."""

    def __init__(
        self,
        detector: DetectorLike,
        metrics: LiveMetrics,
        *,
        params: DetectParams,
        policy: BackpressurePolicy,
        buffer_size: int,
        max_detection_age_s: float,
        executor: Executor | None,
        converter: FrameConverter = to_bgr,
        options: LiveOptions | None = None,
    ) -> None:
        super().__init__(metrics, params)
        self._detector = detector
        self._executor = executor
        self._converter = converter
        self._max_age_s = max_detection_age_s
        self.options = options or LiveOptions()
        self._staged = isinstance(detector, StagedDetector)
        # Touched only by the worker-thread step of one result at a time (this peer infers one frame at a
        # time); the loop hands it new geometry through `_geometry` (one reference swap).
        self._tracker = Tracker(self.options.tracker_config(params.score_threshold))
        self._zones = ZoneMonitor(self.options.geometry)
        self._geometry: Geometry = self.options.geometry
        self.thread_hops = 0  # thread round trips of the inference path (docs/media_server.md)
        self.tracks_started = 0
        # Test and benchmark seam: each outgoing frame, the boxes drawn on it and the result they come from.
        self.on_drawn: Callable[[InFrame, Sequence[Box], LiveResult | None], None] | None = None
        capacity = 1 if policy is BackpressurePolicy.LATEST else buffer_size
        self._to_infer: DropBuffer[InFrame] = DropBuffer(capacity)
        self._to_send: DropBuffer[InFrame] = DropBuffer(OUTPUT_BUFFER_FRAMES)
        self._latest: LiveResult | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._source: FrameSource | None = None
        self.outgoing: MediaStreamTrack = DetectionTrack(self)

    def start(self, source: FrameSource) -> None:
        if self._source is not None:
            raise RuntimeError("pipeline already started")
        self._source = source
        self._tasks = [
            asyncio.create_task(self._read(source), name="rtdetect-reader"),
            asyncio.create_task(self._infer(), name="rtdetect-infer"),
        ]
        for task in self._tasks:
            task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if error is not None and self.on_crashed is not None:
            self.on_crashed(error)

    async def stop(self) -> None:
        self._to_send.close()
        self._to_infer.close()
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks = []
        if self._source is not None:
            self._source.close()
        self.outgoing.stop()
        self._latest = None

    async def _read(self, source: FrameSource) -> None:
        seq = 0
        while True:
            try:
                frame = await source.next_frame()
            except MediaStreamError:
                # The remote track ended (peer gone or closed): let the session clean up.
                self._to_send.close()
                if self.on_ended is not None:
                    self.on_ended()
                return
            item = InFrame(normalize(frame), seq, self._received())
            seq += 1
            if self._to_send.put(item):
                self.frames_dropped_output += 1
                self.metrics.frames_dropped.labels(stage="output").inc()
            if self._to_infer.put(item):
                self.frames_dropped_inference += 1
                self.metrics.frames_dropped.labels(stage="inference").inc()

    def set_geometry(self, geometry: Geometry) -> None:
        """This peer's zones and lines (the server's plus its own); applies from the next result."""
        self._geometry = geometry

    def _prepare(self, item: InFrame) -> Prepared:
        """Hop 1 (worker thread): the decoded frame -> BGR -> the model's input tensor."""
        assert isinstance(self._detector, StagedDetector)
        return self._detector.prepare(self._converter(item.frame))

    def _track(self, item: InFrame, result: DetectionResult, params: DetectParams) -> LiveResult:
        """The last hop (worker thread): tracks, zone events, and the boxes rendered once for this result."""
        frame = item.frame
        options = self.options
        tracks: tuple[TrackSnapshot, ...] = ()
        events: tuple[ZoneEvent, ...] = ()
        if options.tracking:
            tracker = self._tracker
            tracker.config = options.tracker_config(params.score_threshold)
            snapshots = tracker.update(result.detections, frame_time(item))
            # Low-score matches keep ids alive through occlusions; what is shown honours the threshold.
            tracks = tuple(t for t in snapshots if t.matched and t.score >= params.score_threshold)
            result = dataclasses.replace(result, detections=tuple(t.detection() for t in tracks))
            if self._zones.geometry is not self._geometry:
                self._zones.set_geometry(self._geometry)
            events = tuple(
                self._zones.update(
                    snapshots,
                    tracker.removed,
                    frame.width,
                    frame.height,
                    time=time.time(),
                    pts_s=frame_time(item),
                )
            )
        sprites = render_sprites(result.detections, frame.width, frame.height)
        return LiveResult(item.seq, item.received, 0.0, result, sprites, tracks, events)

    def _finish_staged(
        self, item: InFrame, prepared: Prepared, raw: RawOutput, ask: DetectParams, params: DetectParams
    ) -> LiveResult:
        """Hop 3 (worker thread): decoding + NMS fused with tracking and rendering."""
        assert isinstance(self._detector, StagedDetector)
        return self._track(item, self._detector.finish(prepared, raw, ask), params)

    async def _detect(self, item: InFrame) -> LiveResult:
        loop = asyncio.get_running_loop()
        params = self.params
        # The tracker's second association needs the detections under the threshold too.
        ask = params
        if self.options.tracking and self.options.low_threshold < params.score_threshold:
            ask = dataclasses.replace(params, score_threshold=self.options.low_threshold)
        detector = self._detector
        if self._staged and isinstance(detector, StagedDetector):
            prepared = await loop.run_in_executor(self._executor, self._prepare, item)
            raw = await detector.infer_prepared(prepared)
            self.thread_hops += 3
            return await loop.run_in_executor(
                self._executor, self._finish_staged, item, prepared, raw, ask, params
            )
        image = await loop.run_in_executor(self._executor, self._converter, item.frame)
        result = await detector.detect(image, ask)
        self.thread_hops += 2  # plus whatever `detect` does inside
        return await loop.run_in_executor(self._executor, self._track, item, result, params)

    async def _infer(self) -> None:
        while True:
            try:
                item = await self._to_infer.get()
            except MediaStreamError:  # closed: the pipeline is stopping
                return
            try:
                live = await self._detect(item)
            except OverloadedError as e:
                # The shared queue is full (too many peers for this engine): this frame is dropped.
                self._failed(e)
                self.frames_dropped_inference += 1
                self.metrics.frames_dropped.labels(stage="inference").inc()
                await asyncio.sleep(FAILURE_BACKOFF_S)
                continue
            except InferenceError as e:
                self._failed(e)
                await asyncio.sleep(FAILURE_BACKOFF_S)
                continue
            live = dataclasses.replace(live, published=time.monotonic())
            if self._tracker.last_id > self.tracks_started:
                self.metrics.tracks_started.inc(self._tracker.last_id - self.tracks_started)
                self.tracks_started = self._tracker.last_id
            self._latest = live
            self.frames_inferred += 1
            self.metrics.frames_inferred.inc()
            for event in live.events:
                self.metrics.zone_event(event.name, event.source, event.type, event.direction)
            if self.on_result is not None:
                self.on_result(result_message(item, live.result, live.published, self.stats()))
                if live.events:
                    self.on_result(events_message(item.seq, live.events))

    async def next_output(self) -> InFrame:
        return await self._to_send.get()

    def annotate(self, item: InFrame) -> VideoFrame:
        """The outgoing frame: `item`'s frame with the newest result drawn, unless that is too old; each
        tracked box moved to this frame's time (`LiveOptions.predict`)."""
        live = self._latest
        frame = item.frame
        drawn: Sequence[Box] = ()
        if live is not None:
            age = item.received - live.received
            if age <= self._max_age_s:
                self.metrics.detection_age.observe(max(age, 0.0))
                detections = live.result.detections
                if detections:
                    offsets: list[tuple[int, int]] | None = None
                    drawn = [d.box for d in detections]
                    if self.options.predict and live.tracks:
                        t = frame_time(item)
                        drawn = [track.box_at(t) for track in live.tracks]
                        offsets = [
                            (
                                round((b[0] + b[2] - d.box[0] - d.box[2]) / 2),
                                round((b[1] + b[3] - d.box[1] - d.box[3]) / 2),
                            )
                            for b, d in zip(drawn, detections, strict=True)
                        ]
                    frame = live.sprites.apply(frame, offsets)
        if self.on_drawn is not None:
            self.on_drawn(item, drawn, live)
        self._sent(item.received)
        return frame


class DetectionTrack(MediaStreamTrack):
    """The track sent back to the peer. Thin: takes the next received frame and the newest overlay."""

    kind = "video"

    def __init__(self, pipeline: LivePipeline) -> None:
        super().__init__()
        self._pipeline = pipeline

    async def recv(self) -> VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        item = await self._pipeline.next_output()
        return self._pipeline.annotate(item)
