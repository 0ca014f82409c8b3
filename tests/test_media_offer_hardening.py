"""/offer against a hostile or unlucky client: split bodies, slow bodies, odd and fuzzed SDP, half-made peers
whose close fails, and offers naming hundreds of ICE candidates. Real aiortc offers, a real server on loopback."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import random
import socket
import time
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.mediastreams import VideoStreamTrack

from media_server.peers import cap_remote_candidates
from tests.media_support import LOOPBACK, FakeDetector, RunningServer, loopback_settings, running_server
from tools.synthetic import SyntheticPeer

# Linux's value; Python's socket module does not export it everywhere.
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
# Many offers from one test client: lift the per-client pending-offer limit of the auth layer.
MANY_OFFERS = {"max_pending_offers_per_client": 1000}


async def _offer_sdp(*, data_channel: bool = True) -> str:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        pc.addTrack(VideoStreamTrack())
        if data_channel:
            pc.createDataChannel("detections")
        await pc.setLocalDescription(await pc.createOffer())
        return str(pc.localDescription.sdp)
    finally:
        await pc.close()


async def _raw_request(
    port: int, head: bytes, parts: list[bytes], gap_s: float, read_limit_s: float = 10.0
) -> tuple[int, dict[str, Any]]:
    """Send `head` then each of `parts` `gap_s` apart on one TCP connection; the status and JSON body."""
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    try:
        writer.write(head)
        await writer.drain()
        for part in parts:
            await asyncio.sleep(gap_s)
            writer.write(part)
            await writer.drain()
        raw = await asyncio.wait_for(reader.read(), read_limit_s)  # the server closes (Connection: close)
    finally:
        writer.close()
    header, _, body = raw.partition(b"\r\n\r\n")
    status = int(header.split(b" ", 2)[1])
    return status, json.loads(body)


def _post_head(length: int | None, *, chunked: bool = False) -> bytes:
    lines = [
        "POST /offer HTTP/1.1",
        f"Host: {LOOPBACK}",
        "Content-Type: application/json",
        "Connection: close",
    ]
    lines.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def test_offer_split_over_two_writes_is_read_whole() -> None:
    async with running_server(loopback_settings(), FakeDetector()) as server:
        body = json.dumps({"sdp": await _offer_sdp(), "type": "offer"}).encode()
        half = len(body) // 2
        # Before the fix: 400 "Invalid JSON: EOF while parsing" (content.read(n) returned the first half).
        status, answer = await _raw_request(
            server.http.port, _post_head(len(body)), [body[:half], body[half:]], gap_s=0.05
        )
        assert status == 200, answer
        assert answer["type"] == "answer" and "m=video" in answer["sdp"]
        # Chunked, in three pieces.
        pieces = [body[:700], body[700:1400], body[1400:]]
        chunks = [f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in pieces] + [b"0\r\n\r\n"]
        status, answer = await _raw_request(server.http.port, _post_head(None, chunked=True), chunks, 0.02)
        assert status == 200, answer
        await server.state.peers.close_all("shutdown")


async def test_over_limit_and_slow_bodies() -> None:
    settings = loopback_settings(max_offer_bytes=4096, body_timeout_s=0.5)
    async with running_server(settings, FakeDetector()) as server:
        port = server.http.port
        # Content-Length over the limit: refused before reading.
        status, body = await _raw_request(port, _post_head(10_000), [], 0)
        assert (status, body["error"]) == (413, "offer_too_large")
        # Chunked, over the limit only once read: refused as soon as it is.
        chunk = b"1000\r\n" + b"x" * 4096 + b"\r\n"
        status, body = await _raw_request(port, _post_head(None, chunked=True), [chunk, chunk], 0.01)
        assert (status, body["error"]) == (413, "offer_too_large")
        # A body that stops arriving: 408 at the deadline, not a connection held forever.
        started = time.monotonic()
        status, body = await _raw_request(port, _post_head(2000), [b'{"sdp": "v=0'], 0.01)
        assert (status, body["error"]) == (408, "body_timeout")
        assert time.monotonic() - started < 3.0
        registry = server.state.registry
        assert registry.get_sample_value("rtdetect_live_offers_rejected_total", {"reason": "too_large"}) == 2
        assert len(server.state.peers) == 0


def _mutate(rng: random.Random, lines: list[str]) -> list[str]:
    lines = list(lines)
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(len(lines))
        op = rng.choice(["drop", "duplicate", "char", "truncate", "value"])
        if op == "drop":
            del lines[i]
        elif op == "duplicate":
            lines.insert(i, lines[i])
        elif op == "char" and lines[i]:
            j = rng.randrange(len(lines[i]))
            lines[i] = lines[i][:j] + rng.choice("0:= -/x\x00é9") + lines[i][j + 1 :]
        elif op == "truncate":
            lines[i] = lines[i][: rng.randrange(len(lines[i]) + 1)]
        else:
            cut = lines[i].find(":") if ":" in lines[i] else lines[i].find("=")
            value = rng.choice(["", "-1", "99999999999999999999", "abc", " ", "0 0 0"])
            lines[i] = lines[i][: cut + 1] + value
    return lines


def _named_cases(sdp: str) -> dict[str, str]:
    """The shapes the fault probe found giving 500."""
    lines = sdp.split("\r\n")
    video = lines.index(next(line for line in lines if line.startswith("m=video")))
    app = lines.index(next(line for line in lines if line.startswith("m=application")))
    video_part = lines[video:app]
    return {
        "video without a=setup": "\r\n".join(
            lines[:video] + [x for x in video_part if not x.startswith("a=setup")]
        ),
        "video without a=mid": "\r\n".join(
            lines[:video] + [x for x in video_part if not x.startswith("a=mid")]
        ),
        "500 m=application": "\r\n".join(
            lines[:-1] + ["m=application 9 UDP/DTLS/SCTP webrtc-datachannel", "c=IN IP4 0.0.0.0"] * 500 + [""]
        ),
    }


async def _good_peer_works(server: RunningServer, http: aiohttp.ClientSession, photo: np.ndarray) -> None:
    peer = SyntheticPeer(server.url, photo)
    try:
        await peer.connect(http)
        await peer.wait_for_frames(5, limit_s=20)
    finally:
        await peer.close()


async def test_sdp_fuzz_gives_no_5xx_and_leaks_no_peer(photos: dict[str, np.ndarray]) -> None:
    settings = loopback_settings(max_peers=250, disconnect_timeout_s=2.0, **MANY_OFFERS)
    async with running_server(settings, FakeDetector()) as server, aiohttp.ClientSession() as http:
        sdp = await _offer_sdp()
        answered = 0
        for name, bad in _named_cases(sdp).items():
            async with http.post(server.url + "/offer", json={"sdp": bad, "type": "offer"}) as resp:
                body = await resp.json()
                # Before: 500. Now a 400 with a reason, or (aiortc copes without a=mid) an answer.
                assert resp.status in (200, 400), (name, body)
                if resp.status == 200:
                    answered += 1
                else:
                    assert body["error"] == "invalid_offer" and body["detail"], (name, body)

        await server.state.peers.wait_empty(30)
        fds_before = len(os.listdir("/proc/self/fd"))
        rng = random.Random(20261204)
        lines = sdp.split("\r\n")
        statuses: dict[int, int] = {}
        for _ in range(200):
            mutated = "\r\n".join(_mutate(rng, lines))
            async with http.post(server.url + "/offer", json={"sdp": mutated, "type": "offer"}) as resp:
                body = await resp.json()  # JSON, whatever the status
                statuses[resp.status] = statuses.get(resp.status, 0) + 1
                assert resp.status < 500, (resp.status, body, mutated)
                if resp.status == 400:
                    assert body["error"] and body["detail"]
        assert set(statuses) <= {200, 400} and statuses.get(400, 0) > 20, statuses

        # Every answered peer never connects and is closed by its watchdog; every peer is counted closed.
        await server.state.peers.wait_empty(30)
        registry = server.state.registry
        assert registry.get_sample_value("rtdetect_live_active_peers") == 0
        closed = sum(
            registry.get_sample_value("rtdetect_live_peers_closed_total", {"reason": r}) or 0
            for r in ("timeout", "rejected", "error", "ice_failed", "client")
        )
        rejected_after_creation = (
            registry.get_sample_value("rtdetect_live_peers_closed_total", {"reason": "rejected"}) or 0
        )
        assert closed == answered + statuses.get(200, 0) + rejected_after_creation
        # Their sockets went with them (aiortc's close raised for some of them).
        await asyncio.sleep(0.5)
        gc.collect()
        assert len(os.listdir("/proc/self/fd")) <= fds_before + 2

        # The server still serves a good offer.
        await _good_peer_works(server, http, photos["astronaut"])


async def test_a_close_that_raises_is_counted_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    settings = loopback_settings(max_peers=4, **MANY_OFFERS)
    async with running_server(settings, FakeDetector()) as server, aiohttp.ClientSession() as http:
        for _ in range(3):
            async with http.post(
                server.url + "/offer", json={"sdp": await _offer_sdp(), "type": "offer"}
            ) as r:
                assert r.status == 200
        sessions = list(server.state.peers)
        for session in sessions:
            real_close = session.pc.close

            async def failing_close(real_close: Any = real_close) -> None:
                await real_close()  # release the sockets, then fail as aiortc did on half-made peers
                raise AttributeError("'NoneType' object has no attribute 'stop'")

            session.pc.close = failing_close  # type: ignore[method-assign]
        with caplog.at_level(logging.ERROR, logger="media_server.peers"):
            for session in sessions:
                await session.close("error")
        assert len(server.state.peers) == 0
        registry = server.state.registry
        assert registry.get_sample_value("rtdetect_live_peers_closed_total", {"reason": "error"}) == 3
        assert registry.get_sample_value("rtdetect_live_active_peers") == 0
        lines = [r for r in caplog.records if "closing the connection failed" in r.getMessage()]
        assert len(lines) == 1, [r.getMessage() for r in lines]


def test_cap_remote_candidates_per_media_section() -> None:
    lines = ["v=0", "m=video 9 UDP/TLS/RTP/SAVPF 96"]
    lines += [f"a=candidate:{i} 1 udp 1 10.0.0.{i} 9 typ host" for i in range(5)]
    lines += ["m=application 9 UDP/DTLS/SCTP webrtc-datachannel"]
    lines += [f"a=candidate:{i} 1 udp 1 10.0.1.{i} 9 typ host" for i in range(5)]
    capped, dropped = cap_remote_candidates("\r\n".join(lines) + "\r\n", 3)
    assert dropped == 4
    kept = [x for x in capped.split("\r\n") if x.startswith("a=candidate")]
    assert [x.split()[4] for x in kept] == [
        "10.0.0.0",
        "10.0.0.1",
        "10.0.0.2",
        "10.0.1.0",
        "10.0.1.1",
        "10.0.1.2",
    ]


class _StunSink:
    """One UDP socket on 0.0.0.0:port that receives what is sent to any 127.x.y.z:port and records the
    destination address of each datagram (IP_PKTINFO)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        self.sock.bind(("0.0.0.0", 0))
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.destinations: set[str] = set()
        self.packets = 0

    def drain(self) -> None:
        while True:
            try:
                _, ancillary, _, _ = self.sock.recvmsg(2048, socket.CMSG_SPACE(12))
            except BlockingIOError:
                return
            self.packets += 1
            for level, kind, data in ancillary:
                if level == socket.IPPROTO_IP and kind == IP_PKTINFO:
                    # struct in_pktinfo: int ifindex; in_addr spec_dst; in_addr addr (the header's destination)
                    self.destinations.add(socket.inet_ntoa(data[8:12]))


async def test_remote_candidates_are_capped_before_ice_checks_them() -> None:
    sink = _StunSink()
    cap = 8
    try:
        settings = loopback_settings(max_remote_candidates=cap, disconnect_timeout_s=5.0)
        async with running_server(settings, FakeDetector()) as server, aiohttp.ClientSession() as http:
            sdp = await _offer_sdp(data_channel=False)
            candidates = [
                f"a=candidate:{i} 1 udp {2130706431 - i} 127.0.{1 + i // 250}.{1 + i % 250} {sink.port} typ host"
                for i in range(500)
            ]
            head, _, tail = sdp.partition("a=mid:")
            offer = head + "\r\n".join(candidates) + "\r\na=mid:" + tail
            async with http.post(server.url + "/offer", json={"sdp": offer, "type": "offer"}) as resp:
                assert resp.status == 200, await resp.text()
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline:
                sink.drain()
                await asyncio.sleep(0.05)
            await server.state.peers.close_all("shutdown")
    finally:
        sink.sock.close()
    # The server did check candidates (so the test sees its STUN), and only the first `cap` of them.
    assert sink.packets > 0
    assert 0 < len(sink.destinations) <= cap, sorted(sink.destinations)
