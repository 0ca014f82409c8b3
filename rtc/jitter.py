"""A video jitter buffer that releases a frame on its RTP marker bit, installed into aiortc's receiver.

aiortc's `JitterBuffer` hands a video frame to the decoder only when a packet of the *next* frame arrives
(a new RTP timestamp), which adds one frame interval (33 ms at 30 fps) to every frame. The last packet of
each frame carries the marker bit (VP8: RFC 7741 section 4.1; H264: RFC 6184 section 5.1), so the frame is
complete as soon as every packet from its first to the marked one is in. `MarkerJitterBuffer` releases it
then; everything else is aiortc's own code: a gap still waits (NACK retransmits it) or is dropped whole by
`smart_remove` when the buffer overflows (with a PLI), so no frame with a missing packet reaches the decoder.
A frame whose marker packet never shows but whose successor does is released as aiortc would.

The seam is one name, `aiortc.rtcrtpreceiver.JitterBuffer`, which `RTCRtpReceiver.__init__` calls as
`JitterBuffer(capacity=512, is_video=True)` for video: `MarkerJitterBufferInstall` replaces it with a
factory for as long as it is installed (process-wide, like aiortc's codecs; receivers created before keep
the buffer they have). tests/test_rtc_jitter.py fails if aiortc's internals this relies on change.

Upstream, this is a change to `JitterBuffer._remove_frame` alone (release on `packet.marker` when the
buffer holds video), since aiortc's packetizers already set the marker bit on every frame's last packet.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import aiortc.rtcrtpreceiver
from aiortc.jitterbuffer import JitterBuffer, JitterFrame

log = logging.getLogger("rtdetect.rtc")


class MarkerJitterBuffer(JitterBuffer):
    """aiortc's video jitter buffer, releasing each frame on its marker bit instead of on the next frame."""

    def _remove_frame(self, sequence_number: int) -> JitterFrame | None:
        origin = self._origin
        if origin is None:
            return None
        packets: list[Any] = []
        timestamp: int | None = None
        for count in range(self._capacity):
            packet = self._packets[(origin + count) % self._capacity]
            if packet is None:  # a gap: wait for it (NACK) or for smart_remove, as aiortc does
                return None
            if timestamp is None:
                timestamp = packet.timestamp
            elif packet.timestamp != timestamp:
                # The next frame began without a marker on this one (a sender that sets none): aiortc's rule.
                return self._release(packets, timestamp, count)
            packets.append(packet)
            if packet.marker:
                return self._release(packets, timestamp, count + 1)
        return None

    def _release(self, packets: list[Any], timestamp: int, count: int) -> JitterFrame:
        frame = JitterFrame(data=b"".join(p._data for p in packets), timestamp=timestamp)
        self.remove(count)
        return frame


class _BufferFactory(Protocol):
    def __call__(self, capacity: int, prefetch: int = 0, is_video: bool = False) -> JitterBuffer: ...


def _create_buffer(capacity: int, prefetch: int = 0, is_video: bool = False) -> JitterBuffer:
    cls = MarkerJitterBuffer if is_video else JitterBuffer  # audio keeps aiortc's prefetching buffer
    return cls(capacity=capacity, prefetch=prefetch, is_video=is_video)


class MarkerJitterBufferInstall:
    """Installs `MarkerJitterBuffer` for the video receivers created from now on; `uninstall` restores
    what `install` replaced. Installs nest (tests create several apps): each undoes only its own."""

    def __init__(self) -> None:
        self._previous: _BufferFactory | None = None
        self._factory: _BufferFactory | None = None

    @property
    def installed(self) -> bool:
        return self._previous is not None

    def install(self) -> None:
        if self._previous is not None:
            return
        self._previous = aiortc.rtcrtpreceiver.JitterBuffer

        # A fresh function per install, so an uninstall can tell whether its own patch is still in place.
        def factory(capacity: int, prefetch: int = 0, is_video: bool = False) -> JitterBuffer:
            return _create_buffer(capacity, prefetch, is_video)

        self._factory = factory
        aiortc.rtcrtpreceiver.JitterBuffer = factory  # type: ignore[misc,assignment]
        log.debug("video frames released on the RTP marker bit")

    def uninstall(self) -> None:
        if self._previous is None:
            return
        if aiortc.rtcrtpreceiver.JitterBuffer is self._factory:
            aiortc.rtcrtpreceiver.JitterBuffer = self._previous  # type: ignore[misc,assignment]
        self._previous = self._factory = None


_process_install: MarkerJitterBufferInstall | None = None


def install_marker_jitter_buffer() -> None:
    """Idempotent, process-wide install for processes that never uninstall (the UI's Streamlit server)."""
    global _process_install
    current = _process_install
    if current is not None and aiortc.rtcrtpreceiver.JitterBuffer is current._factory:
        return
    _process_install = MarkerJitterBufferInstall()
    _process_install.install()
