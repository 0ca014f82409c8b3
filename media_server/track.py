"""The detection track: per peer, a reader task, an inference task and a thin outgoing track.

    remote track --reader--> output buffer ------------------------> DetectionTrack.recv() -> encoder
                     \\--> inference buffer (backpressure policy) --> Detector (shared batcher)
                                                                   \\-> latest result + overlay, data channel

The reader drains aiortc's unbounded remote queue as fast as frames are decoded, so nothing queues up there
however slow inference is. Every frame goes back out (output FPS = input FPS) with the most recent result
drawn; only inference skips frames, and every skipped frame is counted.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import VideoFrame

from inference.errors import InferenceError, OverloadedError
from inference.ratelog import RateLimitedLog
from inference.types import DetectionResult, DetectParams
from media_server.detector import DetectorLike
from media_server.frames import FrameConverter, FrameSource, normalize, to_bgr
from media_server.overlay import Overlay, render_overlay
from media_server.settings import BackpressurePolicy
from observability.live import LiveMetrics

logger = logging.getLogger(__name__)

# Frames waiting for the encoder. The sender pulls one frame per encode, so this stays at 0-1 unless the
# encoder falls behind; the bound keeps latency from growing if it does (dropped frames are counted).
OUTPUT_BUFFER_FRAMES = 8
# After an engine failure, wait before the next attempt: a broken engine must not spin the event loop.
FAILURE_BACKOFF_S = 0.2
# A failing engine fails every frame of every peer: one line per kind of failure per interval, server-wide.
_failure_log = RateLimitedLog(logger, interval_s=10.0)

ResultCallback = Callable[[dict[str, Any]], None]
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
    result: DetectionResult
    overlay: Overlay


class DropBuffer(Generic[T]):
    """A bounded FIFO that drops its oldest item when full (single consumer).

    `latest` is this with room for one item: a new frame replaces the waiting one.
    """

    def __init__(self, capacity: int) -> None:
        self._items: collections.deque[T] = collections.deque()
        self._capacity = capacity
        self._ready = asyncio.Event()
        self._closed = False

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: T) -> int:
        """Add `item`; returns how many items were dropped to make room (0 or 1)."""
        dropped = 0
        if len(self._items) >= self._capacity:
            self._items.popleft()
            dropped = 1
        self._items.append(item)
        self._ready.set()
        return dropped

    async def get(self) -> T:
        """The oldest item; raises MediaStreamError once closed and empty."""
        while not self._items:
            if self._closed:
                raise MediaStreamError("buffer closed")
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()

    def close(self) -> None:
        self._closed = True
        self._ready.set()


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
) -> dict[str, Any]:
    """The JSON sent on the data channel for each detection result."""
    frame = item.frame
    return {
        "type": "detections",
        "seq": item.seq,
        "pts": frame.pts,
        "time_base": str(frame.time_base) if frame.time_base is not None else None,
        "width": result.width,
        "height": result.height,
        "detections": [d.to_dict() for d in result.detections],
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
    ) -> None:
        super().__init__(metrics, params)
        self._detector = detector
        self._executor = executor
        self._converter = converter
        self._max_age_s = max_detection_age_s
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

    async def _infer(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                item = await self._to_infer.get()
            except MediaStreamError:  # closed: the pipeline is stopping
                return
            try:
                image = await loop.run_in_executor(self._executor, self._converter, item.frame)
                result = await self._detector.detect(image, self.params)
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
            overlay = await loop.run_in_executor(
                self._executor, render_overlay, result.detections, item.frame.width, item.frame.height
            )
            live = LiveResult(item.seq, item.received, time.monotonic(), result, overlay)
            self._latest = live
            self.frames_inferred += 1
            self.metrics.frames_inferred.inc()
            if self.on_result is not None:
                self.on_result(result_message(item, result, live.published, self.stats()))

    async def next_output(self) -> InFrame:
        return await self._to_send.get()

    def annotate(self, item: InFrame) -> VideoFrame:
        """The outgoing frame: `item`'s frame with the newest result drawn, unless that is too old."""
        live = self._latest
        frame = item.frame
        if live is not None:
            age = item.received - live.received
            if age <= self._max_age_s:
                self.metrics.detection_age.observe(max(age, 0.0))
                if live.result.detections:
                    frame = live.overlay.apply(frame)
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
