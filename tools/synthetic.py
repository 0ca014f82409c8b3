"""A synthetic WebRTC client for tests and the benchmark: a real aiortc peer whose frames carry their number.

Each outgoing frame is a real photo with a strip of large black and white blocks at the bottom that encodes
the frame number (16 bits, then the same bits inverted as a check). The blocks survive VP8/H264 at any
sensible bitrate and a thin box line drawn across them, so the client recognises every frame that comes
back and measures its round trip.
"""

from __future__ import annotations

import asyncio
import collections
import fractions
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import cv2
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import VideoFrame

from rtc.messages import DATA_CHANNEL_LABEL

CODE_BITS = 16
CODE_MODULO = 1 << CODE_BITS
VIDEO_TIME_BASE = fractions.Fraction(1, 90000)
_WHITE, _BLACK, _NEUTRAL = 235, 16, 128  # limited-range luma, neutral chroma


def strip_height(height: int) -> int:
    """Two rows of code blocks at the bottom of the frame (even, for 2x2 chroma)."""
    return 2 * max(8, (height // 20) & ~1)


def stamp_number(i420: np.ndarray, width: int, height: int, number: int) -> None:
    """Write `number` into the code strip of an I420 image (shape (H * 3 / 2, W)) in place."""
    number %= CODE_MODULO
    sh = strip_height(height)
    row_h = sh // 2
    y = i420[:height]
    top = height - sh
    for bit in range(CODE_BITS):
        value = (number >> (CODE_BITS - 1 - bit)) & 1
        x0, x1 = bit * width // CODE_BITS, (bit + 1) * width // CODE_BITS
        y[top : top + row_h, x0:x1] = _WHITE if value else _BLACK
        y[top + row_h : height, x0:x1] = _BLACK if value else _WHITE


def read_number(luma: np.ndarray) -> int | None:
    """The frame number in a luma plane (H x W), or None when the strip does not check out."""
    height, width = luma.shape
    sh = strip_height(height)
    row_h = sh // 2
    top = height - sh
    number = 0
    for bit in range(CODE_BITS):
        x0, x1 = bit * width // CODE_BITS, (bit + 1) * width // CODE_BITS
        # The inner half of each block: robust to codec ringing at block edges and to thin lines.
        dx, dy = (x1 - x0) // 4, row_h // 4
        hi = float(luma[top + dy : top + row_h - dy, x0 + dx : x1 - dx].mean())
        lo = float(luma[top + row_h + dy : height - dy, x0 + dx : x1 - dx].mean())
        if abs(hi - lo) < 60:
            return None
        number = (number << 1) | (1 if hi > lo else 0)
    return number


def frame_luma(frame: VideoFrame) -> np.ndarray:
    if frame.format.name == "yuv420p":
        plane = frame.planes[0]
        rows = np.frombuffer(memoryview(plane), np.uint8).reshape(-1, plane.line_size)
        return rows[: frame.height, : frame.width]
    return frame.to_ndarray(format="gray")


def compose_background(photo_bgr: np.ndarray, width: int, height: int) -> np.ndarray:
    """The photo resized into the area above the code strip; the strip itself starts black."""
    canvas = np.zeros((height, width, 3), np.uint8)
    canvas[: height - strip_height(height)] = cv2.resize(
        photo_bgr, (width, height - strip_height(height)), interpolation=cv2.INTER_AREA
    )
    return canvas


class NumberedTrack(MediaStreamTrack):
    """Frames at a steady rate, each with its number in the code strip; remembers when each was sent."""

    kind = "video"

    def __init__(
        self, photo_bgr: np.ndarray, *, fps: float = 30.0, width: int = 640, height: int = 480
    ) -> None:
        super().__init__()
        self.width, self.height, self.fps = width, height, fps
        self.background_bgr = compose_background(photo_bgr, width, height)
        self._base: np.ndarray = np.asarray(
            cv2.cvtColor(self.background_bgr, cv2.COLOR_BGR2YUV_I420), dtype=np.uint8
        )
        sh = strip_height(height)
        # Neutral chroma under the strip, so it is pure grey levels.
        # Chroma planes by flat offset: h/2 rows of w/2 each need not fill whole rows of the (H * 3 / 2, W) view.
        chroma = self._base.reshape(-1)[width * height :]
        u_rows = chroma[: chroma.size // 2].reshape(height // 2, width // 2)
        v_rows = chroma[chroma.size // 2 :].reshape(height // 2, width // 2)
        u_rows[(height - sh) // 2 :] = _NEUTRAL
        v_rows[(height - sh) // 2 :] = _NEUTRAL
        self.sent = 0
        self.sent_at: dict[int, float] = {}  # number mod 2**16 -> time.monotonic() when handed to the encoder
        self._start: float | None = None
        self._running = asyncio.Event()
        self._running.set()

    def pause(self) -> None:
        """Stop producing frames without ending the track: a frozen camera, or a client that went silent."""
        self._running.clear()

    async def recv(self) -> VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        await self._running.wait()
        n = self.sent
        now = time.monotonic()
        if self._start is None:
            self._start = now
        else:
            delay = self._start + n / self.fps - now
            if delay > 0:
                await asyncio.sleep(delay)
        i420: np.ndarray = self._base.copy()
        stamp_number(i420, self.width, self.height, n)
        frame = VideoFrame.from_ndarray(i420, format="yuv420p")
        frame.pts = round(n * 90000 / self.fps)
        frame.time_base = VIDEO_TIME_BASE
        self.sent_at[n % CODE_MODULO] = time.monotonic()
        if n >= CODE_MODULO:  # forget numbers about to be reused
            self.sent_at.pop((n + 1) % CODE_MODULO, None)
        self.sent = n + 1
        return frame


@dataclass(frozen=True, slots=True)
class Echo:
    """One frame that came back."""

    number: int | None  # None: the code strip was unreadable
    received: float  # time.monotonic()
    rtt: float | None  # seconds from handing the frame to the encoder to receiving it back


class SyntheticPeer:
    """A client peer: sends a NumberedTrack, receives the annotated video and the data channel."""

    def __init__(
        self,
        base_url: str,
        photo_bgr: np.ndarray,
        *,
        fps: float = 30.0,
        codec: str | None = None,
        keep_frames: int = 0,
        ice_servers: Sequence[Any] = (),
        on_frame: Callable[[Echo], None] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.track = NumberedTrack(photo_bgr, fps=fps)
        self.codec = codec
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=list(ice_servers)))
        self.peer_id: str | None = None
        self.echoes: list[Echo] = []
        self.messages: list[dict[str, Any]] = []
        self.frames: collections.deque[tuple[int | None, np.ndarray]] = collections.deque(maxlen=keep_frames)
        self._keep_frames = keep_frames
        self._on_frame = on_frame
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.channel = self.pc.createDataChannel(DATA_CHANNEL_LABEL)  # messages: rtc/messages.py
        self.channel.on("message", self._on_message)
        self.pc.on("track", self._on_track)

    @property
    def detections(self) -> list[dict[str, Any]]:
        """The `detections` messages (rtc.messages.DetectionsMessage) received so far."""
        return [m for m in self.messages if m.get("type") == "detections"]

    @property
    def events(self) -> list[dict[str, Any]]:
        """Every zone and line event (rtc.messages.EventDict) received so far, in order."""
        return [e for m in self.messages if m.get("type") == "events" for e in m["events"]]

    async def connect(self, session: aiohttp.ClientSession) -> str:
        transceiver = self.pc.addTransceiver(self.track, direction="sendrecv")
        if self.codec is not None:
            caps = RTCRtpSender.getCapabilities("video")
            assert caps is not None
            wanted = [c for c in caps.codecs if c.mimeType.lower() == f"video/{self.codec.lower()}"]
            transceiver.setCodecPreferences(wanted)
        await self.pc.setLocalDescription(await self.pc.createOffer())
        offer = self.pc.localDescription
        async with session.post(
            f"{self.base_url}/offer", json={"sdp": offer.sdp, "type": offer.type}
        ) as resp:
            body = await resp.json()
            if resp.status != 200:
                raise ConnectionError(f"offer refused: {resp.status} {body}")
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=body["sdp"], type=body["type"]))
        self.peer_id = str(body["peer_id"])
        return self.peer_id

    def send(self, message: dict[str, Any]) -> None:
        self.channel.send(json.dumps(message))

    def _on_message(self, message: str | bytes) -> None:
        self.messages.append(json.loads(message))
        self._changed.set()

    def _on_track(self, track: MediaStreamTrack) -> None:
        self._tasks.append(asyncio.create_task(self._receive(track), name="synthetic-receive"))

    async def _receive(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            now = time.monotonic()
            assert isinstance(frame, VideoFrame)
            number = read_number(frame_luma(frame))
            sent = self.track.sent_at.get(number) if number is not None else None
            echo = Echo(number, now, now - sent if sent is not None else None)
            self.echoes.append(echo)
            if self._keep_frames:
                self.frames.append((number, frame.to_ndarray(format="bgr24")))
            if self._on_frame is not None:
                self._on_frame(echo)
            self._changed.set()

    async def wait_until(
        self, predicate: Callable[[], bool], limit_s: float, what: str = "condition"
    ) -> None:
        """Wait for `predicate` to hold, re-checked on every frame or message; TimeoutError names `what`."""
        deadline = time.monotonic() + limit_s
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"timed out after {limit_s:.1f} s waiting for {what}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                continue

    async def wait_for_frames(self, count: int, limit_s: float) -> None:
        await self.wait_until(lambda: len(self.echoes) >= count, limit_s, f"{count} frames back")

    async def close(self) -> None:
        self.track.stop()
        await self.pc.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
