"""Signalling, limits and peer lifecycle of the media server, with real aiortc peers."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack

from inference.types import Detection
from tests.media_support import FakeDetector, loopback_settings, running_server
from tools.synthetic import SyntheticPeer

PERSON = Detection(0, "person", 0.9, (100.0, 60.0, 400.0, 420.0))


async def _offer_sdp(*kinds: str, data_channel: bool = True) -> str:
    """A real offer from an aiortc peer with the given media (its pc is closed right after)."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        for kind in kinds:
            pc.addTrack(VideoStreamTrack() if kind == "video" else AudioStreamTrack())
        if data_channel:
            pc.createDataChannel("detections")
        await pc.setLocalDescription(await pc.createOffer())
        return str(pc.localDescription.sdp)
    finally:
        await pc.close()


async def _post(http: aiohttp.ClientSession, url: str, **kwargs: Any) -> tuple[int, dict[str, Any], Any]:
    async with http.post(url + "/offer", **kwargs) as resp:
        assert resp.content_type == "application/json", await resp.text()
        return resp.status, await resp.json(), resp.headers


async def test_bad_offers_get_400_json_and_leave_nothing_behind() -> None:
    settings = loopback_settings(max_offer_bytes=16 * 1024)
    detector = FakeDetector()
    async with running_server(settings, detector) as server, aiohttp.ClientSession() as http:
        video_sdp = await _offer_sdp("video")
        cases: list[tuple[str, dict[str, Any]]] = [
            ("not json", {"data": b"{nope", "headers": {"Content-Type": "application/json"}}),
            ("not an object", {"json": ["offer"]}),
            ("no sdp", {"json": {"type": "offer"}}),
            ("empty sdp", {"json": {"sdp": "", "type": "offer"}}),
            ("an answer", {"json": {"sdp": video_sdp, "type": "answer"}}),
            ("garbage sdp", {"json": {"sdp": "v=0\r\nthis is not sdp\r\n", "type": "offer"}}),
            ("no video", {"json": {"sdp": await _offer_sdp("audio"), "type": "offer"}}),
            ("video and audio", {"json": {"sdp": await _offer_sdp("video", "audio"), "type": "offer"}}),
            ("two videos", {"json": {"sdp": await _offer_sdp("video", "video"), "type": "offer"}}),
        ]
        for name, kwargs in cases:
            status, body, _ = await _post(http, server.url, **kwargs)
            assert status == 400, (name, body)
            assert body["error"] == "invalid_offer" and body["detail"], (name, body)

        oversized = {"sdp": video_sdp + "a=x-padding:" + "x" * 20_000 + "\r\n", "type": "offer"}
        status, body, _ = await _post(http, server.url, json=oversized)
        assert (status, body["error"]) == (413, "offer_too_large")

        async def chunks() -> Any:  # no Content-Length: the limit holds while reading
            for _ in range(40):
                yield b"x" * 1024

        json_type = {"Content-Type": "application/json"}  # any other type is a 415 (media_server/auth.py)
        status, body, _ = await _post(http, server.url, data=chunks(), headers=json_type)
        assert (status, body["error"]) == (413, "offer_too_large")

        assert len(server.state.peers) == 0
        registry = server.state.registry
        assert registry.get_sample_value("rtdetect_live_offers_rejected_total", {"reason": "bad_offer"}) == 9
        assert registry.get_sample_value("rtdetect_live_offers_rejected_total", {"reason": "too_large"}) == 2
        assert registry.get_sample_value("rtdetect_live_active_peers") == 0

        # Unknown routes and methods are JSON errors too.
        async with http.get(server.url + "/nope") as resp:
            assert resp.status == 404 and (await resp.json())["error"]
        async with http.get(server.url + "/offer") as resp:
            assert resp.status == 405 and (await resp.json())["error"]


async def test_over_max_peers_gets_503_with_retry_after(
    model_dir: Path, photos: dict[str, np.ndarray]
) -> None:
    settings = loopback_settings(model_dir=model_dir, max_peers=1, retry_after_s=7)
    async with running_server(settings) as server, aiohttp.ClientSession() as http:
        first = SyntheticPeer(server.url, photos["astronaut"])
        second = SyntheticPeer(server.url, photos["astronaut"])
        third = SyntheticPeer(server.url, photos["astronaut"])
        try:
            await first.connect(http)
            await first.wait_for_frames(5, limit_s=20)

            status, body, headers = await _post(
                http, server.url, json={"sdp": await _offer_sdp("video"), "type": "offer"}
            )
            assert status == 503 and body["error"] == "too_many_peers", body
            assert headers["Retry-After"] == "7"
            with pytest.raises(ConnectionError, match="503"):
                await second.connect(http)
            assert len(server.state.peers) == 1
            assert (
                server.state.registry.get_sample_value(
                    "rtdetect_live_offers_rejected_total", {"reason": "capacity"}
                )
                == 2
            )

            # The slot frees when the first peer leaves.
            await first.close()
            await server.state.peers.wait_empty(10)
            await third.connect(http)
            await third.wait_for_frames(5, limit_s=20)
        finally:
            for peer in (first, second, third):
                await peer.close()


