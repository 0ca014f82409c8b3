"""The live page's relay (web/relay.py) without Streamlit: frame hand-off, stats, and a real WebRTC round
trip through the real media server app (with a fake detector, so the boxes are known)."""

from __future__ import annotations

import asyncio
import fractions
import json

import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack, VideoStreamTrack
from av import VideoFrame

from inference.types import Detection
from tests.media_support import FakeDetector, loopback_settings, running_server
from tools.servers import free_port
from web.ice import aiortc_configuration
from web.relay import LatestFrameTrack, LiveStats, MediaServerRelay, RateMeter, pump

TIME_BASE = fractions.Fraction(1, 90000)


def frame(pts: int, width: int = 64, height: int = 48) -> VideoFrame:
    out = VideoFrame.from_ndarray(np.zeros((height, width, 3), np.uint8), format="bgr24")
    out.pts = pts
    out.time_base = TIME_BASE
    return out


async def wait_for(predicate, timeout_s: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.02)


# --- LatestFrameTrack ------------------------------------------------------------------------------------


async def test_latest_frame_track_hands_out_only_the_newest_frame() -> None:
    track = LatestFrameTrack()
    for pts in range(3):
        track.put(frame(pts))
    got = await track.recv()
    assert got.pts == 2
    assert (track.received, track.delivered, track.dropped) == (3, 1, 2)
    # Nothing newer yet: recv waits instead of repeating a frame.
    pending = asyncio.ensure_future(track.recv())
    # Turns of the event loop, not wall time: the task runs on the first and blocks in recv (a repeated
    # frame would have completed it), whatever the machine's speed.
    for _ in range(5):
        await asyncio.sleep(0)
    assert not pending.done() and track.delivered == 1
    track.put(frame(3))
    assert (await asyncio.wait_for(pending, 1)).pts == 3


async def test_stopping_a_latest_frame_track_ends_a_waiting_recv() -> None:
    track = LatestFrameTrack()
    pending = asyncio.ensure_future(track.recv())
    await asyncio.sleep(0.01)
    track.stop()
    with pytest.raises(MediaStreamError):
        await asyncio.wait_for(pending, 1)


class FastCamera(MediaStreamTrack):
    """Frames as fast as the loop allows, numbered; ends after `count`."""

    kind = "video"

    def __init__(self, count: int) -> None:
        super().__init__()
        self.count = count
        self.sent = 0

    async def recv(self) -> VideoFrame:
        if self.sent >= self.count:
            raise MediaStreamError
        await asyncio.sleep(0.001)
        self.sent += 1
        return frame(self.sent)


async def test_a_slow_consumer_skips_frames_instead_of_falling_behind() -> None:
    camera = FastCamera(count=200)
    track = LatestFrameTrack()
    ticks: list[None] = []
    task = asyncio.ensure_future(pump(camera, track, lambda: ticks.append(None)))
    for _ in range(5):
        await asyncio.sleep(0.05)  # a consumer far slower than the source
        got = await asyncio.wait_for(track.recv(), 1)
        # What it gets is what the camera sent last, not the oldest frame still waiting somewhere.
        assert got.pts == camera.sent
    await asyncio.wait_for(task, 5)
    assert len(ticks) == 200
    assert track.dropped > 150


# --- stats -----------------------------------------------------------------------------------------------


def test_rate_meter_counts_events_per_second_in_its_window() -> None:
    now = [100.0]
    meter = RateMeter(window_s=2.0, clock=lambda: now[0])
    assert meter.rate() == 0.0
    for _ in range(31):
        meter.tick()
        now[0] += 1 / 30
    assert meter.rate() == pytest.approx(30.0, rel=0.01)
    now[0] += 5  # nothing for longer than the window: the rate drops to zero
    assert meter.rate() == 0.0


def test_live_stats_keep_the_latest_detections_and_the_first_error() -> None:
    stats = LiveStats()
    message = {"type": "detections", "detections": [{"label": "person", "score": 0.8}], "age_ms": 42.5}
    stats.on_message(json.dumps(message))
    stats.on_message("not json")
    stats.on_message(json.dumps({"type": "pong", "t": 10.0}), now=10.025)
    snap = stats.snapshot()
    assert snap.results == 1
    assert snap.detections[0]["label"] == "person"
    assert snap.age_ms == 42.5
    assert snap.round_trip_ms == pytest.approx(25.0)
    stats.set_state("failed", "The media server refused the stream")
    stats.set_state("closed")
    assert (stats.snapshot().state, stats.snapshot().error) == (
        "failed",
        "The media server refused the stream",
    )


