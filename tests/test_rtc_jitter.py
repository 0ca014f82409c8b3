"""The marker-bit jitter buffer: aiortc's internals it relies on, frame release on real encoder output, and
two real aiortc peers (a single frame followed by silence is decoded; a lost packet never yields a partial
frame)."""

from __future__ import annotations

import asyncio
import fractions
import inspect
import types
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiortc
import aiortc.rtcrtpreceiver
import cv2
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender
from aiortc.codecs import depayload, get_encoder
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket, is_rtcp
from av import VideoFrame

from rtc.ice import HostAddressOverride
from rtc.jitter import MarkerJitterBuffer, MarkerJitterBufferInstall

VP8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
H264 = RTCRtpCodecParameters(
    mimeType="video/H264",
    clockRate=90000,
    payloadType=97,
    parameters={"packetization-mode": "1", "level-asymmetry-allowed": "1", "profile-level-id": "42e01f"},
)
CODECS = {"VP8": VP8, "H264": H264}


@pytest.fixture(autouse=True)
def stock_aiortc(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts from aiortc as it ships, whatever an earlier test installed process-wide (the UI
    relay installs the marker buffer for good, as its process wants)."""
    monkeypatch.setattr(aiortc.rtcrtpreceiver, "JitterBuffer", JitterBuffer)


def test_aiortc_internals_the_seam_relies_on() -> None:
    """If any of this changes, rtc/jitter.py must be re-checked against the new aiortc."""
    assert aiortc.__version__ == "1.16.0"  # pinned in pyproject.toml
    assert aiortc.rtcrtpreceiver.JitterBuffer is JitterBuffer  # the one name the install replaces
    init = inspect.getsource(aiortc.rtcrtpreceiver.RTCRtpReceiver.__init__)
    assert "JitterBuffer(capacity=512, is_video=True)" in init
    handle = inspect.getsource(aiortc.rtcrtpreceiver.RTCRtpReceiver._handle_rtp_packet)
    assert "self.__jitter_buffer.add(packet)" in handle
    add = inspect.getsource(JitterBuffer.add)
    assert "return pli_flag, self._remove_frame(packet.sequence_number)" in add
    assert "smart_remove" in add
    buffer = JitterBuffer(capacity=16, is_video=True)
    assert {"_origin", "_packets", "_capacity"} <= set(vars(buffer))
    assert list(inspect.signature(JitterBuffer.remove).parameters) == ["self", "count"]


def test_a_receiver_built_while_installed_holds_the_marker_buffer() -> None:
    """The seam itself, not the text of aiortc's source: a real RTCRtpReceiver's buffer is ours for video
    (aiortc's for audio) while installed, and aiortc's again after."""
    transport: Any = types.SimpleNamespace(state="new")  # all the constructor reads of its DTLS transport

    def buffer(kind: str) -> object:
        receiver = aiortc.rtcrtpreceiver.RTCRtpReceiver(kind, transport)
        return getattr(receiver, "_RTCRtpReceiver__jitter_buffer")  # noqa: B009 - a name-mangled private

    install = MarkerJitterBufferInstall()
    install.install()
    try:
        assert type(buffer("video")) is MarkerJitterBuffer
        assert type(buffer("audio")) is JitterBuffer
    finally:
        install.uninstall()
    assert type(buffer("video")) is JitterBuffer
    assert RtpPacket(marker=1).marker == 1
    # aiortc's sender marks each frame's last packet, which is what the buffer releases on.
    run_rtp = inspect.getsource(RTCRtpSender._run_rtp)
    assert "packet.marker = (i == len(enc_frame.payloads) - 1) and 1 or 0" in run_rtp


def test_install_nests_and_restores() -> None:
    first, second = MarkerJitterBufferInstall(), MarkerJitterBufferInstall()
    first.install()
    second.install()
    video = aiortc.rtcrtpreceiver.JitterBuffer(capacity=512, is_video=True)
    audio = aiortc.rtcrtpreceiver.JitterBuffer(capacity=16, prefetch=4)
    assert type(video) is MarkerJitterBuffer
    assert type(audio) is JitterBuffer  # audio keeps aiortc's prefetching buffer
    second.uninstall()
    first.uninstall()
    assert aiortc.rtcrtpreceiver.JitterBuffer is JitterBuffer


def _photo_frames(n: int, width: int = 640, height: int = 480) -> list[VideoFrame]:
    """A textured picture moving right: real encoder output of several packets per frame."""
    import skimage.data

    photo = cv2.resize(cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR), (width, height))
    frames = []
    for i in range(n):
        frame = VideoFrame.from_ndarray(np.roll(photo, 12 * i, axis=1), format="bgr24").reformat(
            format="yuv420p"
        )
        frame.pts, frame.time_base = i * 3000, fractions.Fraction(1, 90000)
        frames.append(frame)
    return frames


def _packets(codec: RTCRtpCodecParameters, n: int) -> tuple[list[RtpPacket], dict[int, bytes]]:
    """RTP packets as aiortc's sender makes them (marker on each frame's last), each with its depayloaded
    data as the receiver sets it, and every whole encoded frame by timestamp."""
    encoder = get_encoder(codec)
    packets: list[RtpPacket] = []
    whole: dict[int, bytes] = {}
    seq = 1000
    for frame in _photo_frames(n):
        payloads, timestamp = encoder.encode(frame, force_keyframe=True)  # several packets each
        datas = []
        for k, payload in enumerate(payloads):
            packet = RtpPacket(
                payload_type=codec.payloadType,
                sequence_number=seq % 65536,
                timestamp=timestamp,
                marker=int(k == len(payloads) - 1),
            )
            packet.payload = payload
            packet._data = depayload(codec, payload)  # type: ignore[attr-defined]
            datas.append(packet._data)  # type: ignore[attr-defined]
            packets.append(packet)
            seq += 1
        whole[timestamp] = b"".join(datas)
    return packets, whole


@pytest.mark.parametrize("name", ["VP8", "H264"])
def test_frames_are_released_on_their_last_packet(name: str) -> None:
    packets, whole = _packets(CODECS[name], 8)
    marker, stock = MarkerJitterBuffer(capacity=512, is_video=True), JitterBuffer(capacity=512, is_video=True)
    released_marker: list[tuple[int, JitterFrame]] = []
    released_stock: list[tuple[int, JitterFrame]] = []
    for index, packet in enumerate(packets):
        for buffer, out in ((marker, released_marker), (stock, released_stock)):
            _, frame = buffer.add(packet)
            if frame is not None:
                out.append((index, frame))
    assert len(whole) == 8 and len(packets) > 16  # several packets per frame
    # Every frame, whole, the moment its marked packet is in; aiortc's buffer holds each for one more
    # packet (the next frame's first) and never releases the last one.
    assert [f.timestamp for _, f in released_marker] == list(whole)
    assert all(f.data == whole[f.timestamp] for _, f in released_marker)
    assert all(packets[i].marker for i, _ in released_marker)
    assert [f.timestamp for _, f in released_stock] == list(whole)[:-1]
    assert all(i_s == i_m + 1 for (i_m, _), (i_s, _) in zip(released_marker, released_stock, strict=False))


@pytest.mark.parametrize("name", ["VP8", "H264"])
def test_a_gap_is_never_released_as_a_partial_frame(name: str) -> None:
    packets, whole = _packets(CODECS[name], 8)
    # Lose a middle packet of frame 3 (not its marker), and reorder two packets of frame 5.
    ts = list(whole)
    lost = next(i for i, p in enumerate(packets) if p.timestamp == ts[3] and not p.marker and i > 0)
    frame5 = [i for i, p in enumerate(packets) if p.timestamp == ts[5]]
    order = [i for i in range(len(packets)) if i != lost]
    a, b = order.index(frame5[0]), order.index(frame5[1])
    order[a], order[b] = order[b], order[a]
    buffer = MarkerJitterBuffer(capacity=512, is_video=True)
    released = [f for i in order if (f := buffer.add(packets[i])[1]) is not None]
    # Frames 0-2 go; the gap in frame 3 holds everything behind it (NACK would fill it, as in aiortc).
    assert [f.timestamp for f in released] == ts[:3]
    assert all(f.data == whole[f.timestamp] for f in released)
    # The retransmission arrives: frame 3 goes whole, the rest follow one per packet as in aiortc.
    _, frame = buffer.add(packets[lost])
    assert frame is not None and frame.timestamp == ts[3] and frame.data == whole[ts[3]]


# --- two real aiortc peers ---------------------------------------------------------------------------


class ScriptedTrack(MediaStreamTrack):
    """Sends the given frames at 30 fps, then nothing (the track stays live: a paused camera)."""

    kind = "video"

    def __init__(self, frames: list[VideoFrame]) -> None:
        super().__init__()
        self._frames = list(frames)
        self._silence = asyncio.Event()
        self.exhausted = asyncio.Event()

    async def recv(self) -> VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if not self._frames:
            self.exhausted.set()
            await self._silence.wait()
            raise MediaStreamError
        await asyncio.sleep(1 / 30)
        return self._frames.pop(0)


@asynccontextmanager
async def peers(
    track: MediaStreamTrack, codec: str, tap: Callable[[bytes], bool] | None = None
) -> AsyncIterator[tuple[RTCPeerConnection, asyncio.Future[MediaStreamTrack]]]:
    """A sending and a receiving peer on loopback; `tap(rtp)` False drops an outgoing packet."""
    override = HostAddressOverride(["127.0.0.1"])
    override.install()
    config = RTCConfiguration(iceServers=[])
    sender, receiver = RTCPeerConnection(config), RTCPeerConnection(config)
    remote: asyncio.Future[MediaStreamTrack] = asyncio.get_running_loop().create_future()
    receiver.on("track", lambda t: remote.done() or remote.set_result(t))
    try:
        transceiver = sender.addTransceiver(track, direction="sendonly")
        caps = RTCRtpSender.getCapabilities("video")
        assert caps is not None
        transceiver.setCodecPreferences([c for c in caps.codecs if c.mimeType == f"video/{codec}"])
        await sender.setLocalDescription(await sender.createOffer())
        await receiver.setRemoteDescription(sender.localDescription)
        await receiver.setLocalDescription(await receiver.createAnswer())
        await sender.setRemoteDescription(receiver.localDescription)
        if tap is not None:
            transport = transceiver.sender.transport
            send = transport._send_rtp

            async def tapped(data: bytes) -> None:
                if is_rtcp(data) or tap(data):
                    await send(data)

            transport._send_rtp = tapped  # type: ignore[method-assign]
        yield receiver, remote
    finally:
        await sender.close()
        await receiver.close()
        override.uninstall()


@pytest.mark.parametrize("codec", ["VP8", "H264"])
async def test_a_single_frame_followed_by_silence_is_decoded(codec: str) -> None:
    install = MarkerJitterBufferInstall()
    install.install()
    try:
        async with peers(ScriptedTrack(_photo_frames(1)), codec) as (_, remote):
            track = await asyncio.wait_for(remote, 10)
            frame = await asyncio.wait_for(track.recv(), 10)
            assert isinstance(frame, VideoFrame) and (frame.width, frame.height) == (640, 480)
    finally:
        install.uninstall()
    # aiortc's own buffer holds that frame until a next one arrives, which never does.
    async with peers(ScriptedTrack(_photo_frames(1)), codec) as (_, remote):
        track = await asyncio.wait_for(remote, 10)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(track.recv(), 3)


@pytest.mark.parametrize("codec", ["VP8", "H264"])
async def test_a_lost_packet_never_yields_a_partial_frame(codec: str) -> None:
    """A packet of a frame after the fourth is lost for good (its retransmissions too); every frame that reaches the
    decoder is exactly one the sender encoded, and the frame it belongs to never does."""
    sent: dict[int, dict[int, bytes]] = {}  # RTP timestamp -> sequence number -> payload
    state: dict[str, Any] = {"ssrc": None, "lost": None, "lost_seq": None}
    codec_parameters = CODECS[codec]

    def tap(data: bytes) -> bool:
        packet = RtpPacket.parse(data)
        if state["ssrc"] is None:
            state["ssrc"] = packet.ssrc
        if packet.ssrc != state["ssrc"]:
            return state["lost"] is None  # retransmissions (RTX): none once the packet is lost
        if packet.sequence_number == state["lost_seq"]:
            return False  # a retransmission on the original stream
        sent.setdefault(packet.timestamp, {})[packet.sequence_number] = packet.payload
        if state["lost"] is None and len(sent) >= 5 and not packet.marker:  # not a frame's last packet
            state["lost"], state["lost_seq"] = packet.timestamp, packet.sequence_number
            return False
        return True

    install = MarkerJitterBufferInstall()
    install.install()
    try:
        released: list[JitterFrame] = []
        script = ScriptedTrack(_photo_frames(40))
        async with peers(script, codec, tap) as (receiver, remote):
            track = await asyncio.wait_for(remote, 10)
            rtp_receiver = receiver.getTransceivers()[0].receiver
            buffer = rtp_receiver._RTCRtpReceiver__jitter_buffer  # type: ignore[attr-defined]
            assert isinstance(buffer, MarkerJitterBuffer)
            add = buffer.add

            def recording_add(packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
                pli, frame = add(packet)
                if frame is not None:
                    released.append(JitterFrame(frame.data, frame.timestamp))
                return pli, frame

            buffer.add = recording_add  # type: ignore[method-assign]
            decoded = 0
            while decoded < 3:  # frames before the loss are decoded
                await asyncio.wait_for(track.recv(), 10)
                decoded += 1
            await asyncio.wait_for(script.exhausted.wait(), 10)
            await asyncio.sleep(0.5)  # the last packets reach the receiver
    finally:
        install.uninstall()
    assert state["lost"] is not None
    whole = {
        ts: b"".join(depayload(codec_parameters, p) for _, p in sorted(parts.items()))
        for ts, parts in sent.items()
    }
    assert len(released) >= 4
    assert all(f.data == whole[f.timestamp] for f in released), "a frame reached the decoder partial"
    assert state["lost"] not in {f.timestamp for f in released}


async def test_the_media_server_and_the_ui_relay_receive_through_the_marker_buffer() -> None:
    from tests.media_support import FakeDetector, loopback_settings, running_server
    from web.ice import aiortc_configuration
    from web.relay import MediaServerRelay

    async with running_server(loopback_settings(), FakeDetector()) as server:
        relay = MediaServerRelay(server.url, aiortc_configuration([]), connect_timeout_s=10)
        relay.addTrack(ScriptedTrack(_photo_frames(90)))
        relay.start()
        await asyncio.wait_for(relay.output.recv(), 15)  # the annotated video is back
        session = next(iter(server.state.peers))
        pcs = {"server": session.pc, "relay": relay._pc}
        for name, pc in pcs.items():
            assert pc is not None
            (receiver,) = [t.receiver for t in pc.getTransceivers() if t.kind == "video"]
            buffer = receiver._RTCRtpReceiver__jitter_buffer  # type: ignore[attr-defined]
            assert isinstance(buffer, MarkerJitterBuffer), name
        await asyncio.to_thread(relay.stop)
        assert await asyncio.to_thread(relay.wait_closed, 10)