async def test_not_ready_is_503_and_health_routes() -> None:
    detector = FakeDetector()
    settings = loopback_settings(
        ice_servers=[{"urls": "stun:stun.example.test:3478"}],
        turn_urls=["turn:turn.example.test:3478?transport=udp"],
        turn_secret="test-secret",
    )
    async with running_server(settings, detector) as server, aiohttp.ClientSession() as http:
        await detector.close()  # loaded, then unloaded: not ready
        async with http.get(server.url + "/healthz") as resp:
            assert resp.status == 200 and (await resp.json())["status"] == "ok"
        async with http.get(server.url + "/readyz") as resp:
            assert (
                resp.status == 503
                and resp.headers["Retry-After"]
                and (await resp.json())["error"] == "not_ready"
            )
        status, body, headers = await _post(
            http, server.url, json={"sdp": await _offer_sdp("video"), "type": "offer"}
        )
        assert (status, body["error"]) == (503, "not_ready") and headers["Retry-After"]

        await detector.start()
        async with http.get(server.url + "/readyz") as resp:
            assert resp.status == 200 and (await resp.json())["model"]["name"] == "fake"
        async with http.get(server.url + "/ice-servers") as resp:
            servers = (await resp.json())["iceServers"]
        assert servers[0] == {"urls": ["stun:stun.example.test:3478"]}
        assert servers[1]["urls"] == ["turn:turn.example.test:3478?transport=udp"]
        assert servers[1]["username"].endswith(":browser") and servers[1]["credential"]
        async with http.get(server.url + "/") as resp:
            page = await resp.text()
            assert resp.status == 200 and "<video" in page and "app.js" in page
        async with http.get(server.url + "/static/app.js") as resp:
            assert resp.status == 200 and "RTCPeerConnection" in await resp.text()
        async with http.get(server.url + "/metrics") as resp:
            text = await resp.text()
        for name in (
            "rtdetect_live_active_peers",
            "rtdetect_live_frames_in_total",
            "rtdetect_live_frames_out_total",
            "rtdetect_live_frames_inferred_total",
            'rtdetect_live_frames_dropped_total{stage="inference"}',
            "rtdetect_live_frame_latency_seconds_bucket",
            "rtdetect_live_detection_age_seconds_bucket",
            "inference_latency_seconds_bucket",  # the shared inference metrics
            "process_resident_memory_bytes",
        ):
            assert name in text, name


async def test_score_threshold_and_ping_over_the_data_channel(photos: dict[str, np.ndarray]) -> None:
    detector = FakeDetector((PERSON,))
    async with running_server(loopback_settings(), detector) as server, aiohttp.ClientSession() as http:
        peer = SyntheticPeer(server.url, photos["astronaut"])
        try:
            await peer.connect(http)
            await peer.wait_until(lambda: len(peer.detections) >= 3, 20, "detections")
            assert peer.detections[-1]["detections"][0]["label"] == "person"

            peer.send({"type": "config", "score_threshold": 0.95})
            await peer.wait_until(lambda: any(m["type"] == "config" for m in peer.messages), 10, "config ack")
            assert next(m for m in peer.messages if m["type"] == "config")["score_threshold"] == 0.95
            seen = len(peer.detections)
            await peer.wait_until(lambda: len(peer.detections) >= seen + 3, 10, "more detections")
            assert all(not m["detections"] for m in peer.detections[seen + 1 :])

            peer.send({"type": "config", "score_threshold": 7})
            peer.send({"type": "ping", "t": 42})
            peer.channel.send("not json")
            await peer.wait_until(
                lambda: (
                    sum(m["type"] == "error" for m in peer.messages) >= 2
                    and any(m["type"] == "pong" for m in peer.messages)
                ),
                10,
                "errors and pong",
            )
            assert next(m for m in peer.messages if m["type"] == "pong")["t"] == 42
            assert server.state.peers.get(peer.peer_id or "") is not None
        finally:
            await peer.close()


async def test_client_close_releases_the_peer(photos: dict[str, np.ndarray]) -> None:
    async with (
        running_server(loopback_settings(), FakeDetector((PERSON,))) as server,
        aiohttp.ClientSession() as http,
    ):
        peer = SyntheticPeer(server.url, photos["astronaut"])
        await peer.connect(http)
        await peer.wait_for_frames(10, limit_s=20)
        async with http.get(server.url + "/peers") as resp:
            listed = (await resp.json())["peers"]
        assert [p["peer_id"] for p in listed] == [peer.peer_id] and listed[0]["frames_in"] >= 10

        await peer.close()
        await server.state.peers.wait_empty(10)
        await asyncio.sleep(0)  # let the closing task finish its bookkeeping
        assert (
            server.state.registry.get_sample_value("rtdetect_live_peers_closed_total", {"reason": "client"})
            == 1
        )
        assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("rtdetect-")]


