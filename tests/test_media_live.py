"""The live path with real peers: an in-process aiortc client against the real server and the real model.

Run inside a loopback-only network namespace (see the Makefile's `pytest` target); the server and the client
offer only 127.0.0.1 as ICE candidates either way.
"""

from __future__ import annotations

import time
from pathlib import Path
from statistics import mean

import aiohttp
import numpy as np
import pytest

from tests.media_support import loopback_settings, running_server
from tools.bench_server import slow_wrapper
from tools.naive import naive_media
from tools.synthetic import SyntheticPeer, strip_height

FPS = 30.0


def _rtts(peer: SyntheticPeer) -> list[float]:
    return [e.rtt for e in peer.echoes if e.rtt is not None]


def _received_fps(peer: SyntheticPeer, skip: int) -> float:
    window = peer.echoes[skip:]
    return (len(window) - 1) / (window[-1].received - window[0].received)


def _edge_contrast(received: np.ndarray, reference: np.ndarray, box: list[float]) -> tuple[float, float]:
    """Share of columns along the box's top edge, and of rows along its left edge, where some pixel within
    4 px of the edge differs strongly from the input (a drawn line)."""
    diff = np.abs(received.astype(np.int16) - reference.astype(np.int16)).max(axis=2)
    x1, y1, x2, y2 = (round(v) for v in box)
    top = diff[max(y1 - 4, 0) : y1 + 5, x1 + 10 : x2 - 10].max(axis=0)
    left = diff[y1 + 10 : y2 - 10, max(x1 - 4, 0) : x1 + 5].max(axis=1)
    return float((top > 80).mean()), float((left > 80).mean())


async def test_frames_come_back_numbered_with_boxes_and_detections(
    model_dir: Path, photos: dict[str, np.ndarray]
) -> None:
    settings = loopback_settings(model_dir=model_dir)
    async with running_server(settings) as server, aiohttp.ClientSession() as http:
        peer = SyntheticPeer(server.url, photos["astronaut"], fps=FPS, keep_frames=3)
        try:
            await peer.connect(http)
            await peer.wait_for_frames(30, limit_s=20)  # connected and warmed up
            await peer.wait_for_frames(30 + 120, limit_s=20)
            await peer.wait_until(
                lambda: any(d["label"] == "person" for m in peer.detections for d in m["detections"]),
                limit_s=10,
                what="a person on the data channel",
            )
        finally:
            await peer.close()

        # Every frame comes back, at the rate it was sent, carrying its number.
        fps = _received_fps(peer, skip=30)
        assert 0.85 * FPS <= fps <= 1.15 * FPS, fps
        numbers = [e.number for e in peer.echoes]
        assert sum(n is None for n in numbers) <= 0.02 * len(numbers), numbers
        known = [n for n in numbers if n is not None]
        assert known == sorted(known), "frames came back out of order"
        assert known[-1] - known[0] + 1 - len(known) <= 0.05 * len(known), "frames went missing"

        # Round trip per frame: one frame interval per hop plus coding, and no inference in the video path.
        rtts = _rtts(peer)
        assert np.percentile(rtts, 50) < 0.25 and np.percentile(rtts, 95) < 0.4, np.percentile(rtts, [50, 95])

        # The data channel reports the person, in the frame's pixel coordinates, with timings.
        message = next(m for m in reversed(peer.detections) if m["detections"])
        person = next(d for d in message["detections"] if d["label"] == "person")
        assert person["score"] >= 0.35
        x1, y1, x2, y2 = person["box"]
        assert x2 - x1 > 200 and y2 - y1 > 200  # the astronaut fills most of the frame
        assert message["width"] == 640 and message["height"] == 480
        assert message["inference_ms"] > 0 and message["age_ms"] > 0 and isinstance(message["pts"], int)

        # Boxes are drawn: strong changes along the box's edges, none in the middle of the picture.
        _, frame = peer.frames[-1]
        reference = peer.track.background_bgr
        top, left = _edge_contrast(frame, reference, person["box"])
        assert top > 0.8 and left > 0.8, (top, left)
        inner = [x1 + 60, y1 + 60, x2 - 60, y2 - 60]
        inner_top, inner_left = _edge_contrast(frame, reference, inner)
        assert inner_top < 0.2 and inner_left < 0.2, (inner_top, inner_left)
        # ...and the rest of the frame is the input, untouched (VP8 noise aside).
        body = slice(0, 480 - strip_height(480))
        assert np.median(np.abs(frame[body].astype(int) - reference[body].astype(int))) < 12

        registry = server.state.registry
        inferred = registry.get_sample_value("rtdetect_live_frames_inferred_total")
        assert inferred is not None and inferred >= 30


