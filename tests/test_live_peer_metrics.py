"""Per-peer live frame series: present while a real peer streams, gone once it closes."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import numpy as np
from prometheus_client import CollectorRegistry

from observability.live import PeerFramesCollector
from tests.media_support import loopback_settings, running_server
from tools.synthetic import SyntheticPeer


def test_collector_reports_each_live_peer_by_direction() -> None:
    peers = {"a": {"frames_in": 5, "frames_out": 4, "frames_inferred": 2}}
    registry = CollectorRegistry()
    registry.register(PeerFramesCollector(lambda: list(peers.items())))
    value = registry.get_sample_value
    assert value("rtdetect_live_peer_frames_total", {"peer": "a", "direction": "in"}) == 5
    assert value("rtdetect_live_peer_frames_total", {"peer": "a", "direction": "out"}) == 4
    assert value("rtdetect_live_peer_frames_total", {"peer": "a", "direction": "inferred"}) == 2
    del peers["a"]
    assert value("rtdetect_live_peer_frames_total", {"peer": "a", "direction": "in"}) is None


async def test_real_peer_has_its_own_series_until_it_closes(model_dir: Path, photos: dict[str, np.ndarray]) -> None:  # fmt: skip
    async with (
        running_server(loopback_settings(model_dir=model_dir)) as server,
        aiohttp.ClientSession() as http,
    ):
        peer = SyntheticPeer(server.url, photos["astronaut"])
        try:
            peer_id = await peer.connect(http)
            await peer.wait_until(lambda: len(peer.echoes) >= 10 and bool(peer.detections), 20, "frames")
            async with http.get(f"{server.url}/metrics") as r:
                text = await r.text()
            line = next(
                (ln for ln in text.splitlines()
                 if ln.startswith("rtdetect_live_peer_frames_total") and f'peer="{peer_id}"' in ln
                 and 'direction="out"' in ln),
                None,
            )  # fmt: skip
            assert line is not None, "no per-peer series on /metrics"
            assert float(line.rsplit(" ", 1)[1]) >= 10
        finally:
            await peer.close()
        await server.state.peers.wait_empty(10)
        async with http.get(f"{server.url}/metrics") as r:
            assert peer_id not in await r.text()
