"""Frame sizes whose sides are not multiples of 4 (Chrome's 480x270 downscale step, odd sizes): converted,
annotated and streamed back, unit-level and through a real aiortc peer, including a size change mid-call."""

from __future__ import annotations

import asyncio
import fractions
import time

import aiohttp
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import VideoFrame

from inference.types import Detection
from media_server.frames import i420_array, normalize, to_bgr
from media_server.overlay import render_overlay
from tests.media_support import FakeDetector, RunningServer, loopback_settings, running_server
from tools.synthetic import NumberedTrack

SIZES = [(480, 270), (640, 478), (641, 479), (642, 270), (320, 182)]
# Inside every size above, so the overlay draws it whatever frame it lands on.
BOX = Detection(0, "person", 0.9, (40.0, 30.0, 250.0, 160.0))
GREY = 128


def _grey_frame(width: int, height: int, fmt: str = "yuv420p") -> VideoFrame:
    frame = VideoFrame.from_ndarray(np.full((height, width, 3), GREY, np.uint8), format="bgr24")
    return frame.reformat(format=fmt)


def _annotated_pixels(bgr: np.ndarray) -> int:
    """Pixels far from the grey background: the drawn box (codec noise on flat grey stays far below 60)."""
    return int((np.abs(bgr.astype(np.int16) - GREY).max(axis=2) > 60).sum())


@pytest.mark.parametrize("fmt", ["yuv420p", "yuvj420p"])
@pytest.mark.parametrize(("width", "height"), SIZES)
def test_odd_sizes_convert_and_overlay(width: int, height: int, fmt: str) -> None:
    frame = normalize(_grey_frame(width, height, fmt))
    # Even sides after normalize; h/2 may be odd (270 -> 135 chroma rows), which the packing must allow.
    assert (frame.width, frame.height) == (width & ~1, height & ~1)
    i420 = i420_array(frame)
    assert i420.shape == (frame.height * 3 // 2, frame.width)
    bgr = to_bgr(frame)
    assert bgr.shape == (frame.height, frame.width, 3)
    assert np.abs(bgr.astype(np.int16) - GREY).max() <= 3  # the planes landed where cv2 expects them
    assert _annotated_pixels(bgr) == 0

    # Rendered for 640x480, applied to this size (the resized path), and rendered for this size directly.
    for overlay in (render_overlay([BOX], 640, 480), render_overlay([BOX], frame.width, frame.height)):
        frame.pts, frame.time_base = 3000, fractions.Fraction(1, 90000)
        out = overlay.apply(frame)
        assert (out.width, out.height, out.format.name) == (frame.width, frame.height, frame.format.name)
        assert (out.pts, out.time_base) == (3000, frame.time_base)
        assert _annotated_pixels(to_bgr(out)) > 200
        # Outside the box the frame is untouched.
        assert np.abs(to_bgr(out)[-6:, -6:].astype(np.int16) - GREY).max() <= 3


class SizeScheduleTrack(MediaStreamTrack):
    """Grey frames at 30 fps whose size follows a schedule: (size, frame count) pairs, the last size repeating."""

    kind = "video"

    def __init__(self, schedule: list[tuple[tuple[int, int], int]]) -> None:
        super().__init__()
        self._schedule = schedule
        self._sent = 0
        self._start: float | None = None

    def _size(self) -> tuple[int, int]:
        n = self._sent
        for size, count in self._schedule:
            if n < count:
                return size
            n -= count
        return self._schedule[-1][0]

    async def recv(self) -> VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._start is None:
            self._start = now
        delay = self._start + self._sent / 30 - now
        if delay > 0:
            await asyncio.sleep(delay)
        frame = _grey_frame(*self._size())
        frame.pts = self._sent * 3000
        frame.time_base = fractions.Fraction(1, 90000)
        self._sent += 1
        return frame


async def _stream(
    server: RunningServer,
    http: aiohttp.ClientSession,
    track: MediaStreamTrack,
    want: dict[tuple[int, int], int],
) -> dict[tuple[int, int], int]:
    """Send `track`; count annotated frames received back per size until each size in `want` has its count.
    The server's peer must still be up then (before the fix it closed with reason "error" after two frames)."""
    url = server.url
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    annotated: dict[tuple[int, int], int] = {}
    done = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []

    async def receive(remote: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await remote.recv()
            except MediaStreamError:
                return
            assert isinstance(frame, VideoFrame)
            size = (frame.width, frame.height)
            if _annotated_pixels(frame.to_ndarray(format="bgr24")) > 200:
                annotated[size] = annotated.get(size, 0) + 1
            if all(annotated.get(s, 0) >= n for s, n in want.items()):
                done.set()

    pc.on("track", lambda remote: tasks.append(asyncio.create_task(receive(remote))))
    try:
        pc.addTransceiver(track, direction="sendrecv")
        pc.createDataChannel("detections")
        await pc.setLocalDescription(await pc.createOffer())
        async with http.post(url + "/offer", json={"sdp": pc.localDescription.sdp, "type": "offer"}) as resp:
            body = await resp.json()
            assert resp.status == 200, body
        await pc.setRemoteDescription(RTCSessionDescription(sdp=body["sdp"], type=body["type"]))
        try:
            await asyncio.wait_for(done.wait(), 40)
        except TimeoutError:
            raise AssertionError(f"annotated frames back per size: {annotated}, wanted {want}") from None
        assert [p.pc.connectionState for p in server.state.peers] == ["connected"]
        return annotated
    finally:
        track.stop()
        await pc.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@pytest.mark.parametrize(("width", "height"), [(480, 270), (641, 479)])
async def test_odd_size_stream_comes_back_annotated(width: int, height: int) -> None:
    detector = FakeDetector((BOX,))
    async with running_server(loopback_settings(), detector) as server, aiohttp.ClientSession() as http:
        track = SizeScheduleTrack([((width, height), 1)])
        await _stream(server, http, track, {(width & ~1, height & ~1): 10})
        assert (
            server.state.registry.get_sample_value("rtdetect_live_peers_closed_total", {"reason": "error"})
            == 0
        )


async def test_size_change_mid_call() -> None:
    detector = FakeDetector((BOX,))
    async with running_server(loopback_settings(), detector) as server, aiohttp.ClientSession() as http:
        # 640x480, then Chrome's 480x270 step, then an odd size, then back.
        track = SizeScheduleTrack([((640, 480), 30), ((480, 270), 30), ((641, 479), 30), ((640, 480), 1)])
        await _stream(server, http, track, {(640, 480): 5, (480, 270): 5, (640, 478): 5})
        assert (
            server.state.registry.get_sample_value("rtdetect_live_peers_closed_total", {"reason": "error"})
            == 0
        )


async def test_synthetic_track_at_480x270() -> None:
    """The benchmark's numbered track works at sizes whose chroma rows are odd."""
    track = NumberedTrack(np.full((64, 64, 3), 90, np.uint8), width=480, height=270)
    frame = await track.recv()
    assert (frame.width, frame.height) == (480, 270)
    track.stop()
