"""TURN with short-lived credentials: the credential scheme, and Debian's coturn running the project's
turn/turnserver.conf on loopback, with a relay-only aiortc client completing a live session with the media
server through it.

Loopback relays are allowed only here, on coturn's command line (--allow-loopback-peers); the production
configuration refuses them. `make test` runs pytest in a loopback-only network namespace.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import ipaddress
import random
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import aiohttp
import aioice.ice
import numpy as np
import pytest
from aiohttp import web
from aioice import stun
from aioice.turn import TurnClientUdpProtocol
from aiortc import RTCConfiguration, RTCIceTransportPolicy, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack, VideoStreamTrack
from av import VideoFrame

from media_server.turn import ice_servers_for_client, to_rtc_ice_servers, turn_credentials, validate_ice_url

REPO = Path(__file__).resolve().parents[1]
TURN_CONF = REPO / "turn" / "turnserver.conf"
LOOPBACK = "127.0.0.1"
SECRET = "rtdetect-test-secret-not-for-production"
RELAY_PORTS = 24  # allocations: one per test client, one per server peer, with room to spare


def _env_example(key: str) -> str:
    for line in (REPO / ".env.example").read_text().splitlines():
        if line.startswith(f"{key}="):
            return line.split("=", 1)[1]
    raise KeyError(key)


# The private range docker-compose.yml lets coturn relay to (its own network), passed the same way here.
COMPOSE_PEERS = _env_example("TURN_ALLOWED_PEER_IPS")


# --- the credential scheme (no coturn needed) ------------------------------------------------------------


def test_credentials_match_the_documented_example() -> None:
    # Computed outside Python: echo -n "1700003600:alice" | openssl dgst -sha1 -hmac north -binary | base64
    assert turn_credentials("north", "alice", 3600, now=1_700_000_000.9) == (
        "1700003600:alice",
        "wjwSXO2ch1B6VaLTLMy2Avn5O9o=",
    )


def test_credentials_match_an_independent_hmac() -> None:
    now = 1_760_000_123.5
    username, password = turn_credentials(SECRET, "cam-7", 600, now)
    assert username == f"{1_760_000_123 + 600}:cam-7"
    expected = base64.b64encode(hmac.digest(SECRET.encode(), username.encode(), "sha1")).decode()
    assert password == expected
    # A different secret, user or time gives a different password.
    assert turn_credentials("other", "cam-7", 600, now)[1] != password
    assert turn_credentials(SECRET, "cam-8", 600, now)[1] != password
    assert turn_credentials(SECRET, "cam-7", 601, now)[1] != password


@pytest.mark.parametrize(
    ("secret", "user", "ttl"),
    [("", "u", 60), ("s", "u", 0), ("s", "u", -5), ("s", "a:b", 60), ("s", "", 60), ("s", "x" * 65, 60)],
)
def test_credentials_reject_bad_input(secret: str, user: str, ttl: int) -> None:
    with pytest.raises(ValueError):
        turn_credentials(secret, user, ttl, now=1_700_000_000)


def test_ice_servers_for_client_appends_turn_after_static_servers() -> None:
    static = [{"urls": ["stun:stun.example.org:3478"]}]
    urls = ["turn:turn.example.org:3478?transport=udp", "turns:turn.example.org:5349?transport=tcp"]
    servers = ice_servers_for_client(urls, "north", 3600, "alice", static, now=1_700_000_000)
    assert servers == [
        {"urls": ["stun:stun.example.org:3478"]},
        {"urls": urls, "username": "1700003600:alice", "credential": "wjwSXO2ch1B6VaLTLMy2Avn5O9o="},
    ]
    servers[0]["urls"].append("stun:mutated")
    assert static == [{"urls": ["stun:stun.example.org:3478"]}], "the caller's list must not be shared"
    rtc = to_rtc_ice_servers(servers)
    assert rtc[1].urls == urls and rtc[1].username == "1700003600:alice"


def test_ice_servers_for_client_without_turn_and_misconfigured_turn() -> None:
    assert ice_servers_for_client([], None, 3600, "alice", [{"urls": "stun:h"}]) == [{"urls": "stun:h"}]
    with pytest.raises(ValueError, match="no TURN secret"):
        ice_servers_for_client(["turn:h:3478"], None, 3600, "alice")
    with pytest.raises(ValueError, match="turn: or turns:"):
        ice_servers_for_client(["stun:h:3478"], "s", 3600, "alice")
    with pytest.raises(ValueError):
        ice_servers_for_client(["http://h:3478"], "s", 3600, "alice")


@pytest.mark.parametrize(
    "url",
    ["turn:h", "turn:h:3478", "turn:h:3478?transport=tcp", "turns:h:5349?transport=tcp", "stun:h:19302"],
)
def test_validate_ice_url_accepts(url: str) -> None:
    assert validate_ice_url(url) == url


@pytest.mark.parametrize(
    "url", ["turn://h", "turn:h:3478?transport=sctp", "stun:h?transport=udp", "turn: h", "h:3478", "turn:"]
)
def test_validate_ice_url_refuses(url: str) -> None:
    with pytest.raises(ValueError):
        validate_ice_url(url)


# --- coturn on loopback --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Coturn:
    port: int
    relay_ports: range
    log: Path

    @property
    def url(self) -> str:
        return f"turn:{LOOPBACK}:{self.port}?transport=udp"

    def log_tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-40:])


def _udp_and_tcp_free(port: int) -> bool:
    with contextlib.ExitStack() as stack:
        for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
            sock = stack.enter_context(socket.socket(socket.AF_INET, kind))
            try:
                sock.bind((LOOPBACK, port))
            except OSError:
                return False
    return True


def _free_port_range(count: int) -> range:
    for _ in range(200):
        start = random.randrange(40000, 60000 - count)
        ports = range(start, start + count)
        if all(_udp_and_tcp_free(p) for p in ports):
            return ports
    raise RuntimeError(f"no {count} consecutive free ports on {LOOPBACK}")


def _stun_binding_ok(port: int, timeout_s: float) -> bool:
    request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout_s)
        try:
            sock.sendto(bytes(request), (LOOPBACK, port))
            data, _ = sock.recvfrom(2048)
        except OSError:  # timeout, or ICMP port unreachable while coturn is still starting
            return False
    response = stun.parse_message(data)
    return response.transaction_id == request.transaction_id and response.message_class == stun.Class.RESPONSE


@pytest.fixture(scope="module")
def coturn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coturn]:
    """Debian's coturn with the project's configuration, on loopback, a test secret and free ports."""
    binary = shutil.which("turnserver")
    if binary is None:
        pytest.fail("turnserver is not installed: `make apt` installs Debian's coturn")
    work = tmp_path_factory.mktemp("coturn")
    ports = _free_port_range(1 + RELAY_PORTS)
    port, relay = ports[0], range(ports[1], ports.stop)
    log = work / "turnserver.log"
    cmd = [
        binary,
        "-c", str(TURN_CONF),
        f"--static-auth-secret={SECRET}",
        f"--listening-ip={LOOPBACK}",
        f"--relay-ip={LOOPBACK}",
        f"--listening-port={port}",
        "--tls-listening-port=0",
        f"--min-port={relay.start}",
        f"--max-port={relay.stop - 1}",
        f"--allowed-peer-ip={COMPOSE_PEERS}",  # as docker-compose.yml passes it
        "--allow-loopback-peers",  # tests only: the relay's peers are on loopback here
        f"--pidfile={work / 'turnserver.pid'}",
        f"--userdb={work / 'turndb'}",
    ]  # fmt: skip
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    server = Coturn(port=port, relay_ports=relay, log=log)
    try:
        deadline = time.monotonic() + 15
        while not _stun_binding_ok(port, 0.2):
            if proc.poll() is not None:
                pytest.fail(f"turnserver exited with {proc.returncode}:\n{server.log_tail()}")
            if time.monotonic() > deadline:
                pytest.fail(
                    f"turnserver did not answer STUN on {LOOPBACK}:{port} in 15 s:\n{server.log_tail()}"
                )
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextlib.asynccontextmanager
async def _allocation(server: Coturn, username: str, password: str) -> AsyncIterator[TurnClientUdpProtocol]:
    """A TURN allocation over UDP (aioice's client); raises stun.TransactionFailed when refused."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: TurnClientUdpProtocol(
            (LOOPBACK, server.port),
            username=username,
            password=password,
            lifetime=600,
            channel_refresh_time=500,
        ),
        remote_addr=(LOOPBACK, server.port),
    )
    try:
        await asyncio.wait_for(protocol.connect(), timeout=10)
        yield protocol
        await protocol.delete()
    finally:
        transport.close()


