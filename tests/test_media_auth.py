"""Who may use the media server (media_server/auth.py): API keys on every protected entry point, the /offer
guards against cross-site requests, and the per-client limits on pending offers and TURN credentials.

Real aiortc offers against the real app on loopback, with a fake detector.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.mediastreams import VideoStreamTrack

from inference.apikeys import hash_key, new_key
from tests.media_support import FakeDetector, RunningServer, loopback_settings, running_server

KEY = new_key()
OTHER_KEY = new_key()
TURN = {"turn_urls": ["turn:turn.example.test:3478?transport=udp"], "turn_secret": "test-secret"}


async def offer_sdp() -> str:
    """A real browser-like offer (video + data channel); its peer is closed at once, so the server's side
    of it never connects: a pending offer."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        pc.addTrack(VideoStreamTrack())
        pc.createDataChannel("detections")
        await pc.setLocalDescription(await pc.createOffer())
        return str(pc.localDescription.sdp)
    finally:
        await pc.close()


@asynccontextmanager
async def server(**overrides: Any) -> AsyncIterator[tuple[RunningServer, aiohttp.ClientSession]]:
    values: dict[str, Any] = {"auth": True, "api_key_hashes": [hash_key(KEY), hash_key(OTHER_KEY)], **TURN}
    values.update(overrides)
    async with (
        running_server(loopback_settings(**values), FakeDetector()) as s,
        aiohttp.ClientSession() as http,
    ):
        yield s, http


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def call(
    http: aiohttp.ClientSession, method: str, url: str, **kwargs: Any
) -> tuple[int, Any, aiohttp.typedefs.LooseHeaders]:
    async with http.request(method, url, **kwargs) as resp:
        body = (
            await resp.json(content_type=None)
            if resp.content_type == "application/json"
            else await resp.text()
        )
        return resp.status, body, resp.headers


def rejected(s: RunningServer, reason: str) -> float | None:
    return s.state.registry.get_sample_value("rtdetect_live_offers_rejected_total", {"reason": reason})


PROTECTED = ["offer", "ice-servers", "config", "peers", "metrics", "unknown path"]


async def request_for(entry: str) -> tuple[str, str, dict[str, Any]]:
    if entry == "offer":
        return "POST", "/offer", {"json": {"sdp": await offer_sdp(), "type": "offer"}}
    return "GET", "/nothing-here" if entry == "unknown path" else f"/{entry}", {}


@pytest.mark.parametrize("entry", PROTECTED)
async def test_protected_entry_point_refuses_missing_and_wrong_keys(entry: str) -> None:
    async with server() as (s, http):
        method, path, kwargs = await request_for(entry)
        for headers, error in (
            ({}, "unauthorized"),
            (bearer(new_key()), "invalid_api_key"),
            ({"Authorization": KEY}, "unauthorized"),
            ({"Authorization": f"Basic {KEY}"}, "unauthorized"),
        ):
            status, body, resp_headers = await call(http, method, s.url + path, headers=headers, **kwargs)
            assert status == 401, (headers, body)
            assert body["error"] == error and body["detail"], body
            assert str(resp_headers["WWW-Authenticate"]).startswith("Bearer")
            assert "iceServers" not in body
        assert len(s.state.peers) == 0  # no refused offer made a peer
        if entry == "offer":
            assert rejected(s, "unauthorized") == 4

        status, body, _ = await call(http, method, s.url + path, headers=bearer(KEY), **kwargs)
        assert status == (404 if entry == "unknown path" else 200), body
        if entry == "offer":
            assert body["type"] == "answer" and len(s.state.peers) == 1
        if entry in ("ice-servers", "config"):
            turn = body["iceServers"][-1]
            assert turn["username"] and turn["credential"]  # TURN credentials only with a key


@pytest.mark.parametrize("path", ["/", "/static/app.js", "/healthz", "/readyz"])
async def test_page_and_probes_stay_open(path: str) -> None:
    async with server() as (s, http):
        status, _, _ = await call(http, "GET", s.url + path)
        assert status == 200


async def test_metrics_open_when_metrics_auth_is_off() -> None:
    async with server(metrics_auth=False) as (s, http):
        status, text, _ = await call(http, "GET", s.url + "/metrics")
        assert status == 200 and "rtdetect_live_active_peers" in text
        assert (await call(http, "GET", s.url + "/peers"))[0] == 401


async def test_auth_off_by_default() -> None:
    async with server(auth=False, api_key_hashes=[]) as (s, http):
        for path in ("/config", "/ice-servers", "/peers", "/metrics"):
            assert (await call(http, "GET", s.url + path))[0] == 200, path


# --- cross-site requests (auth off: the `make run` case, where nothing else stands in the way) -----------


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "text/plain;charset=UTF-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ],
)
async def test_offer_that_is_not_json_typed_is_415_and_makes_no_peer(content_type: str) -> None:
    # What a page on any site can send without a CORS preflight: a "simple" POST with a JSON body.
    async with server(auth=False, api_key_hashes=[]) as (s, http):
        body = json.dumps({"sdp": await offer_sdp(), "type": "offer"})
        status, answer, _ = await call(
            http, "POST", s.url + "/offer", data=body, headers={"Content-Type": content_type, "Origin": s.url}
        )
        assert status == 415 and answer["error"] == "unsupported_media_type", answer
        assert len(s.state.peers) == 0
        assert rejected(s, "not_json") == 1


