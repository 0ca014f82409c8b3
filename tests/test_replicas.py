"""Media-server replicas behind the front (docker/Caddyfile, Debian's caddy on loopback).

Two real media servers (one shared real model) behind the same Caddyfile compose runs: a new peer goes to a
replica with room (the front's health check on /room), every later request of that client reaches the
replica holding its peer (Caddy's cookie), and a full fleet answers 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from inference.engines import create_engine
from inference.pipeline import Detector
from inference.spec import ModelSpec
from tests.media_support import RunningServer, loopback_settings, running_server
from tests.test_front import CADDYFILE, caddy_env, require_caddy
from tools.servers import LOOPBACK, free_port, tail
from tools.synthetic import SyntheticPeer

pytestmark = pytest.mark.slow

HEALTH_INTERVAL_S = 0.2


@dataclass
class Fleet:
    front: str  # https://127.0.0.1:PORT/live
    replicas: list[RunningServer]
    ssl: ssl.SSLContext


@asynccontextmanager
async def fleet(
    model_dir: Path, logs: Path, replicas: int = 2, max_peers: int = 1, least_loaded: bool = False
) -> AsyncIterator[Fleet]:
    """`least_loaded`: the replicas know each other (RTDETECT_MEDIA_FLEET) and admit new peers only on the
    least loaded one; otherwise each admits while it has room."""
    caddy = require_caddy()
    spec = ModelSpec.load(model_dir)
    detector = Detector(create_engine("onnxruntime", model_dir, spec), spec)
    await detector.start()
    async with AsyncExitStack() as stack:
        stack.push_async_callback(detector.close)
        ports = [free_port() for _ in range(replicas)]
        known = [f"http://{LOOPBACK}:{port}" for port in ports] if least_loaded else []
        servers = [
            await stack.enter_async_context(
                running_server(
                    loopback_settings(
                        model_dir=model_dir, max_peers=max_peers, port=port, fleet=known, fleet_cache_s=0
                    ),
                    detector,
                )
            )
            for port in ports
        ]
        https_port, http_port, health_port = free_port(), free_port(), free_port()
        closed = f"{LOOPBACK}:{free_port()}"  # no detect API, UI or Grafana here
        env = caddy_env(
            logs, https_port, http_port, health_port,
            FRONT_MEDIA_UPSTREAMS=" ".join(s.url.removeprefix("http://") for s in servers),
            FRONT_MEDIA_HEALTH_INTERVAL=f"{int(HEALTH_INTERVAL_S * 1000)}ms",
            FRONT_API_UPSTREAMS=closed, FRONT_UI_UPSTREAMS=closed, FRONT_GRAFANA_UPSTREAMS=closed,
            FRONT_GRPC_UPSTREAMS=closed,
        )  # fmt: skip
        log_path = logs / "caddy.log"
        proc = _start_caddy(caddy, env, log_path)
        try:
            root = logs / "data" / "caddy" / "pki" / "authorities" / "local" / "root.crt"
            url = f"https://{LOOPBACK}:{https_port}"
            deadline = time.monotonic() + 30
            # Polled from the event loop: the replicas run on it, a blocking client would stall them.
            while not (root.exists() and await _answers_async(f"{url}/live/healthz", root)):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"caddy did not serve {url}:\n{tail(log_path)}")
                await asyncio.sleep(0.2)  # polling a health URL until a deadline
            yield Fleet(f"{url}/live", servers, ssl.create_default_context(cafile=str(root)))
        finally:
            proc.terminate()
            proc.wait(timeout=10)


async def _answers_async(url: str, root: Path) -> bool:
    context = ssl.create_default_context(cafile=str(root))
    try:
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as http,
            http.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp,
        ):
            return resp.status == 200
    except (aiohttp.ClientError, OSError, TimeoutError):
        return False


def _start_caddy(caddy: str, env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [caddy, "run", "--config", str(CADDYFILE), "--adapter", "caddyfile"],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip


def client(f: Fleet) -> aiohttp.ClientSession:
    """One browser-like client: keeps the front's cookies (the jar must accept them for an IP address)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=f.ssl), cookie_jar=aiohttp.CookieJar(unsafe=True)
    )