async def test_slow_engine_keeps_output_rate_and_latency_and_counts_drops(
    model_dir: Path, photos: dict[str, np.ndarray]
) -> None:
    # 150 ms per engine call: under five inferences per second against 30 frames per second.
    settings = loopback_settings(model_dir=model_dir)
    async with (
        running_server(settings, wrap_engine=slow_wrapper(150.0)) as server,
        aiohttp.ClientSession() as http,
    ):
        peer = SyntheticPeer(server.url, photos["astronaut"], fps=FPS)
        try:
            await peer.connect(http)
            await peer.wait_for_frames(30, limit_s=20)
            await peer.wait_for_frames(30 + 180, limit_s=20)
        finally:
            await peer.close()

        assert _received_fps(peer, skip=30) >= 0.85 * FPS
        rtts = _rtts(peer)[30:]
        third = len(rtts) // 3
        first, last = mean(rtts[:third]), mean(rtts[-third:])
        assert np.percentile(rtts, 95) < 0.4, np.percentile(rtts, 95)
        assert last - first < 0.05, (first, last)  # bounded: it does not grow with time

        registry = server.state.registry
        frames_in = registry.get_sample_value("rtdetect_live_frames_in_total") or 0.0
        inferred = registry.get_sample_value("rtdetect_live_frames_inferred_total") or 0.0
        dropped = (
            registry.get_sample_value("rtdetect_live_frames_dropped_total", {"stage": "inference"}) or 0.0
        )
        assert dropped >= 0.6 * frames_in, (frames_in, inferred, dropped)
        # Each received frame was either inferred, dropped, or is the one still in flight.
        assert frames_in - 2 <= inferred + dropped <= frames_in, (frames_in, inferred, dropped)
        ages = [m["age_ms"] for m in peer.detections]
        assert ages and min(ages) >= 150.0


@pytest.mark.slow
async def test_naive_baseline_latency_grows(model_dir: Path, photos: dict[str, np.ndarray]) -> None:
    """The benchmark's baseline really shows the failure rtdetect avoids: inference inline in recv()."""
    settings = loopback_settings(model_dir=model_dir)
    options = {"wrap_engine": slow_wrapper(60.0), "media_factory": naive_media}
    async with running_server(settings, **options) as server, aiohttp.ClientSession() as http:
        peer = SyntheticPeer(server.url, photos["astronaut"], fps=FPS)
        try:
            await peer.connect(http)
            await peer.wait_for_frames(10, limit_s=20)
            started = time.monotonic()
            await peer.wait_until(lambda: time.monotonic() - started > 6, limit_s=20, what="6 s of video")
        finally:
            await peer.close()
        rtts = _rtts(peer)
        third = len(rtts) // 3
        assert mean(rtts[-third:]) > mean(rtts[:third]) + 0.5
        assert _received_fps(peer, skip=10) < 0.7 * FPS
        assert server.state.registry.get_sample_value("rtdetect_live_frames_inferred_total")


async def test_backpressure_policies(photos: dict[str, np.ndarray]) -> None:
    """`latest` infers the newest frame; `drop_oldest` works through a small FIFO, so its results are older."""
    from inference.types import Detection
    from tests.media_support import FakeDetector

    ages: dict[str, float] = {}
    for policy in ("latest", "drop_oldest"):
        detector = FakeDetector((Detection(0, "person", 0.9, (10.0, 10.0, 200.0, 300.0)),), delay_s=0.1)
        settings = loopback_settings(backpressure=policy, buffer_size=4)
        async with running_server(settings, detector) as server, aiohttp.ClientSession() as http:
            peer = SyntheticPeer(server.url, photos["astronaut"], fps=FPS)
            try:
                await peer.connect(http)
                await peer.wait_until(lambda p=peer: len(p.detections) >= 25, 20, "25 results")
            finally:
                await peer.close()
            dropped = server.state.registry.get_sample_value(
                "rtdetect_live_frames_dropped_total", {"stage": "inference"}
            )
            assert dropped and dropped > 0.4 * peer.detections[-1]["frames_in"], (policy, dropped)
            assert _received_fps(peer, skip=10) >= 0.85 * FPS
            ages[policy] = float(np.median([m["age_ms"] for m in peer.detections[10:]]))
    assert ages["latest"] < 200, ages
    # The FIFO holds the newest 4 frames (133 ms of video): its head is about 3 frame intervals older.
    assert ages["drop_oldest"] > ages["latest"] + 50, ages