async def test_silent_client_is_closed_after_the_disconnect_timeout(photos: dict[str, np.ndarray]) -> None:
    settings = loopback_settings(disconnect_timeout_s=1.0)
    async with running_server(settings, FakeDetector()) as server, aiohttp.ClientSession() as http:
        peer = SyntheticPeer(server.url, photos["astronaut"])
        try:
            await peer.connect(http)
            await peer.wait_for_frames(10, limit_s=20)
            peer.track.pause()  # the connection stays up, the frames stop
            await server.state.peers.wait_empty(10)
            await asyncio.sleep(0)
            assert (
                server.state.registry.get_sample_value(
                    "rtdetect_live_peers_closed_total", {"reason": "timeout"}
                )
                == 1
            )
        finally:
            await peer.close()


async def test_peer_that_never_connects_is_closed() -> None:
    settings = loopback_settings(disconnect_timeout_s=1.0)
    async with running_server(settings, FakeDetector()) as server, aiohttp.ClientSession() as http:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        try:
            pc.addTrack(VideoStreamTrack())
            await pc.setLocalDescription(await pc.createOffer())
            status, body, _ = await _post(
                http, server.url, json={"sdp": pc.localDescription.sdp, "type": "offer"}
            )
            assert status == 200 and body["type"] == "answer" and body["peer_id"]
            assert len(server.state.peers) == 1
            # The answer is never applied: no ICE, no DTLS.
            await server.state.peers.wait_empty(10)
        finally:
            await pc.close()


async def test_server_shutdown_closes_peers(photos: dict[str, np.ndarray]) -> None:
    async with aiohttp.ClientSession() as http:
        async with running_server(loopback_settings(), FakeDetector((PERSON,))) as server:
            peer = SyntheticPeer(server.url, photos["astronaut"])
            await peer.connect(http)
            await peer.wait_for_frames(10, limit_s=20)
            registry = server.state.registry
        # Leaving the block ran the app's shutdown and cleanup.
        try:
            assert registry.get_sample_value("rtdetect_live_peers_closed_total", {"reason": "shutdown"}) == 1
            assert registry.get_sample_value("rtdetect_live_active_peers") == 0
            # The client hears about it (DTLS close): its connection closes rather than lingering.
            await peer.wait_until(
                lambda: peer.pc.connectionState in ("closed", "failed"), 10, "the client's close"
            )
        finally:
            await peer.close()


@pytest.mark.parametrize("codec", ["VP8", "H264"])
async def test_codec_preference(codec: str, photos: dict[str, np.ndarray]) -> None:
    # The server's setting orders the codecs in its answer; the browser's own preference is honoured
    # when the setting is "auto" (see the Chromium test).
    settings = loopback_settings(codec=codec)
    async with running_server(settings, FakeDetector((PERSON,))) as server, aiohttp.ClientSession() as http:
        peer = SyntheticPeer(server.url, photos["astronaut"])
        try:
            await peer.connect(http)
            await peer.wait_for_frames(10, limit_s=20)
            sdp = peer.pc.remoteDescription.sdp
            video = sdp[sdp.index("m=video") :]
            first_payload = video.split("\r\n", 1)[0].split()[3]
            assert f"a=rtpmap:{first_payload} {codec}/90000" in video
            assert sum(e.number is not None for e in peer.echoes) >= 9
        finally:
            await peer.close()


def test_json_errors_shape() -> None:
    # The one error format, as the page and other clients parse it.
    from media_server.app import error_response

    response = error_response(503, "too_many_peers", "full", retry_after=3)
    assert response.status == 503 and response.headers["Retry-After"] == "3"
    assert response.body is not None and json.loads(bytes(response.body)) == {
        "error": "too_many_peers",
        "detail": "full",
    }  # type: ignore[arg-type]


async def test_ice_failure_closes_the_peer(photos: dict[str, np.ndarray]) -> None:
    # A real ICE failure takes aioice's consent timeout (about 30 s); the state change it ends in is
    # simulated on the server's real, connected peer connection.
    async with running_server(loopback_settings(), FakeDetector()) as server, aiohttp.ClientSession() as http:
        peer = SyntheticPeer(server.url, photos["astronaut"])
        try:
            await peer.connect(http)
            await peer.wait_for_frames(5, limit_s=20)
            session = server.state.peers.get(peer.peer_id or "")
            assert session is not None
            session.pc._RTCPeerConnection__connectionState = "failed"  # type: ignore[attr-defined]
            session.pc.emit("connectionstatechange")
            await server.state.peers.wait_empty(10)
            assert session.close_reason == "ice_failed"
            assert (
                server.state.registry.get_sample_value(
                    "rtdetect_live_peers_closed_total", {"reason": "ice_failed"}
                )
                == 1
            )
        finally:
            await peer.close()