def holder(f: Fleet, peer: SyntheticPeer) -> int:
    """Which replica holds `peer`."""
    found = [i for i, s in enumerate(f.replicas) if any(p.id == peer.peer_id for p in s.state.peers)]
    assert len(found) == 1, found
    return found[0]


async def test_peers_spread_stick_to_their_replica_and_a_full_fleet_answers_503(
    model_dir: Path, photos: dict[str, np.ndarray], tmp_path: Path
) -> None:
    async with fleet(model_dir, tmp_path) as f:
        sessions = [client(f), client(f)]
        peers = [SyntheticPeer(f.front, photos["astronaut"]) for _ in sessions]
        try:
            await peers[0].connect(sessions[0])
            await peers[0].wait_for_frames(10, limit_s=20)
            first = holder(f, peers[0])
            # The replica is now full: its /room answers 503 and the front's next health check sees it.
            async with aiohttp.ClientSession() as direct, direct.get(f"{f.replicas[first].url}/room") as resp:
                assert resp.status == 503 and resp.headers.get("Retry-After")
            await asyncio.sleep(3 * HEALTH_INTERVAL_S)  # the front's health-check period, not a guess at work

            await peers[1].connect(sessions[1])
            await peers[1].wait_for_frames(10, limit_s=20)
            assert {holder(f, peers[0]), holder(f, peers[1])} == {0, 1}  # one on each replica

            # Every later request of a client reaches the replica holding its peer.
            for session, peer in zip(sessions, peers, strict=True):
                for _ in range(6):
                    async with session.get(f"{f.front}/peers") as resp:
                        assert resp.status == 200
                        listed = {p["peer_id"] for p in (await resp.json())["peers"]}
                    assert listed == {peer.peer_id}, (listed, peer.peer_id)

            # Both full: a new client is refused by the front with the services' JSON shape and Retry-After.
            await asyncio.sleep(3 * HEALTH_INTERVAL_S)
            async with (
                client(f) as third,
                third.post(f"{f.front}/offer", json={"sdp": "v=0", "type": "offer"}) as resp,
            ):
                assert resp.status == 503, await resp.text()
                assert resp.headers.get("Retry-After") == "5"
                assert (await resp.json())["error"]
            # The video keeps flowing for the peers already placed.
            for peer in peers:
                await peer.wait_for_frames(len(peer.echoes) + 10, limit_s=20)
        finally:
            for peer in peers:
                await peer.close()
            for session in sessions:
                await session.close()


async def test_new_peers_go_to_the_least_loaded_replica(
    model_dir: Path, photos: dict[str, np.ndarray], tmp_path: Path
) -> None:
    async with fleet(model_dir, tmp_path, max_peers=4, least_loaded=True) as f:
        peers: list[SyntheticPeer] = []
        sessions: list[aiohttp.ClientSession] = []
        try:
            # Replica 0 holds three peers that reached it without the front (another front, say).
            direct = aiohttp.ClientSession()
            sessions.append(direct)
            for _ in range(3):  # one at a time: a client may have only two offers pending
                peers.append(SyntheticPeer(f.replicas[0].url, photos["astronaut"], fps=10))
                await peers[-1].connect(direct)
                await peers[-1].wait_for_frames(3, limit_s=20)
            # Three new peers through the front all go to replica 1, the less loaded (random placement among
            # replicas with room would put each there with probability 1/2).
            for n in range(3):
                await asyncio.sleep(3 * HEALTH_INTERVAL_S)  # the front's health-check period
                sessions.append(client(f))
                peers.append(SyntheticPeer(f.front, photos["astronaut"], fps=10))
                await peers[-1].connect(sessions[-1])
                await peers[-1].wait_for_frames(3, limit_s=20)
                assert holder(f, peers[-1]) == 1, f"peer {n + 1} through the front went to the busier replica"
            assert [len(s.state.peers) for s in f.replicas] == [3, 3]
        finally:
            for peer in peers:
                await peer.close()
            for session in sessions:
                await session.close()
