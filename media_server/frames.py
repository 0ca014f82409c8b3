"""Where decoded frames come from, and how one becomes the detector's input: the decoder seam.

By default aiortc decodes (its receiver runs libvpx / FFmpeg in a thread and queues `av.VideoFrame`s on the
remote track); `TrackFrameSource` reads them and `to_bgr` converts on the CPU. A GPU decoder (NVDEC) plugs
in as another `FrameSource` (frames that stay in device memory) with its own `FrameConverter`; nothing
downstream changes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import cv2
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


# What aiortc's decoders produce: VP8 gives yuv420p; H264 from browsers often yuvj420p (full range).
I420_FORMATS = ("yuv420p", "yuvj420p")


def normalize(frame: VideoFrame) -> VideoFrame:
    """`frame` itself when it is I420 with even sides (always, from aiortc's decoders), else a converted copy.

    Downstream, frames are then read only through their plane buffers (`i420_array`), never reformatted
    by us: an `av.VideoFrame` reformatted from two threads at once (our worker, the encoder's thread)
    deadlocks inside libswscale.
    """
    if frame.format.name in I420_FORMATS and frame.width % 2 == 0 and frame.height % 2 == 0:
        return frame
    return frame.reformat(width=frame.width & ~1, height=frame.height & ~1, format="yuv420p")


def i420_array(frame: VideoFrame) -> np.ndarray:
    """A copy of a normalized frame's planes as one (H * 3 / 2, W) I420 array, straight from its buffers."""
    if frame.format.name not in I420_FORMATS or frame.width % 2 or frame.height % 2:
        raise ValueError(f"not a normalized I420 frame: {frame.format.name} {frame.width}x{frame.height}")
    w, h = frame.width, frame.height
    out = np.empty((h * 3 // 2, w), np.uint8)
    # The chroma planes are (h/2, w/2) each, packed back to back after Y: slice them by flat offset, not by
    # rows of the (H * 3 / 2, W) view, since h/2 is odd whenever h is not a multiple of 4 (270, 478).
    flat = out.reshape(-1)
    luma, chroma = h * w, (h // 2) * (w // 2)
    targets = (
        out[:h],
        flat[luma : luma + chroma].reshape(h // 2, w // 2),
        flat[luma + chroma :].reshape(h // 2, w // 2),
    )
    for plane, target in zip(frame.planes, targets, strict=True):
        rows, cols = target.shape
        source = np.frombuffer(memoryview(plane), np.uint8).reshape(-1, plane.line_size)
        target[...] = source[:rows, :cols]
    return out


# Full range (yuvj420p, JPEG levels) -> limited range (video levels), as cv2's I420 conversion expects.
_Y_TO_LIMITED = np.round(16 + np.arange(256) * (219 / 255)).astype(np.uint8)
_C_TO_LIMITED = np.round(128 + (np.arange(256) - 128) * (224 / 255)).astype(np.uint8)


def to_bgr(frame: VideoFrame) -> np.ndarray:
    """A normalized frame as HxWx3 uint8 BGR (about 1 ms for 640x480): run it off the event loop."""
    i420 = i420_array(frame)
    if frame.format.name == "yuvj420p":
        h = frame.height
        i420[:h] = cv2.LUT(i420[:h], _Y_TO_LIMITED)
        i420[h:] = cv2.LUT(i420[h:], _C_TO_LIMITED)
    return cv2.cvtColor(i420, cv2.COLOR_YUV2BGR_I420)