async def _allocate(server: Coturn, username: str, password: str) -> tuple[str, int]:
    async with _allocation(server, username, password) as protocol:
        assert protocol.relayed_address is not None
        return protocol.relayed_address


async def _create_permission(protocol: TurnClientUdpProtocol, peer: str) -> int:
    """CreatePermission for `peer`: 200, or coturn's error code. No packet goes to the peer."""
    request = stun.Message(message_method=stun.Method.CREATE_PERMISSION, message_class=stun.Class.REQUEST)
    request.attributes["XOR-PEER-ADDRESS"] = (peer, 9)
    try:
        await asyncio.wait_for(protocol.request_with_retry(request), timeout=10)
    except stun.TransactionFailed as e:
        code: int = e.response.attributes["ERROR-CODE"][0]
        return code
    return 200


async def test_coturn_grants_an_allocation_to_a_fresh_credential(coturn: Coturn) -> None:
    username, password = turn_credentials(SECRET, "camera-1", 600, time.time())
    host, port = await _allocate(coturn, username, password)
    assert host == LOOPBACK
    assert port in coturn.relay_ports, "the relay port lies outside the configured min-port..max-port"


async def test_coturn_relays_to_the_compose_network_and_to_no_other_private_range(coturn: Coturn) -> None:
    """turnserver.conf denies private ranges; compose allows back its own network (TURN_ALLOWED_PEER_IPS)."""
    first, last = (ipaddress.ip_address(a) for a in COMPOSE_PEERS.split("-"))
    username, password = turn_credentials(SECRET, "camera-1", 600, time.time())
    async with _allocation(coturn, username, password) as protocol:
        for allowed in (first, first + 10, last):
            assert await _create_permission(protocol, str(allowed)) == 200, allowed
        denied = ["10.0.0.5", "172.16.0.1", str(last + 1), "192.168.1.20", "169.254.169.254", "100.64.0.1"]
        for peer in denied:
            assert await _create_permission(protocol, peer) == 403, peer


