"""The benchmark's naive baseline: inference inline in the outgoing track's recv(), like aiortc's example
server. When inference is slower than the camera, aiortc's unbounded remote queue grows and so does the
latency. Built only by `tools.bench_server` and the tests; never used to serve."""

from __future__ import annotations

import asyncio
import time

from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import VideoFrame

from inference.draw import draw_detections
from inference.errors import InferenceError, OverloadedError
from inference.types import DetectParams
from media_server.app import ServerState
from media_server.detector import DetectorLike
from media_server.frames import FrameSource
from media_server.track import InFrame, PeerMedia, _MediaBase, result_message
from observability.live import LiveMetrics


class NaivePipeline(_MediaBase):
    """Decode, infer and draw on the event loop, one frame per recv()."""

    def __init__(self, detector: DetectorLike, metrics: LiveMetrics, *, params: DetectParams) -> None:
        super().__init__(metrics, params)
        self._detector = detector
        self._source: asyncio.Future[FrameSource] = asyncio.get_running_loop().create_future()
        self.outgoing: MediaStreamTrack = _NaiveTrack(self)

    def start(self, source: FrameSource) -> None:
        self._source.set_result(source)

    async def stop(self) -> None:
        if self._source.done():
            self._source.result().close()
        else:
            self._source.cancel()
        self.outgoing.stop()

    async def next_frame(self) -> VideoFrame:
        source = await self._source
        try:
            frame = await source.next_frame()
        except MediaStreamError:
            if self.on_ended is not None:
                self.on_ended()
            raise
        received = self._received()
        image = frame.to_ndarray(format="bgr24")  # on the event loop, as the example does
        try:
            result = await self._detector.detect(image, self.params)
        except (OverloadedError, InferenceError) as e:
            self._failed(e)
            self._sent(received)
            return frame
        self.frames_inferred += 1
        self.metrics.frames_inferred.inc()
        draw_detections(image, result.detections, inplace=True)
        out = VideoFrame.from_ndarray(image, format="bgr24")
        out.pts = frame.pts
        if frame.time_base is not None:
            out.time_base = frame.time_base
        if self.on_result is not None:
            item = InFrame(frame, self.frames_in - 1, received)
            self.on_result(result_message(item, result, time.monotonic(), self.stats()))
        self._sent(received)
        return out


class _NaiveTrack(MediaStreamTrack):
    kind = "video"

    def __init__(self, pipeline: NaivePipeline) -> None:
        super().__init__()
        self._pipeline = pipeline

    async def recv(self) -> VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        return await self._pipeline.next_frame()


def naive_media(state: ServerState, params: DetectParams) -> PeerMedia:
    """A `media_server.app.MediaFactory` that gives every peer the naive pipeline."""
    return NaivePipeline(state.detector, state.metrics, params=params)