@pytest.mark.parametrize(
    "origin", ["https://evil.example", "http://127.0.0.1.evil.example", "null", "http://localhost:1"]
)
async def test_offer_from_a_foreign_origin_is_403_and_makes_no_peer(origin: str) -> None:
    async with server(auth=False, api_key_hashes=[]) as (s, http):
        offer = {"sdp": await offer_sdp(), "type": "offer"}
        status, answer, _ = await call(http, "POST", s.url + "/offer", json=offer, headers={"Origin": origin})
        assert status == 403 and answer["error"] == "forbidden_origin", answer
        assert len(s.state.peers) == 0
        assert rejected(s, "forbidden_origin") == 1


async def test_offer_from_the_same_origin_an_allowed_one_or_no_browser_is_answered() -> None:
    allowed = "https://rtdetect.example.com"
    async with server(
        auth=False, api_key_hashes=[], allowed_origins=allowed, max_pending_offers_per_client=4
    ) as (s, http):
        for headers in ({"Origin": s.url}, {"Origin": allowed}, {}):
            offer = {"sdp": await offer_sdp(), "type": "offer"}
            status, answer, _ = await call(http, "POST", s.url + "/offer", json=offer, headers=headers)
            assert status == 200 and answer["type"] == "answer", (headers, answer)
        assert len(s.state.peers) == 3


# --- per-client limits -------------------------------------------------------------------------------------


async def test_pending_offers_per_key_are_limited_with_429() -> None:
    async with server(
        max_pending_offers_per_client=2, max_peers=4, disconnect_timeout_s=1.5, retry_after_s=3
    ) as (s, http):

        async def post(key: str) -> tuple[int, Any, Any]:
            offer = {"sdp": await offer_sdp(), "type": "offer"}
            return await call(http, "POST", s.url + "/offer", json=offer, headers=bearer(key))

        assert (await post(KEY))[0] == 200
        assert (await post(KEY))[0] == 200
        status, body, headers = await post(KEY)
        assert status == 429 and body["error"] == "too_many_pending_offers" and body["detail"], body
        assert headers["Retry-After"] == "3"
        assert len(s.state.peers) == 2
        assert rejected(s, "too_many_pending") == 1
        # Another key is another client: the slots it takes are its own.
        assert (await post(OTHER_KEY))[0] == 200
        # The pending peers never connect: once the server closes them, the key may offer again.
        await s.state.peers.wait_empty(15)
        assert (await post(KEY))[0] == 200


async def test_pending_offers_per_address_when_auth_is_off() -> None:
    async with server(auth=False, api_key_hashes=[], max_pending_offers_per_client=1) as (s, http):
        offer = {"sdp": await offer_sdp(), "type": "offer"}
        assert (await call(http, "POST", s.url + "/offer", json=offer))[0] == 200
        offer = {"sdp": await offer_sdp(), "type": "offer"}
        status, body, _ = await call(http, "POST", s.url + "/offer", json=offer)
        assert status == 429 and body["error"] == "too_many_pending_offers"


async def test_turn_credentials_are_rate_limited_per_key() -> None:
    async with server(ice_rate_per_min=6, ice_rate_burst=3) as (s, http):
        # /ice-servers and /config draw on one budget: both hand out TURN credentials.
        for path in ("/ice-servers", "/config", "/ice-servers"):
            assert (await call(http, "GET", s.url + path, headers=bearer(KEY)))[0] == 200
        for path in ("/ice-servers", "/config"):
            status, body, headers = await call(http, "GET", s.url + path, headers=bearer(KEY))
            assert status == 429 and body["error"] == "rate_limited" and "iceServers" not in body
            assert 1 <= int(headers["Retry-After"]) <= 10
        assert (await call(http, "GET", s.url + "/ice-servers", headers=bearer(OTHER_KEY)))[0] == 200
        assert (await call(http, "GET", s.url + "/peers", headers=bearer(KEY)))[0] == 200  # not limited


def test_allowed_origins_setting() -> None:
    settings = loopback_settings(allowed_origins="https://Live.Example.com:8443/, http://10.0.0.5:8080")
    assert settings.allowed_origins == ["https://live.example.com:8443", "http://10.0.0.5:8080"]
    for bad in ("*", "live.example.com", "https://live.example.com/path", "file:///x"):
        with pytest.raises(ValueError, match="allowed_origins"):
            loopback_settings(allowed_origins=bad)


async def test_an_allowed_origin_matches_whatever_its_case() -> None:
    async with server(auth=False, api_key_hashes=[], allowed_origins="https://live.example.com") as (s, http):
        offer = {"sdp": await offer_sdp(), "type": "offer"}
        headers = {"Origin": "https://LIVE.example.com"}
        assert (await call(http, "POST", s.url + "/offer", json=offer, headers=headers))[0] == 200
