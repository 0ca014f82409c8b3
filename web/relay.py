"""The live page's relay: the Streamlit server forwards the browser's camera to the media server over its
own RTCPeerConnection and plays the media server's annotated track back to the browser.

    browser camera --WebRTC--> streamlit-webrtc peer --sink--> MediaServerRelay
                                                                 | LatestFrameTrack (upstream)
                                                                 v
                                                    RTCPeerConnection --POST /offer--> media server
                                                                 | annotated track + "detections" channel
                                                                 v
    browser <--WebRTC-- streamlit-webrtc peer <--source-- LatestFrameTrack (output)

No model runs here. Both hops go through a `LatestFrameTrack`: a pump task drains the incoming track as
fast as frames arrive and keeps only the newest, so a slow encoder or network makes frames skip instead of
queueing, and latency never builds up (aiortc's own remote-track queue is unbounded).

Plain aiortc/aiohttp: no Streamlit import, so it is unit-tested against a real media server. streamlit-webrtc
uses a `MediaServerRelay` as its `sink_video_track` (the camera) and `relay.output` as its
`source_video_track` (what goes back), and calls `addTrack`/`start` on its event loop; `stop` may come
from any thread.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp
from aiortc import RTCConfiguration, RTCDataChannel, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import VideoFrame

from rtc.jitter import install_marker_jitter_buffer
from rtc.messages import DATA_CHANNEL_LABEL

logger = logging.getLogger(__name__)

RATE_WINDOW_S = 2.0
RECENT_EVENTS = 20  # zone and line events kept for the page
PING_INTERVAL_S = 1.0


class LatestFrameTrack(MediaStreamTrack):
    """A video track that hands its consumer only the newest frame put into it.

    `put` replaces a frame the consumer has not taken yet (counted in `dropped`); `recv` waits for the next
    frame. Used on the event loop only.
    """

    kind = "video"

    def __init__(self) -> None:
        super().__init__()
        self._frame: VideoFrame | None = None
        self._ready = asyncio.Event()
        self.received = 0
        self.delivered = 0
        self.dropped = 0

    def put(self, frame: VideoFrame) -> None:
        if self._frame is not None:
            self.dropped += 1
        self.received += 1
        self._frame = frame
        self._ready.set()

    async def recv(self) -> VideoFrame:
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            frame = self._frame
            if frame is not None:
                self._frame = None
                self._ready.clear()
                self.delivered += 1
                return frame
            await self._ready.wait()

    def stop(self) -> None:
        super().stop()
        self._frame = None
        self._ready.set()  # wake a waiting recv() so it raises MediaStreamError


async def pump(source: MediaStreamTrack, sink: LatestFrameTrack, on_frame: Callable[[], None]) -> None:
    """Drain `source` into `sink` until `source` ends."""
    while True:
        try:
            frame = await source.recv()
        except MediaStreamError:
            return
        if isinstance(frame, VideoFrame):
            sink.put(frame)
            on_frame()


class RateMeter:
    """Events per second over a sliding window (thread-safe: the loop records, the page reads)."""

    def __init__(self, window_s: float = RATE_WINDOW_S, clock: Callable[[], float] = time.monotonic) -> None:
        self._window_s = window_s
        self._clock = clock
        self._times: collections.deque[float] = collections.deque()
        self._lock = threading.Lock()

    def tick(self) -> None:
        now = self._clock()
        with self._lock:
            self._times.append(now)
            self._trim(now)

    def rate(self) -> float:
        now = self._clock()
        with self._lock:
            self._trim(now)
            if len(self._times) < 2:
                return 0.0
            return (len(self._times) - 1) / max(self._times[-1] - self._times[0], 1e-6)

    def _trim(self, now: float) -> None:
        while self._times and now - self._times[0] > self._window_s:
            self._times.popleft()


@dataclasses.dataclass(frozen=True)
class LiveSnapshot:
    """What the live page shows; a copy, safe to read on the script thread."""

    state: str  # idle | connecting | connected | failed | closed
    error: str | None
    detections: tuple[Mapping[str, Any], ...]
    results: int  # detection messages received
    camera_fps: float  # frames from the browser, at the relay
    returned_fps: float  # annotated frames from the media server, at the relay
    detection_fps: float  # detection results per second (data channel)
    age_ms: float | None  # media server: frame received -> result published
    inference_ms: float | None
    round_trip_ms: float | None  # data channel ping -> pong, relay <-> media server
    frames_dropped: int  # frames skipped at the relay because a newer one arrived first
    last_message: Mapping[str, Any] | None
    events: tuple[Mapping[str, Any], ...] = ()  # the latest zone and line events, newest last


class LiveStats:
    """Shared between the event loop (writes) and the Streamlit script thread (snapshots)."""

    def __init__(self, dropped: Callable[[], int] = lambda: 0) -> None:
        self._lock = threading.Lock()
        self._state = "idle"
        self._error: str | None = None
        self._last: Mapping[str, Any] | None = None
        self._results = 0
        self._round_trip_ms: float | None = None
        self._events: collections.deque[Mapping[str, Any]] = collections.deque(maxlen=RECENT_EVENTS)
        self.camera = RateMeter()
        self.returned = RateMeter()
        self.detection = RateMeter()
        self._dropped = dropped

    def set_state(self, state: str, error: str | None = None) -> None:
        with self._lock:
            # The first error explains a failure; the "closed" that follows must not hide it.
            if self._state == "failed" and state == "closed":
                return
            self._state = state
            if error is not None:
                self._error = error

    def on_message(self, raw: str | bytes, now: float | None = None) -> None:
        try:
            message = json.loads(raw)
        except ValueError:
            logger.warning("ignoring a non-JSON data channel message: %.100r", raw)
            return
        if not isinstance(message, dict):
            return
        kind = message.get("type")
        if kind == "detections":
            self.detection.tick()
            with self._lock:
                self._last = message
                self._results += 1
        elif kind == "events" and isinstance(message.get("events"), list):
            with self._lock:
                self._events.extend(e for e in message["events"] if isinstance(e, dict))
        elif kind == "pong" and isinstance(message.get("t"), int | float):
            sent = float(message["t"])
            with self._lock:
                self._round_trip_ms = ((time.monotonic() if now is None else now) - sent) * 1e3
        elif kind == "error":
            logger.warning("media server: %s", message.get("detail"))

    def snapshot(self) -> LiveSnapshot:
        with self._lock:
            last = self._last
            state, error, results = self._state, self._error, self._results
            round_trip_ms = self._round_trip_ms
            events = tuple(self._events)

        def number(key: str) -> float | None:
            value = last.get(key) if last else None
            return float(value) if isinstance(value, int | float) else None

        return LiveSnapshot(
            state=state,
            error=error,
            detections=tuple(last.get("detections", [])) if last else (),
            results=results,
            camera_fps=self.camera.rate(),
            returned_fps=self.returned.rate(),
            detection_fps=self.detection.rate(),
            age_ms=number("age_ms"),
            inference_ms=number("inference_ms"),
            round_trip_ms=round_trip_ms,
            frames_dropped=self._dropped(),
            last_message=last,
            events=events,
        )


class RelayError(Exception):
    """The media server refused the offer or could not be reached; the message is shown to the user."""


# (offer URL, offer, timeout, extra headers such as the API key) -> the answer
OfferPoster = Callable[[str, Mapping[str, str], float, Mapping[str, str]], Awaitable[Mapping[str, Any]]]


async def post_offer(
    url: str, offer: Mapping[str, str], timeout_s: float, headers: Mapping[str, str] | None = None
) -> Mapping[str, Any]:
    """POST the offer to the media server; its JSON error ({error, detail}) becomes a RelayError."""
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session,
            session.post(url, json=dict(offer), headers=dict(headers or {})) as response,
        ):
            try:
                body = await response.json(content_type=None)
            except (ValueError, aiohttp.ContentTypeError):
                body = None
            if response.status >= 400 or not isinstance(body, dict):
                if isinstance(body, dict) and "error" in body:
                    detail = body.get("detail")
                    message = f"{body['error']}: {detail}" if detail else str(body["error"])
                else:
                    message = f"HTTP {response.status} {response.reason}"
                raise RelayError(f"The media server refused the stream ({response.status}): {message}")
            return body
    except TimeoutError as e:
        raise RelayError(f"The media server at {url} did not answer within {timeout_s:g} s") from e
    except aiohttp.ClientError as e:
        raise RelayError(f"Cannot reach the media server at {url}: {e}") from e


class MediaServerRelay:
    """One live session: a streamlit-webrtc `MediaSink` for the camera, and `output` for the way back."""

    def __init__(
        self,
        media_server_url: str,
        rtc_configuration: RTCConfiguration,
        *,
        connect_timeout_s: float = 15.0,
        score_threshold: float | None = None,
        poster: OfferPoster = post_offer,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.offer_url = media_server_url.rstrip("/") + "/offer"
        self._configuration = rtc_configuration
        self._connect_timeout_s = connect_timeout_s
        self._poster = poster
        self._headers = dict(headers or {})  # the API key (web.settings.Settings.auth_headers)
        self.output = LatestFrameTrack()
        self._upstream = LatestFrameTrack()
        self.stats = LiveStats(dropped=lambda: self._upstream.dropped + self.output.dropped)
        self.peer_id: str | None = None
        self._score_threshold = score_threshold
        self._channel: RTCDataChannel | None = None
        self._camera: MediaStreamTrack | None = None
        self._pc: RTCPeerConnection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = threading.Event()
        self._done = threading.Event()

    @property
    def closed(self) -> bool:
        """True once stopped: a new live session needs a new relay."""
        return self._closed.is_set()

    # The MediaSink protocol (streamlit_webrtc.sink.MediaSink), called on the event loop.
    def addTrack(self, track: MediaStreamTrack) -> None:
        if track.kind != "video":
            raise ValueError(f"MediaServerRelay relays video only, got a {track.kind} track")
        self._camera = track

    def hasTrack(self) -> bool:
        return self._camera is not None

    def start(self) -> None:
        if self._camera is None:
            raise RuntimeError("MediaServerRelay.start() before addTrack()")
        if self.closed:
            raise RuntimeError("MediaServerRelay was stopped: create a new one per session")
        self._loop = asyncio.get_running_loop()
        self.stats.set_state("connecting")
        self._spawn(pump(self._camera, self._upstream, self.stats.camera.tick))
        self._spawn(self._run())

    def stop(self) -> None:
        """Thread-safe and idempotent; the peer connection closes on the event loop."""
        if self._closed.is_set():
            return
        self._closed.set()
        loop = self._loop
        if loop is None or loop.is_closed():
            self._done.set()
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._spawn(self._shutdown())
        else:
            loop.call_soon_threadsafe(lambda: self._spawn(self._shutdown()))

    def configure(self, score_threshold: float) -> None:
        """Change the media server's score threshold for this stream; thread-safe, applied on the loop."""
        if not 0.0 <= score_threshold <= 1.0:
            raise ValueError(f"score_threshold must be within [0, 1], got {score_threshold}")
        if self._score_threshold == score_threshold:
            return
        self._score_threshold = score_threshold
        loop = self._loop
        if loop is not None and not loop.is_closed() and not self.closed:
            loop.call_soon_threadsafe(self._send_config)

    def _send_config(self) -> None:
        channel = self._channel
        if channel is not None and channel.readyState == "open" and self._score_threshold is not None:
            channel.send(json.dumps({"type": "config", "score_threshold": self._score_threshold}))

    async def _ping(self, channel: RTCDataChannel) -> None:
        while channel.readyState == "open":
            channel.send(json.dumps({"type": "ping", "t": time.monotonic()}))
            await asyncio.sleep(PING_INTERVAL_S)

    def wait_closed(self, timeout_s: float) -> bool:
        """Block (not on the event loop) until the peer connection is closed."""
        return self._done.wait(timeout_s)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self) -> None:
        try:
            await asyncio.wait_for(self._connect(), self._connect_timeout_s)
            self.stats.set_state("connected")
        except TimeoutError:
            self._fail(
                f"No connection to the media server within {self._connect_timeout_s:g} s (ICE failed?)"
            )
        except RelayError as e:
            self._fail(str(e))
        except Exception as e:
            logger.exception("live relay failed")
            self._fail(f"The live relay failed: {e}")

    def _fail(self, message: str) -> None:
        logger.warning("%s", message)
        self.stats.set_state("failed", message)
        self.stop()

    async def _connect(self) -> None:
        install_marker_jitter_buffer()  # idempotent; web/app.py installs it for streamlit-webrtc's leg too
        pc = RTCPeerConnection(self._configuration)
        self._pc = pc
        pc.addTrack(self._upstream)  # a sendrecv transceiver: the annotated track comes back on it
        # The media server answers on the channel its client opens: detections out; config and ping in.
        channel = pc.createDataChannel(DATA_CHANNEL_LABEL)
        self._channel = channel
        channel.on("message", self.stats.on_message)

        @channel.on("open")
        def on_open() -> None:
            self._send_config()
            self._spawn(self._ping(channel))

        connected = asyncio.Event()

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "video":
                self._spawn(pump(track, self.output, self.stats.returned.tick))

        @pc.on("connectionstatechange")
        def on_state() -> None:
            state = pc.connectionState
            if state == "connected":
                connected.set()
            elif state == "failed" and not self.closed:
                self._fail("The connection to the media server failed")
            elif state == "closed" and not self.closed:
                self.stats.set_state("closed")
                self.stop()

        await pc.setLocalDescription(await pc.createOffer())
        local = pc.localDescription
        answer = await self._poster(
            self.offer_url, {"sdp": local.sdp, "type": local.type}, self._connect_timeout_s, self._headers
        )
        if "sdp" not in answer or "type" not in answer:
            raise RelayError(f"The media server's answer has no SDP: {dict(answer)!r:.200}")
        self.peer_id = str(answer.get("peer_id")) if answer.get("peer_id") is not None else None
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
        await connected.wait()

    async def _shutdown(self) -> None:
        try:
            self._upstream.stop()
            self.output.stop()
            current = asyncio.current_task()
            for task in list(self._tasks):
                if task is not current:
                    task.cancel()
            if self._pc is not None:
                await self._pc.close()
            self.stats.set_state("closed")
        finally:
            self._done.set()
