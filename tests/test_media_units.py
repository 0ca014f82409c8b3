"""Unit tests of the media server's parts: settings, backpressure buffer, overlay, frame numbers, ICE."""

from __future__ import annotations

import asyncio
import fractions
import threading
import time

import aioice.ice
import cv2
import numpy as np
import pytest
from aiortc.codecs import depayload, get_decoder, get_encoder
from aiortc.jitterbuffer import JitterFrame
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from av import VideoFrame
from pydantic import ValidationError

from inference.draw import draw_detections
from inference.types import Detection
from media_server.frames import normalize, to_bgr
from media_server.ice import (
    announce_addresses,
    client_ice_servers,
    server_rtc_configuration,
)
from media_server.overlay import render_overlay
from media_server.peers import OfferError, check_offer_sdp
from media_server.settings import BackpressurePolicy, Settings
from media_server.track import DropBuffer
from rtc.ice import HostAddressOverride
from tools.slow_engine import SlowEngine
from tools.synthetic import NumberedTrack, compose_background, frame_luma, read_number, stamp_number

DETECTIONS = (
    Detection(0, "person", 0.87, (40.0, 30.0, 300.0, 400.0)),
    Detection(41, "cup", 0.51, (400.0, 100.0, 520.0, 210.0)),
)


# --- settings -------------------------------------------------------------------------------------------


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RTDETECT_MEDIA_BACKEND", "RTDETECT_MEDIA_PRECISION"):  # conftest pins the engine
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RTDETECT_MEDIA_ICE_HOST_ADDRESSES", "127.0.0.1, ::1")
    monkeypatch.setenv("RTDETECT_MEDIA_ICE_ANNOUNCED_ADDRESSES", "10.0.0.5=203.0.113.7")
    monkeypatch.setenv("RTDETECT_MEDIA_ICE_SERVERS", '[{"urls": "stun:stun.example.test:3478"}]')
    monkeypatch.setenv(
        "RTDETECT_MEDIA_TURN_URLS",
        "turn:t.example.test:3478?transport=udp,turn:t.example.test:3478?transport=tcp",
    )
    monkeypatch.setenv("RTDETECT_MEDIA_TURN_SECRET", "s3cret")
    monkeypatch.setenv("RTDETECT_MEDIA_BACKPRESSURE", "drop_oldest")
    monkeypatch.setenv("RTDETECT_MEDIA_PROVIDERS", "CPUExecutionProvider")
    monkeypatch.setenv("RTDETECT_PORT", "1234")  # the detect API's variable is not ours
    settings = Settings()
    assert settings.ice_host_addresses == ["127.0.0.1", "::1"]
    assert settings.ice_announced_addresses == {"10.0.0.5": "203.0.113.7"}
    assert settings.ice_servers[0].urls == ["stun:stun.example.test:3478"]
    assert len(settings.turn_urls) == 2 and settings.turn_secret is not None
    assert settings.backpressure is BackpressurePolicy.DROP_OLDEST
    assert settings.port == 8080 and settings.host == "127.0.0.1"
    assert settings.backend_options("onnxruntime").model_dump(include={"providers", "allow_spinning"}) == {
        "providers": ["CPUExecutionProvider"],
        "allow_spinning": False,
    }
    assert Settings(backend="tensorrt", providers=None).backend_options("tensorrt").engine_file is None
    # The engine choice, with the media server's own prefix.
    assert (settings.backend, settings.precision) == ("auto", "auto")
    monkeypatch.setenv("RTDETECT_MEDIA_BACKEND", "openvino")
    monkeypatch.setenv("RTDETECT_MEDIA_PRECISION", "bf16")
    monkeypatch.setenv("RTDETECT_MEDIA_OPENVINO__HINT", "throughput")
    monkeypatch.setenv("RTDETECT_PRECISION", "int8")  # the detect API's variable is not ours
    monkeypatch.delenv("RTDETECT_MEDIA_PROVIDERS")
    chosen = Settings()
    assert (chosen.backend, chosen.precision, chosen.openvino.hint) == ("openvino", "bf16", "throughput")


def test_settings_defaults_never_use_a_public_stun_server() -> None:
    settings = Settings()
    assert settings.ice_servers == [] and settings.turn_urls == []
    assert server_rtc_configuration(settings).iceServers == []  # explicit: aiortc's fallback is Google STUN
    assert client_ice_servers(settings) == []


