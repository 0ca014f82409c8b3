"""The UI's settings and ICE configuration: never a public STUN server by default, TURN from the media
server when it hands some out, credentials never shown."""

from __future__ import annotations

import asyncio

import aioice.ice
import pytest
from pydantic import ValidationError
from streamlit_webrtc.component import _resolve_server_rtc_configuration, enhance_frontend_rtc_configuration

from rtc.ice import IceServer
from tests.media_support import FakeDetector, loopback_settings, running_server
from web import ice
from web.settings import Settings

TURN = IceServer(urls=["turn:turn.example.org:3478"], username="1700000000:ui", credential="s3cret")


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTDETECT_UI_DETECT_API_URL", "http://detect:8000/")
    monkeypatch.setenv(
        "RTDETECT_UI_ICE_SERVERS", '[{"urls": "turn:t:3478", "username": "u", "credential": "c"}]'
    )
    monkeypatch.setenv("RTDETECT_UI_ICE_HOST_ADDRESSES", "127.0.0.1, ::1")
    settings = Settings()
    assert settings.detect_api_url == "http://detect:8000"
    assert settings.ice_servers == [IceServer(urls=["turn:t:3478"], username="u", credential="c")]
    assert settings.ice_host_addresses == ["127.0.0.1", "::1"]


def test_defaults_have_no_ice_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RTDETECT_UI_ICE_SERVERS", raising=False)
    assert Settings().ice_servers == []


@pytest.mark.parametrize(
    "env",
    [
        {"RTDETECT_UI_ICE_SERVERS": '[{"urls": "http://stun.example.org"}]'},
        {"RTDETECT_UI_ICE_HOST_ADDRESSES": "localhost"},
        {"RTDETECT_UI_MEDIA_SERVER_URL": "media:8080"},
    ],
)
def test_bad_settings_are_refused_at_start(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValidationError):
        Settings()


def test_an_empty_list_reaches_streamlit_webrtc_as_no_ice_servers() -> None:
    # streamlit-webrtc falls back to a public STUN server when iceServers is missing, or when the whole
    # configuration is empty: the dict the page passes must survive both of its resolutions.
    rtc = ice.rtc_configuration_dict([])
    assert rtc == {"iceServers": []}
    assert _resolve_server_rtc_configuration(rtc).iceServers == []
    assert enhance_frontend_rtc_configuration(rtc)["iceServers"] == []
    assert ice.aiortc_configuration([]).iceServers == []


def test_turn_servers_reach_both_peers_with_their_credentials() -> None:
    rtc = ice.rtc_configuration_dict([TURN])
    assert rtc == {
        "iceServers": [
            {"urls": ["turn:turn.example.org:3478"], "username": "1700000000:ui", "credential": "s3cret"}
        ]
    }
    [server] = _resolve_server_rtc_configuration(rtc).iceServers or []
    assert (server.username, server.credential) == ("1700000000:ui", "s3cret")
    assert "s3cret" not in TURN.redacted()


def test_configured_servers_come_first_without_duplicates() -> None:
    stun = IceServer(urls="stun:stun.example.org:3478")
    assert ice.merge_ice_servers([stun, TURN], [TURN]) == [stun, TURN]


async def test_the_media_servers_ice_servers_are_fetched() -> None:
    settings = loopback_settings(ice_servers=[TURN.to_browser()])
    async with running_server(settings, FakeDetector()) as server:
        fetched = await asyncio.to_thread(ice.fetch_media_server_ice, server.url, 5)
    assert fetched == [TURN]


def test_host_candidates_are_restricted_and_restored() -> None:
    original = aioice.ice.get_host_addresses
    try:
        ice.restrict_host_candidates(["127.0.0.1", "::1"])
        assert aioice.ice.get_host_addresses(True, False) == ["127.0.0.1"]
        assert aioice.ice.get_host_addresses(True, True) == ["127.0.0.1", "::1"]
    finally:
        ice.restrict_host_candidates([])
    assert aioice.ice.get_host_addresses is original
