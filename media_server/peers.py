"""Peer sessions and the registry that bounds them.

A session owns one RTCPeerConnection and its media pipeline. It closes, releasing everything it holds, on
ICE/DTLS failure, on the client's close, when the remote track ends, when no frame arrived for
`disconnect_timeout_s` (aiortc has no "disconnected" state, and a vanished peer otherwise lingers until
ICE consent expires, about 30 s), and at server shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

from aiortc import RTCDataChannel, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack
from aiortc.sdp import SessionDescription

from inference.ratelog import RateLimitedLog
from inference.zones import Geometry
from media_server.datachannel import guard_data_channels
from media_server.frames import FrameSourceFactory, TrackFrameSource
from media_server.ice import announce_addresses
from media_server.settings import Settings
from media_server.track import PeerMedia
from observability.live import LiveMetrics
from rtc.messages import ZonesRequest

logger = logging.getLogger(__name__)

# Control messages (config, ping) are tiny; a larger text is answered with an error without being parsed.
MAX_CONTROL_MESSAGE_CHARS = 16 * 1024


class OfferError(ValueError):
    """The offer cannot be answered: malformed SDP, or not the media this server takes."""


def cap_remote_candidates(sdp: str, limit: int) -> tuple[str, int]:
    """`sdp` with at most `limit` `a=candidate` lines per media section, and how many were dropped.

    aioice checks every pair it is given (an offer naming 500 addresses made the server send ~1,800 STUN
    packets to them); cutting the SDP before aiortc parses it keeps the extras from ever reaching aioice.
    """
    out: list[str] = []
    kept = dropped = 0
    for line in sdp.splitlines(keepends=True):
        if line.startswith("m="):
            kept = 0
        elif line.startswith("a=candidate:"):
            if kept >= limit:
                dropped += 1
                continue
            kept += 1
        out.append(line)
    return "".join(out), dropped


def check_offer_sdp(sdp: str) -> None:
    """Exactly one video m-line (plus an optional data channel): other media would be received into
    aiortc's unbounded queues with nobody reading them."""
    try:
        parsed = SessionDescription.parse(sdp)
    except Exception as e:  # the parser raises whatever its input provokes; all of it means "bad SDP"
        raise OfferError(f"unparseable SDP: {type(e).__name__}: {e}") from e
    kinds = [m.kind for m in parsed.media]
    if len(kinds) > 2:  # one video and at most one data channel: cheap to refuse before building anything
        raise OfferError(f"too many media sections: {len(kinds)} (one video, one data channel at most)")
    if kinds.count("video") != 1:
        raise OfferError(f"the offer must contain exactly one video track, got media {kinds}")
    if any(k not in ("video", "application") for k in kinds):
        raise OfferError(f"only video and a data channel are accepted, got media {kinds}")