@pytest.mark.parametrize(
    "values",
    [
        {"ice_host_addresses": ["localhost"]},
        {"ice_announced_addresses": "10.0.0.5"},
        {"ice_servers": [{"urls": "http://stun.example.test"}]},
        {"turn_urls": ["turn:t.example.test:3478"]},  # no secret
        {"turn_urls": ["stun:t.example.test:3478"], "turn_secret": "s"},
        {"backpressure": "unbounded"},
        {"max_peers": 0},
        {"backend": "tensorrt", "intra_op_threads": 2},
    ],
)
def test_invalid_settings_are_refused(values: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Settings(**values)  # type: ignore[arg-type]


def test_server_gets_fresh_turn_credentials() -> None:
    settings = Settings(turn_server_urls=["turn:turn:3478?transport=udp"], turn_secret="s")
    (server,) = server_rtc_configuration(settings).iceServers or []
    assert server.urls == ["turn:turn:3478?transport=udp"]
    assert server.username is not None and server.username.endswith(":media-server") and server.credential


# --- backpressure -----------------------------------------------------------------------------------------


async def test_drop_buffer_keeps_the_newest_and_counts_drops() -> None:
    latest: DropBuffer[int] = DropBuffer(1)
    assert [latest.put(i) for i in range(5)] == [0, 1, 1, 1, 1]
    assert await latest.get() == 4 and len(latest) == 0

    fifo: DropBuffer[int] = DropBuffer(3)
    dropped = sum(fifo.put(i) for i in range(5))
    assert dropped == 2 and [await fifo.get() for _ in range(3)] == [2, 3, 4]

    waiter = asyncio.create_task(fifo.get())
    await asyncio.sleep(0)
    fifo.put(9)
    assert await waiter == 9
    fifo.close()
    with pytest.raises(MediaStreamError):
        await fifo.get()


# --- overlay ----------------------------------------------------------------------------------------------


def _frame(bgr: np.ndarray, pts: int = 3000, fmt: str = "yuv420p") -> VideoFrame:
    frame = VideoFrame.from_ndarray(bgr, format="bgr24").reformat(format=fmt)
    frame.pts = pts
    frame.time_base = fractions.Fraction(1, 90000)
    return frame


def test_overlay_matches_draw_detections_and_keeps_timing(photos: dict[str, np.ndarray]) -> None:
    image = cv2.resize(photos["astronaut"], (640, 480))
    frame = _frame(image)
    out = render_overlay(DETECTIONS, 640, 480).apply(frame)
    assert (out.pts, out.time_base, out.width, out.height, out.format.name) == (
        3000,
        fractions.Fraction(1, 90000),
        640,
        480,
        "yuv420p",
    )
    expected = draw_detections(frame.to_ndarray(format="bgr24"), DETECTIONS)
    got = out.to_ndarray(format="bgr24")
    before = frame.to_ndarray(format="bgr24")
    drawn = np.abs(expected.astype(int) - before.astype(int)).max(axis=2) > 40
    assert drawn.mean() > 0.01  # the drawing is visible at all
    # Where draw_detections changed pixels, the overlay changed them the same way (chroma is 2x2 subsampled,
    # so thin coloured lines blend a little at their edges).
    error = np.abs(expected.astype(int) - got.astype(int)).max(axis=2)
    assert np.median(error[drawn]) < 40 and np.percentile(error[~drawn], 99) < 25
    # The input frame is not modified: inference may be reading it in another thread.
    assert np.array_equal(frame.to_ndarray(format="bgr24"), before)


def test_overlay_for_other_frame_sizes_and_full_range_frames() -> None:
    overlay = render_overlay(DETECTIONS, 640, 480)
    small = _frame(np.full((240, 320, 3), 90, np.uint8))
    out = overlay.apply(small)
    assert (out.width, out.height) == (320, 240)
    changed = np.abs(out.to_ndarray(format="bgr24").astype(int) - 90).max(axis=2) > 40
    assert changed[15:25, 20:150].any()  # the person's top edge, scaled by one half
    assert overlay.resized(320, 240) is overlay.resized(320, 240)  # rendered once per size

    # Browsers' H264 often decodes to full-range yuvj420p: the boxes keep their colour there too.
    grey = np.full((480, 640, 3), 90, np.uint8)
    limited = overlay.apply(_frame(grey)).to_ndarray(format="bgr24")
    full = overlay.apply(_frame(grey, fmt="yuvj420p"))
    assert full.format.name == "yuvj420p"
    assert np.abs(full.to_ndarray(format="bgr24").astype(int) - limited.astype(int)).max() <= 6
    with pytest.raises(ValueError):
        render_overlay(DETECTIONS, 641, 480)


def test_frames_are_normalized_and_converted_without_swscale(photos: dict[str, np.ndarray]) -> None:
    image = cv2.resize(photos["astronaut"], (640, 480))
    for fmt in ("yuv420p", "yuvj420p"):
        frame = _frame(image, fmt=fmt)
        assert normalize(frame) is frame
        assert np.abs(to_bgr(frame).astype(int) - image.astype(int)).mean() < 3, fmt
    odd = VideoFrame.from_ndarray(np.zeros((241, 321, 3), np.uint8), format="bgr24")
    odd.pts = 7
    fixed = normalize(odd)
    assert (fixed.format.name, fixed.width, fixed.height, fixed.pts) == ("yuv420p", 320, 240, 7)


def test_converting_while_the_encoder_reformats_the_same_frame() -> None:
    # Regression: av.VideoFrame.reformat from two threads at once crashes (or deadlocks) inside libswscale.
    # Our worker converts a frame while aiortc's encoder thread reformats it (yuvj420p -> yuv420p); only the
    # encoder may use swscale on a shared frame.
    frame = _frame(np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8), fmt="yuvj420p")
    overlay = render_overlay(DETECTIONS, 640, 480)
    errors: list[BaseException] = []

    def ours() -> None:
        try:
            for _ in range(200):
                to_bgr(frame)
                overlay.apply(frame)
        except BaseException as e:
            errors.append(e)

    def encoder() -> None:
        for _ in range(200):
            frame.reformat(format="yuv420p")

    threads = [threading.Thread(target=ours), threading.Thread(target=encoder)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads) and not errors


