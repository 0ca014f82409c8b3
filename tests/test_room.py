"""GET /room: the front's health check for new offers (docs/scale.md). A replica with room answers 200 with its
live peer count; a full one, or one whose model is not loaded, 503 with Retry-After; no API key needed."""

from __future__ import annotations

import aiohttp
import numpy as np

from inference.apikeys import hash_key, new_key
from tests.media_support import FakeDetector, loopback_settings, running_server
from tools.synthetic import SyntheticPeer


async def test_room_counts_peers_and_answers_503_when_full(photos: dict[str, np.ndarray]) -> None:
    key = new_key()
    settings = loopback_settings(max_peers=1, auth=True, api_key_hashes=[hash_key(key)])
    async with running_server(settings, FakeDetector()) as server, aiohttp.ClientSession() as http:
        async with http.get(f"{server.url}/room") as resp:  # open: the front's checks carry no key
            assert resp.status == 200
            assert await resp.json() == {"peers": 0, "max_peers": 1, "room": 1}
        peer = SyntheticPeer(server.url, photos["astronaut"])
        try:
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as authed:
                await peer.connect(authed)
            await peer.wait_for_frames(1, limit_s=20)
            async with http.get(f"{server.url}/room") as resp:
                assert resp.status == 503 and resp.headers["Retry-After"] == str(settings.retry_after_s)
                assert (await resp.json())["error"] == "too_many_peers"
        finally:
            await peer.close()


async def test_room_is_503_until_the_model_is_loaded() -> None:
    detector = FakeDetector()
    settings = loopback_settings()
    async with running_server(settings, detector) as server, aiohttp.ClientSession() as http:
        await detector.close()  # as before the model has loaded
        async with http.get(f"{server.url}/room") as resp:
            assert resp.status == 503 and (await resp.json())["error"] == "not_ready"