# --- against the real media server app -------------------------------------------------------------------

PERSON = Detection(class_id=0, label="person", score=0.9, box=(100.0, 60.0, 400.0, 420.0))


def box_edge_is_drawn(image_bgr: np.ndarray) -> bool:
    """The left edge of PERSON's box, in the media server's colour for class 0 (red), on a green frame."""
    column = image_bgr[150:350, 99:102].reshape(-1, 3).astype(int)
    b, g, r = column.mean(axis=0)
    return r > 150 and g < 110 and b < 110


async def test_relay_round_trip_through_the_media_server() -> None:
    detector = FakeDetector((PERSON,))
    async with running_server(loopback_settings(), detector) as server:
        camera = VideoStreamTrack()  # aiortc's 640x480 green test pattern at 30 fps
        assert not box_edge_is_drawn((await camera.recv()).to_ndarray(format="bgr24"))
        relay = MediaServerRelay(server.url, aiortc_configuration([]), connect_timeout_s=10)
        relay.addTrack(camera)
        relay.start()
        await wait_for(lambda: relay.stats.snapshot().state == "connected", 15, "the relay to connect")
        assert relay.peer_id is not None and server.state.peers.get(relay.peer_id) is not None

        # The annotated video comes back: frames with the box drawn by the media server.
        annotated = None
        for _ in range(150):
            got = await asyncio.wait_for(relay.output.recv(), 5)
            image = got.to_ndarray(format="bgr24")
            if box_edge_is_drawn(image):
                annotated = image
                break
        assert annotated is not None, "no returned frame showed the detection box"

        await wait_for(lambda: relay.stats.snapshot().results > 0, 10, "detections on the data channel")
        await wait_for(lambda: relay.stats.snapshot().round_trip_ms is not None, 5, "a ping answer")
        snap = relay.stats.snapshot()
        assert [d["label"] for d in snap.detections] == ["person"]
        assert snap.camera_fps > 5 and snap.returned_fps > 5

        # The score threshold travels to the media server: above the fake detection's score, none remain.
        relay.configure(0.95)
        await wait_for(lambda: not relay.stats.snapshot().detections, 10, "the threshold to apply")

        # streamlit-webrtc stops the sink from the script thread.
        await asyncio.to_thread(relay.stop)
        assert await asyncio.to_thread(relay.wait_closed, 10)
        assert relay.stats.snapshot().state == "closed"
        with pytest.raises(MediaStreamError):
            await relay.output.recv()
        await wait_for(lambda: len(server.state.peers) == 0, 10, "the media server to drop the peer")


async def test_relay_reports_a_media_server_that_is_down() -> None:
    relay = MediaServerRelay(f"http://127.0.0.1:{free_port()}", aiortc_configuration([]), connect_timeout_s=5)
    relay.addTrack(VideoStreamTrack())
    relay.start()
    await wait_for(lambda: relay.stats.snapshot().state == "failed", 10, "the relay to fail")
    assert "Cannot reach the media server" in (relay.stats.snapshot().error or "")
    assert relay.closed
    with pytest.raises(MediaStreamError):
        await asyncio.wait_for(relay.output.recv(), 5)


async def test_relay_shows_the_media_servers_refusal() -> None:
    async with running_server(loopback_settings(max_peers=1), FakeDetector()) as server:
        first = MediaServerRelay(server.url, aiortc_configuration([]), connect_timeout_s=10)
        first.addTrack(VideoStreamTrack())
        first.start()
        await wait_for(lambda: first.stats.snapshot().state == "connected", 15, "the first relay")
        second = MediaServerRelay(server.url, aiortc_configuration([]), connect_timeout_s=10)
        second.addTrack(VideoStreamTrack())
        second.start()
        await wait_for(lambda: second.stats.snapshot().state == "failed", 10, "the second relay to fail")
        error = second.stats.snapshot().error or ""
        assert "503" in error and "too_many_peers" in error
        first.stop()
        assert await asyncio.to_thread(first.wait_closed, 10)