# --- frame numbers ---------------------------------------------------------------------------------------


def test_frame_numbers_survive_vp8_and_a_drawn_box(photos: dict[str, np.ndarray]) -> None:
    codec = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
    encoder, decoder = get_encoder(codec), get_decoder(codec)
    background = cv2.cvtColor(compose_background(photos["astronaut"], 640, 480), cv2.COLOR_BGR2YUV_I420)
    box = [Detection(0, "person", 0.9, (5.0, 5.0, 600.0, 460.0))]  # its bottom edge crosses the strip
    for n in [0, 1, 2, 255, 4096, 65535]:
        i420 = np.array(background, dtype=np.uint8)
        stamp_number(i420, 640, 480, n)
        frame = VideoFrame.from_ndarray(i420, format="yuv420p")
        frame.pts, frame.time_base = n * 3000, fractions.Fraction(1, 90000)
        payloads, timestamp = encoder.encode(frame, force_keyframe=True)
        data = b"".join(depayload(codec, p) for p in payloads)
        (decoded,) = decoder.decode(JitterFrame(data=data, timestamp=timestamp))
        assert read_number(frame_luma(decoded)) == n
        boxed = draw_detections(decoded.to_ndarray(format="bgr24"), box)
        assert read_number(frame_luma(_frame(boxed))) == n
    # A frame without a strip (a camera image) is not mistaken for a number.
    assert read_number(frame_luma(_frame(np.full((480, 640, 3), 128, np.uint8)))) is None


async def test_numbered_track_paces_and_records_send_times(photos: dict[str, np.ndarray]) -> None:
    track = NumberedTrack(photos["astronaut"], fps=50.0)
    frames = [await track.recv() for _ in range(6)]
    assert [read_number(frame_luma(f)) for f in frames] == list(range(6))
    assert [f.pts for f in frames] == [round(i * 90000 / 50) for i in range(6)]
    times = [track.sent_at[i] for i in range(6)]
    assert 0.08 <= times[-1] - times[0] <= 0.3  # five intervals of 20 ms
    track.stop()
    with pytest.raises(MediaStreamError):
        await track.recv()


# --- ICE and offers ---------------------------------------------------------------------------------------


def test_host_address_override_installs_and_restores() -> None:
    original = aioice.ice.get_host_addresses
    outer = HostAddressOverride(["127.0.0.1", "::1"])
    inner = HostAddressOverride(["10.1.2.3"])
    outer.install()
    assert aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=False) == ["127.0.0.1"]
    assert aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True) == ["127.0.0.1", "::1"]
    inner.install()
    assert aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True) == ["10.1.2.3"]
    inner.uninstall()
    assert aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True) == ["127.0.0.1", "::1"]
    outer.uninstall()
    assert aioice.ice.get_host_addresses is original
    HostAddressOverride([]).install()  # nothing configured: aioice's own discovery stays
    assert aioice.ice.get_host_addresses is original


def test_announce_addresses_rewrites_host_candidates_only() -> None:
    sdp = (
        "v=0\r\n"
        "a=candidate:1 1 udp 2130706431 10.0.0.5 40001 typ host\r\n"
        "a=candidate:2 1 udp 1694498815 198.51.100.1 40001 typ srflx raddr 10.0.0.5 rport 40001\r\n"
        "a=candidate:3 1 udp 2130706431 10.0.0.6 40002 typ host\r\n"
    )
    out = announce_addresses(sdp, {"10.0.0.5": "203.0.113.7"})
    assert "a=candidate:1 1 udp 2130706431 203.0.113.7 40001 typ host\r\n" in out
    assert "raddr 10.0.0.5" in out and "10.0.0.6 40002 typ host" in out
    assert announce_addresses(sdp, {}) == sdp


@pytest.mark.parametrize("sdp", ["", "hello", "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\n"])
def test_check_offer_sdp_refuses_what_it_cannot_serve(sdp: str) -> None:
    with pytest.raises(OfferError):
        check_offer_sdp(sdp)


def test_slow_engine_delays_every_call() -> None:
    class Engine:
        backend, provider, precision, max_batch_size, max_concurrency, on_gpu = (
            "fake",
            "cpu",
            "fp32",
            4,
            1,
            False,
        )

        def load(self) -> None:
            self.max_batch_size = 2

        def warmup(self, batch_sizes: tuple[int, ...] = (1,)) -> None:
            return None

        def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
            return {"out": batch}

        def close(self) -> None:
            return None

    slow = SlowEngine(Engine(), 0.05)
    slow.load()
    assert slow.max_batch_size == 2 and "artificial delay" in slow.provider and slow.precision == "fp32"
    started = time.perf_counter()
    assert slow.infer(np.zeros(1))["out"].shape == (1,)
    assert time.perf_counter() - started >= 0.05
