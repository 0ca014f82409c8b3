"""GET /room: the front's health check for new offers (docs/scale.md). A replica with room answers 200 with its
live peer count; a full one, or one whose model is not loaded, 503 with Retry-After; no API key needed."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiohttp
import numpy as np
import pytest
from aiohttp import web
from pydantic import ValidationError

from inference.apikeys import hash_key, new_key
from tests.media_support import FakeDetector, loopback_settings, running_server
from tools.servers import LOOPBACK, free_port
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


# --- least-loaded placement across a fleet (media_server/fleet.py) -----------------------------------------


class OtherReplica:
    """Another replica's GET /load, answering whatever the test sets (a stand-in for one layer: the front and
    real replicas together are tests/test_replicas.py)."""

    def __init__(self) -> None:
        self.answer: dict[str, object] = {"instance": "other", "peers": 0, "max_peers": 4, "ready": True}
        self.status = 200

    async def handle(self, request: web.Request) -> web.Response:
        return web.json_response(self.answer, status=self.status)


async def test_room_admits_new_peers_only_on_the_least_loaded_replica(photos: dict[str, np.ndarray]) -> None:
    other = OtherReplica()
    other_app = web.Application()
    other_app.router.add_get("/load", other.handle)
    runner = web.AppRunner(other_app)
    await runner.setup()
    site = web.TCPSite(runner, LOOPBACK, 0)
    await site.start()
    other_url = f"http://{LOOPBACK}:{runner.addresses[0][1]}"
    closed_url = f"http://{LOOPBACK}:{free_port()}"  # a replica that is down
    # fleet_cache_s=0: every /room reads the others afresh, so each change below is seen at once.
    settings = loopback_settings(max_peers=3, fleet=[other_url, closed_url], fleet_cache_s=0)
    try:
        async with running_server(settings, FakeDetector()) as server, aiohttp.ClientSession() as http:
            peer = SyntheticPeer(server.url, photos["astronaut"], fps=10)

            async def room() -> tuple[int, dict[str, object]]:
                async with http.get(f"{server.url}/room") as resp:
                    return resp.status, await resp.json()

            # No peers here, none there: a tie admits.
            assert (await room())[0] == 200
            async with http.get(f"{server.url}/load") as resp:
                here = await resp.json()
                assert resp.status == 200 and here["peers"] == 0 and here["max_peers"] == 3
                assert here["ready"] is True and here["instance"]

            try:
                await peer.connect(http)
                await peer.wait_for_frames(1, limit_s=20)
                await _check_deference(room, other, here)
            finally:
                await peer.close()
    finally:
        await runner.cleanup()


async def _check_deference(
    room: Callable[[], Awaitable[tuple[int, dict[str, object]]]], other: OtherReplica, here: dict[str, object]
) -> None:
    """With one peer here: /room defers to a replica with room and fewer peers, and to no other."""
    status, body = await room()  # 1 here, 0 on a replica with room: new peers go there
    assert status == 503 and body["error"] == "not_least_loaded", body
    other.answer = {**other.answer, "peers": 1}
    assert (await room())[0] == 200  # 1 and 1: a tie admits
    # Replicas that could not take the peer anyway do not hold this one back.
    answers: list[dict[str, object]] = [
        {"instance": "other", "peers": 0, "max_peers": 0, "ready": True},  # full
        {"instance": "other", "peers": 0, "max_peers": 4, "ready": False},  # model not loaded
        {"instance": here["instance"], "peers": 0, "max_peers": 4, "ready": True},  # itself
        {"peers": "zero"},  # not a load
    ]
    for answer in answers:
        other.answer = answer
        assert (await room())[0] == 200, answer
    other.answer, other.status = {"error": "boom"}, 500
    assert (await room())[0] == 200


def test_fleet_setting_takes_the_fronts_space_separated_form() -> None:
    assert loopback_settings(fleet="http://a:8080 http://b:8080").fleet == ["http://a:8080", "http://b:8080"]
    assert loopback_settings(fleet="http://a:8080,http://b:8080").fleet == ["http://a:8080", "http://b:8080"]
    with pytest.raises(ValidationError, match="base URLs"):
        loopback_settings(fleet="a:8080")


async def test_readiness_room_and_load_follow_an_engine_gone_after_start() -> None:
    """An engine tier (Triton) gone after start: /readyz and /room answer 503 engine_unavailable with its reason
    (the front then sends new peers elsewhere) and /load says not ready; all recover when it is back."""
    detector = FakeDetector()
    async with running_server(loopback_settings(), detector) as server, aiohttp.ClientSession() as http:
        detector.problem = "Triton at 127.0.0.1:1 does not answer: connection refused"
        for path in ("/readyz", "/room"):
            async with http.get(f"{server.url}{path}") as resp:
                body = await resp.json()
                assert resp.status == 503 and resp.headers.get("Retry-After"), path
                assert body == {"error": "engine_unavailable", "detail": detector.problem}, body
        async with http.get(f"{server.url}/load") as resp:
            assert (await resp.json())["ready"] is False
        detector.problem = None
        for path in ("/readyz", "/room"):
            async with http.get(f"{server.url}{path}") as resp:
                assert resp.status == 200, path
        async with http.get(f"{server.url}/load") as resp:
            assert (await resp.json())["ready"] is True