@pytest.mark.parametrize(
    "credential",
    [
        pytest.param(lambda now: turn_credentials(SECRET, "camera-1", 60, now - 3600), id="expired"),
        pytest.param(lambda now: turn_credentials("not-the-secret", "camera-1", 600, now), id="forged"),
        pytest.param(
            lambda now: ("99999999999:camera-1", turn_credentials(SECRET, "camera-1", 600, now)[1]),
            id="username-tampered",
        ),
    ],
)
async def test_coturn_refuses_expired_and_forged_credentials(coturn: Coturn, credential: Any) -> None:
    username, password = credential(time.time())
    with pytest.raises(stun.TransactionFailed) as failure:
        await _allocate(coturn, username, password)
    assert failure.value.response.attributes["ERROR-CODE"][0] == 401


# --- a live session through the relay ------------------------------------------------------------------


class PatternTrack(VideoStreamTrack):
    """A camera stand-in: 320x240 frames at 30 fps whose content changes every frame."""

    def __init__(self) -> None:
        super().__init__()
        self._n = 0

    async def recv(self) -> VideoFrame:
        pts, time_base = await self.next_timestamp()
        image = np.full((240, 320, 3), (self._n * 7) % 255, dtype=np.uint8)
        image[:, : (self._n * 5) % 320] = 255
        self._n += 1
        frame = VideoFrame.from_ndarray(image, format="bgr24")
        frame.pts, frame.time_base = pts, Fraction(time_base)
        return frame


