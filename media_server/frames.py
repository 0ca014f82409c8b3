"""Where decoded frames come from, and how one becomes the detector's input: the decoder seam.

By default aiortc decodes (its receiver runs libvpx / FFmpeg in a thread and queues `av.VideoFrame`s on the
remote track); `TrackFrameSource` reads them and `to_bgr` converts on the CPU. A GPU decoder (NVDEC) plugs
in as another `FrameSource` (frames that stay in device memory) with its own `FrameConverter`; nothing
downstream changes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import VideoFrame


class FrameSource(Protocol):
    async def next_frame(self) -> VideoFrame:
        """The next decoded frame; raises `aiortc.mediastreams.MediaStreamError` once the track ended."""
        ...

    def close(self) -> None: ...


FrameConverter = Callable[[VideoFrame], np.ndarray]  # -> HxWx3 uint8 BGR, called in a worker thread
FrameSourceFactory = Callable[[MediaStreamTrack], FrameSource]


class TrackFrameSource:
    """Decoded frames from an aiortc remote track (aiortc's default decoder)."""

    def __init__(self, track: MediaStreamTrack) -> None:
        self._track = track

    async def next_frame(self) -> VideoFrame:
        frame = await self._track.recv()
        if not isinstance(frame, VideoFrame):
            raise MediaStreamError(f"expected a video frame, got {type(frame).__name__}")
        return frame

    def close(self) -> None:
        self._track.stop()


def to_bgr(frame: VideoFrame) -> np.ndarray:
    """YUV -> BGR with libswscale (about 0.5 ms for 640x480): CPU work, run it off the event loop."""
    return frame.to_ndarray(format="bgr24")