class PeerSession:
    def __init__(
        self,
        pc: RTCPeerConnection,
        media: PeerMedia,
        *,
        settings: Settings,
        metrics: LiveMetrics,
        registry: PeerRegistry,
        source_factory: FrameSourceFactory = TrackFrameSource,
    ) -> None:
        self.id = uuid.uuid4().hex[:12]
        self.pc = pc
        self.media = media
        self.created = time.time()
        self.close_reason: str | None = None
        self._settings = settings
        self._metrics = metrics
        self._registry = registry
        self._source_factory = source_factory
        self._channel: RTCDataChannel | None = None
        self._connected = asyncio.Event()
        self._watchdog: asyncio.Task[None] | None = None
        self._closing: asyncio.Task[None] | None = None
        self._started_media = False
        self.results_sent = 0
        self.results_skipped = 0
        self.messages_invalid = 0  # answered with an error message
        self.messages_refused = 0  # over max-message-size: the channel was closed

        media.on_result = self.send_result
        media.on_ended = self._remote_ended
        media.on_crashed = self._crashed
        pc.on("connectionstatechange", self._on_connection_state)
        pc.on("track", self._on_track)
        pc.on("datachannel", self._on_datachannel)

    # --- signalling -------------------------------------------------------------------------------------

    async def answer(self, offer: RTCSessionDescription) -> RTCSessionDescription:
        """Apply the offer and return the answer (ICE gathering included: aiortc does not trickle)."""
        check_offer_sdp(offer.sdp)
        sdp, dropped = cap_remote_candidates(offer.sdp, self._settings.max_remote_candidates)
        if dropped:
            logger.info("peer %s: dropped %d remote ICE candidates over the cap", self.id, dropped)
        try:
            transceiver = self.pc.addTransceiver(self.media.outgoing, direction="sendrecv")
            if self._settings.codec != "auto":
                transceiver.setCodecPreferences(_preferred_codecs(self._settings.codec))
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=offer.type))
            if not self._started_media:
                raise OfferError("the offer sends no video")
            if self.pc.sctp is not None:
                guard_data_channels(
                    self.pc.sctp, on_refused=self._message_refused, on_invalid=self._message_invalid
                )
            await self.pc.setLocalDescription(await self.pc.createAnswer())
        except OfferError:
            raise
        except Exception as e:
            # The SDP comes from the client, and aiortc answers odd SDP with whatever it provokes (ValueError,
            # LookupError, AttributeError, its own InvalidAccessError, ...) from any of these three steps.
            logger.debug("peer %s: offer refused", self.id, exc_info=e)
            raise OfferError(f"cannot use the offer: {type(e).__name__}: {e}") from e
        local = self.pc.localDescription
        self._watchdog = asyncio.create_task(self._watch(), name=f"rtdetect-watchdog-{self.id}")
        return RTCSessionDescription(
            sdp=announce_addresses(local.sdp, self._settings.ice_announced_addresses), type=local.type
        )

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind != "video" or self._started_media:
            # check_offer_sdp admits one video track only; anything else is stopped at once.
            track.stop()
            return
        self._started_media = True
        self.media.start(self._source_factory(track))

    def _on_connection_state(self) -> None:
        state = self.pc.connectionState
        logger.debug("peer %s connection %s", self.id, state)
        if state == "connected":
            self._connected.set()
        elif state == "failed":
            self.close_soon("ice_failed")
        elif state == "closed":
            self.close_soon("client")

    # --- data channel -----------------------------------------------------------------------------------

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        self._channel = channel
        channel.on("message", self._on_message)

    def _on_message(self, message: str | bytes) -> None:
        # Whatever a client sends, the handler answers with an error and the connection lives on: an
        # exception escaping here would unwind through aiortc's SCTP receive loop and end the association.
        try:
            if len(message) > MAX_CONTROL_MESSAGE_CHARS:
                raise ValueError(f"message too long: {len(message)} > {MAX_CONTROL_MESSAGE_CHARS}")
            data = json.loads(message)
            if not isinstance(data, dict):
                raise ValueError("expected a JSON object")
            kind = data.get("type")
            if kind == "config":
                self._configure(data)
            elif kind == "ping":
                self.send({"type": "pong", "t": data.get("t"), "server_time": time.time()})
            elif kind == "zones":
                self._set_zones(data)
            else:
                raise ValueError(f"unknown message type {kind!r}")
        except (ValueError, TypeError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
            self.messages_invalid += 1
            self.send({"type": "error", "detail": f"{type(e).__name__}: {e}"[:200]})
        except Exception as e:  # a bug here must cost the client an error reply, never its connection
            self.messages_invalid += 1
            self._registry.error_log.error(
                ("message", type(e).__name__), "peer %s: data-channel message failed", self.id, exc_info=e
            )
            self.send({"type": "error", "detail": "the server could not handle this message"})

    def _set_zones(self, data: dict[str, Any]) -> None:
        """The peer's own zones and lines (rtc/messages.py), checked besides the server's."""
        request = ZonesRequest.model_validate(data)  # pydantic's ValidationError is a ValueError
        request.check_limit(self._settings.max_peer_zones)
        set_geometry = getattr(self.media, "set_geometry", None)
        if not self._settings.tracking or set_geometry is None:
            raise ValueError("zones need tracking, which is off on this server")
        set_geometry(Geometry.of(self._settings.zones, self._settings.lines, request.zones, request.lines))
        self.send(request.to_message())

    def _message_invalid(self, reason: str) -> None:
        """A text message that is not UTF-8: aiortc would raise decoding it; dropped and answered instead."""
        self.messages_invalid += 1
        self.send({"type": "error", "detail": reason})

    def _message_refused(self, size: int, limit: int) -> None:
        """A message over the advertised max-message-size: its channel is being closed (RFC 8831 6.6)."""
        self.messages_refused += 1
        logger.info(
            "peer %s: data channel closed, a message exceeded %d bytes (%d buffered)", self.id, limit, size
        )

    def _configure(self, data: dict[str, Any]) -> None:
        if "score_threshold" in data:
            value = float(data["score_threshold"])
            if not 0.0 <= value <= 1.0:
                raise ValueError("score_threshold must be within [0, 1]")
            self.media.params = dataclasses.replace(self.media.params, score_threshold=value)
        self.send({"type": "config", "score_threshold": self.media.params.score_threshold})

    def send(self, message: Mapping[str, Any]) -> bool:
        """Send JSON on the data channel if it is open and the client keeps up; False when skipped."""
        channel = self._channel
        if channel is None or channel.readyState != "open":
            return False
        if channel.bufferedAmount > self._settings.data_channel_max_buffered_bytes:
            self.results_skipped += 1
            self._metrics.results_dropped.inc()
            return False
        channel.send(json.dumps(message, separators=(",", ":")))
        return True

    def send_result(self, message: Mapping[str, Any]) -> None:
        if self.send(message):
            self.results_sent += 1

    # --- lifecycle --------------------------------------------------------------------------------------

    async def _watch(self) -> None:
        timeout = self._settings.disconnect_timeout_s
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
        except TimeoutError:
            logger.info("peer %s did not connect within %.1f s", self.id, timeout)
            self.close_soon("timeout")
            return
        while True:
            idle = time.monotonic() - self.media.last_activity
            if idle > timeout:
                logger.info("peer %s sent no frame for %.1f s", self.id, idle)
                self.close_soon("timeout")
                return
            await asyncio.sleep(min(timeout - idle, timeout / 4) + 0.01)

    def _remote_ended(self) -> None:
        # The remote track ends when the client stops sending: it closed, or its transport went away.
        self.close_soon("client")

    def _crashed(self, error: BaseException) -> None:
        logger.error("peer %s pipeline failed", self.id, exc_info=error)
        self.close_soon("error")

    def close_soon(self, reason: str) -> asyncio.Task[None]:
        """Start closing (once; the first reason wins). Safe to call from the tasks being closed."""
        if self._closing is None:
            self.close_reason = reason
            self._closing = asyncio.create_task(self._close(reason), name=f"rtdetect-close-{self.id}")
            self._registry.closing(self._closing)
        return self._closing

    async def close(self, reason: str) -> None:
        await self.close_soon(reason)

    async def _close(self, reason: str) -> None:
        # Free the slot first: a client reconnecting right away must not get 503 for its own old peer.
        self._registry.remove(self)
        if self._watchdog is not None and self._watchdog is not asyncio.current_task():
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
        try:
            await self.media.stop()
        finally:  # whatever happened to the pipeline, the connection (sockets, decoder thread) goes
            try:
                await self.pc.close()
            except Exception as e:  # a half-made connection; the peer is gone all the same and is counted
                self._registry.error_log.error(
                    type(e).__name__, "peer %s: closing the connection failed: %r", self.id, e, exc_info=e
                )
            self._channel = None
            self._metrics.peers_closed.labels(reason=reason).inc()
            logger.info("peer %s closed (%s)", self.id, reason)

    def snapshot(self) -> dict[str, Any]:
        return {
            "peer_id": self.id,
            "created": self.created,
            "connection_state": self.pc.connectionState,
            "results_sent": self.results_sent,
            "results_skipped": self.results_skipped,
            "messages_invalid": self.messages_invalid,
            "messages_refused": self.messages_refused,
            **self.media.stats(),
        }


def _preferred_codecs(name: str) -> list[Any]:
    """The named codec first, then the rest (RTX kept): a preference, not a restriction, so a browser
    without it still connects."""
    capabilities = RTCRtpSender.getCapabilities("video")
    if capabilities is None:
        return []
    codecs = capabilities.codecs
    first = [c for c in codecs if c.mimeType.lower() == f"video/{name.lower()}"]
    return first + [c for c in codecs if c not in first]


class PeerRegistry:
    """The app's peers, bounded by `max_peers`; owns the gauge of active peers."""

    def __init__(self, max_peers: int, metrics: LiveMetrics, *, error_log_interval_s: float = 10.0) -> None:
        self.max_peers = max_peers
        self._metrics = metrics
        # Failures the peers cannot pass on (aiortc's close failing on a half-made connection, a data-channel
        # handler bug): one line per kind per interval.
        self.error_log = RateLimitedLog(logger, error_log_interval_s)
        self._peers: dict[str, PeerSession] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._empty = asyncio.Event()
        self._empty.set()

    def __len__(self) -> int:
        return len(self._peers)

    def __iter__(self) -> Iterator[PeerSession]:
        return iter(list(self._peers.values()))

    def get(self, peer_id: str) -> PeerSession | None:
        return self._peers.get(peer_id)

    def try_add(self, session: PeerSession) -> bool:
        """Admit `session` unless full. No await between the check and the insert: concurrent offers
        cannot both take the last slot."""
        if len(self._peers) >= self.max_peers:
            return False
        self._peers[session.id] = session
        self._empty.clear()
        self._metrics.active_peers.set(len(self._peers))
        return True

    def remove(self, session: PeerSession) -> None:
        if self._peers.pop(session.id, None) is not None:
            self._metrics.active_peers.set(len(self._peers))
            if not self._peers:
                self._empty.set()

    async def wait_empty(self, limit_s: float) -> None:
        """Wait until no peer is left and every close has finished (TimeoutError after `limit_s`)."""

        async def settled() -> None:
            await self._empty.wait()
            while self._closing:
                await asyncio.gather(*list(self._closing), return_exceptions=True)

        await asyncio.wait_for(settled(), limit_s)

    def closing(self, task: asyncio.Task[None]) -> None:
        # Hold a reference until done (the loop keeps only weak ones) so shutdown can await it.
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close_all(self, reason: str) -> None:
        for session in self:
            session.close_soon(reason)
        if self._closing:
            await asyncio.gather(*list(self._closing), return_exceptions=True)
