"""Whatever a client sends on its data channel, its connection lives on and nothing is miscounted; a message
over the advertised max-message-size closes that channel (and only it). Real aiortc peers on loopback."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import numpy as np
from aiortc.rtcsctptransport import WEBRTC_STRING

from inference.types import Detection
from media_server.datachannel import ADVERTISED_MAX_MESSAGE_SIZE
from media_server.peers import PeerSession
from tests.media_support import FakeDetector, RunningServer, loopback_settings, running_server
from tools.synthetic import SyntheticPeer

PERSON = Detection(0, "person", 0.9, (100.0, 60.0, 400.0, 420.0))


def _errors(peer: SyntheticPeer) -> list[dict[str, Any]]:
    return [m for m in peer.messages if m.get("type") == "error"]


def _closed(server: RunningServer, reason: str) -> float:
    value = server.state.registry.get_sample_value("rtdetect_live_peers_closed_total", {"reason": reason})
    return value or 0.0


async def _session(server: RunningServer) -> PeerSession:
    (session,) = list(server.state.peers)
    return session


async def test_hostile_messages_get_errors_and_the_peer_lives(photos: dict[str, np.ndarray]) -> None:
    async with (
        running_server(loopback_settings(), FakeDetector((PERSON,))) as server,
        aiohttp.ClientSession() as http,
    ):
        peer = SyntheticPeer(server.url, photos["astronaut"])
        try:
            await peer.connect(http)
            await peer.wait_until(lambda: peer.channel.readyState == "open", 20, "the data channel")
            await peer.wait_for_frames(5, limit_s=20)
            session = await _session(server)

            hostile: list[Any] = [
                "[" * 5000,  # json.loads -> RecursionError: before the fix it ended the association
                "{" * 100_000,
                b"\x00\xff binary",
                "x" * (ADVERTISED_MAX_MESSAGE_SIZE - 1024),  # huge, but under the advertised size
                '{"type": "config", "score_threshold": "nan?"}',
                '{"type": "config", "score_threshold": 1e999}',
                "null",
                '"\\ud800"',
            ]
            for message in hostile:
                peer.channel.send(message)
            # Not UTF-8 in a text message: before the fix aiortc's decode raised inside its SCTP loop.
            assert peer.pc.sctp is not None and peer.channel.id is not None
            await peer.pc.sctp._send(peer.channel.id, WEBRTC_STRING, b'{"type": "ping", "t": "\xff\xfe"}')
            expected = len(hostile) + 1
            await peer.wait_until(lambda: len(_errors(peer)) >= expected, 20, f"{expected} error replies")

            # Still connected, still answering, still streaming; nothing counted as a close.
            peer.send({"type": "ping", "t": 1})
            await peer.wait_until(lambda: any(m.get("type") == "pong" for m in peer.messages), 10, "a pong")
            before = len(peer.echoes)
            await peer.wait_for_frames(before + 10, limit_s=20)
            assert session.messages_invalid == expected
            assert session.messages_refused == 0
            assert session.pc.connectionState == "connected" and len(server.state.peers) == 1
            assert _closed(server, "client") == 0 and _closed(server, "error") == 0
        finally:
            await peer.close()


async def test_message_over_max_message_size_closes_only_that_channel(photos: dict[str, np.ndarray]) -> None:
    async with (
        running_server(loopback_settings(), FakeDetector((PERSON,))) as server,
        aiohttp.ClientSession() as http,
    ):
        peer = SyntheticPeer(server.url, photos["astronaut"])
        try:
            await peer.connect(http)
            await peer.wait_until(lambda: peer.channel.readyState == "open", 20, "the data channel")
            await peer.wait_for_frames(5, limit_s=20)
            session = await _session(server)
            assert f"a=max-message-size:{ADVERTISED_MAX_MESSAGE_SIZE}" in session.pc.localDescription.sdp

            # A client that ignores the advertised size (aiortc's own check is switched off here).
            assert peer.pc.sctp is not None
            peer.pc.sctp._remote_max_message_size = 0
            peer.channel.send("y" * (4 * ADVERTISED_MAX_MESSAGE_SIZE))

            await peer.wait_until(lambda: session.messages_refused == 1, 20, "the message refused")
            closed = asyncio.Event()
            peer.channel.on("close", closed.set)
            if peer.channel.readyState != "closed":
                await asyncio.wait_for(closed.wait(), 20)
            # Nothing of it was kept, and the video goes on.
            assert peer.channel.readyState == "closed"
            server_sctp = session.pc.sctp
            assert server_sctp is not None
            held = sum(len(c.user_data) for s in server_sctp._inbound_streams.values() for c in s.reassembly)
            assert held <= ADVERTISED_MAX_MESSAGE_SIZE
            before = len(peer.echoes)
            await peer.wait_for_frames(before + 10, limit_s=20)
            assert session.pc.connectionState == "connected" and len(server.state.peers) == 1
            assert _closed(server, "client") == 0 and _closed(server, "error") == 0
        finally:
            await peer.close()
