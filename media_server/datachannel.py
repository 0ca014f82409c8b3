"""Limits aiortc's SCTP transport does not enforce on what a client sends over a data channel.

- Size: aiortc advertises `a=max-message-size` (256 KiB) but reassembles any message (an 8 MB one was), in an
  unbounded per-stream list. Here each inbound stream's reassembly holds at most that many bytes; a message
  that would exceed it is refused and its data channel closed. Closing, not dropping: the client keeps
  sending the rest of the message, and an ordered stream cannot skip a half-received message and resume
  (its sequence number would never advance), and RFC 8831 section 6.6 says a receiver SHOULD reset the
  channel of a message it cannot take. The client learns it (the channel closes); the peer's video goes on.
- Encoding: a text message (PPID 51) that is not UTF-8 made aiortc's `bytes.decode` raise inside its SCTP
  receive loop, which ended the whole association (and the peer). It is dropped and reported instead.

The seam is narrow and private to aiortc (its `InboundStream` per stream id, and the transport's
`_data_channel_receive`); tests/test_media_datachannel.py pins both with a real aiortc peer, so an aiortc
upgrade that moves them fails there.
"""

from __future__ import annotations

from collections.abc import Callable

from aiortc.rtcsctptransport import WEBRTC_STRING, InboundStream, RTCSctpTransport

# What aiortc advertises in its answer (RTCSctpTransport.getCapabilities().maxMessageSize).
ADVERTISED_MAX_MESSAGE_SIZE = RTCSctpTransport.getCapabilities().maxMessageSize


class _BoundedInboundStream(InboundStream):
    """An inbound stream whose reassembly never holds more than `limit` bytes."""

    def __init__(self, transport: RTCSctpTransport, limit: int, on_over: Callable[[int, int], None]) -> None:
        super().__init__()
        self._transport = transport
        self._limit = limit
        self._on_over = on_over
        self._size = 0
        self.refused = False

    def add_chunk(self, chunk: object) -> None:
        size = len(chunk.user_data)  # type: ignore[attr-defined]
        if self.refused:
            # The channel is closing: drop the rest without holding it. The caller takes this chunk's size
            # off the advertised receive window right after; give it back so the window does not shrink.
            self._transport._advertised_rwnd += size
            return
        super().add_chunk(chunk)  # type: ignore[arg-type]
        self._size = sum(len(c.user_data) for c in self.reassembly)
        if self._size > self._limit:
            self.refused = True
            self._transport._advertised_rwnd += self._size
            self.reassembly.clear()
            self._on_over(chunk.stream_id, self._size)  # type: ignore[attr-defined]
            self._size = 0


def guard_data_channels(
    transport: RTCSctpTransport,
    *,
    on_refused: Callable[[int, int], None],
    on_invalid: Callable[[str], None],
    max_message_size: int = ADVERTISED_MAX_MESSAGE_SIZE,
) -> None:
    """Install the limits on `transport` (before the association starts: right after the remote offer).

    `on_refused(size, limit)` runs when a message over `max_message_size` was refused (its channel is then
    closing); `on_invalid(reason)` when a text message was not UTF-8 (dropped)."""

    def over(stream_id: int, size: int) -> None:
        channel = transport._data_channels.get(stream_id)
        if channel is not None:
            channel.close()
        on_refused(size, max_message_size)

    def inbound_stream(stream_id: int) -> InboundStream:
        stream = transport._inbound_streams.get(stream_id)
        if stream is None:
            stream = transport._inbound_streams[stream_id] = _BoundedInboundStream(
                transport, max_message_size, over
            )
        return stream

    receive = transport._data_channel_receive

    async def data_channel_receive(stream_id: int, pp_id: int, data: bytes) -> None:
        if pp_id == WEBRTC_STRING:
            try:
                data.decode("utf8")
            except UnicodeDecodeError as e:
                on_invalid(f"a text message that is not UTF-8 ({e.reason} at byte {e.start})")
                return
        await receive(stream_id, pp_id, data)

    # Instance attributes shadow the methods for this transport only.
    transport._get_inbound_stream = inbound_stream  # type: ignore[method-assign]
    transport._data_channel_receive = data_channel_receive  # type: ignore[method-assign]