@contextlib.asynccontextmanager
async def _media_server(model_dir: Path, coturn: Coturn, host_addresses: list[str]) -> AsyncIterator[str]:
    """The real media server on loopback, its TURN settings pointing at the test coturn."""
    from media_server.app import create_app
    from media_server.settings import Settings

    values: dict[str, Any] = {
        "host": LOOPBACK,
        "port": 0,
        "model_dir": model_dir,
        "backend": "onnxruntime",
        "ice_host_addresses": host_addresses,
    }
    if "turn_secret" in Settings.model_fields:  # short-lived credentials issued by the server itself
        values.update(
            turn_urls=[coturn.url], turn_server_urls=[coturn.url], turn_secret=SECRET, turn_ttl_s=600
        )
    else:  # until the media server issues them: the same credentials, handed to it as a static server
        username, password = turn_credentials(SECRET, "rtdetect", 600, time.time())
        values["ice_servers"] = [{"urls": [coturn.url], "username": username, "credential": password}]
    app = create_app(Settings(**values))
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, LOOPBACK, 0).start()
    port = runner.addresses[0][1]
    try:
        yield f"http://{LOOPBACK}:{port}"
    finally:
        await runner.cleanup()


async def _read_frames(
    track: MediaStreamTrack, count: int, got: list[VideoFrame], done: asyncio.Event
) -> None:
    try:
        while len(got) < count:
            frame = await track.recv()
            assert isinstance(frame, VideoFrame)
            got.append(frame)
    except MediaStreamError:
        pass
    finally:
        done.set()


@pytest.mark.parametrize(
    "server_host_candidate",
    [
        pytest.param(True, id="client-relay-to-server-host"),
        # As in docker-compose.yml: the server reaches coturn on the compose network and offers a relay
        # candidate of its own, so a relayed browser needs no path to the server's announced address.
        pytest.param(False, id="client-relay-to-server-relay"),
    ],
)
async def test_relay_only_client_gets_frames_back_through_coturn(
    coturn: Coturn, model_dir: Path, server_host_candidate: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if server_host_candidate:
        host_addresses = [LOOPBACK]
    else:
        # No host address at all (as in a loopback-only namespace, whatever another test patched into aioice,
        # and never a LAN address): the server's only candidate is its own relay.
        monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: [])
        host_addresses = []
    async with _media_server(model_dir, coturn, host_addresses) as url, aiohttp.ClientSession() as http:
        async with http.get(f"{url}/readyz") as response:  # the model loads before the server listens
            assert response.status == 200, await response.text()
        async with http.get(f"{url}/ice-servers") as response:
            assert response.status == 200
            ice_servers = (await response.json())["iceServers"]
        turn = [s for s in ice_servers if any(u.startswith("turn") for u in s["urls"])]
        assert turn, f"GET /ice-servers offered no TURN server: {ice_servers}"
        expiry = int(turn[0]["username"].split(":", 1)[0])
        assert time.time() < expiry <= time.time() + 24 * 3600, "credential expiry not in the near future"

        pc = RTCPeerConnection(
            RTCConfiguration(
                iceServers=to_rtc_ice_servers(ice_servers), iceTransportPolicy=RTCIceTransportPolicy.RELAY
            )
        )
        frames: list[VideoFrame] = []
        readers: list[asyncio.Task[None]] = []
        ended = asyncio.Event()  # 10 frames back, or the track ended, or the connection failed
        pc.on("track", lambda t: readers.append(asyncio.create_task(_read_frames(t, 10, frames, ended))))

        @pc.on("connectionstatechange")
        def _on_state() -> None:
            if pc.connectionState == "failed":
                ended.set()

        try:
            pc.addTrack(PatternTrack())
            await pc.setLocalDescription(await pc.createOffer())
            candidates = [
                line for line in pc.localDescription.sdp.splitlines() if line.startswith("a=candidate:")
            ]
            assert candidates, "the relay-only client gathered no candidate: TURN allocation failed"
            assert all(" typ relay" in c for c in candidates), candidates
            assert all(f" {LOOPBACK} " in c for c in candidates)

            offer = {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type}
            async with http.post(f"{url}/offer", json=offer) as response:
                assert response.status == 200, await response.text()
                answer = await response.json()
            server_candidates = [ln for ln in answer["sdp"].splitlines() if ln.startswith("a=candidate:")]
            assert any(" typ relay" in c for c in server_candidates), "the server has no relay candidate"
            assert any(" typ host" in c for c in server_candidates) == server_host_candidate
            await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))

            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ended.wait(), timeout=45)
            assert len(frames) == 10, (
                f"{len(frames)} frames back, connection {pc.connectionState}; coturn log:\n{coturn.log_tail()}"
            )
            assert pc.connectionState == "connected"
        finally:
            for task in readers:
                task.cancel()
            await pc.close()
