"""The UI holds its own API key (RTDETECT_UI_API_KEY) and sends it on every call to both servers: the upload
page against the real detect API (real model) with auth on, under Streamlit's AppTest; the live page's ICE
fetch and relay against the real media server app with auth on (real WebRTC, fake detector)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import requests
import uvicorn
from aiortc.mediastreams import VideoStreamTrack
from streamlit.testing.v1 import AppTest

from detect_api.app import create_app
from detect_api.settings import Settings as ApiSettings
from inference.apikeys import hash_key, new_key
from tests.media_support import FakeDetector, loopback_settings, running_server
from tests.web_servers import LOOPBACK, ROOT, free_port
from web import live_page
from web.api_client import BackendRejected, DetectClient, DetectParams
from web.ice import aiortc_configuration, fetch_media_server_ice
from web.relay import MediaServerRelay
from web.settings import Settings as UiSettings

APP = str(ROOT / "web" / "app.py")
UI_KEY = new_key()
TURN = {"turn_urls": ["turn:turn.example.test:3478?transport=udp"], "turn_secret": "test-secret"}


@pytest.fixture(scope="module")
def detect_api_url(model_dir: Path) -> Iterator[str]:
    """The real detect API (real model) with auth on, accepting only the UI's key."""
    port = free_port()
    settings = ApiSettings(
        model_dir=model_dir,
        host=LOOPBACK,
        port=port,
        gpu_sample_interval_s=0,
        auth=True,
        api_key_hashes=[hash_key(UI_KEY)],
    )
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host=LOOPBACK, port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, name="detect-api-auth", daemon=True)
    thread.start()
    url = f"http://{LOOPBACK}:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if requests.get(f"{url}/readyz", timeout=1).status_code == 200:  # open without a key
                break
        except requests.RequestException:
            pass
        assert thread.is_alive(), "the detect API thread died while starting"
        assert time.monotonic() < deadline, "the detect API was not ready within 60 s"
        time.sleep(0.1)  # polling readiness until the deadline
    yield url
    server.should_exit = True
    thread.join(timeout=15)


def ui(monkeypatch: pytest.MonkeyPatch, detect_api_url: str, api_key: str | None) -> AppTest:
    monkeypatch.setenv("RTDETECT_UI_DETECT_API_URL", detect_api_url)
    monkeypatch.setenv("RTDETECT_UI_USE_MEDIA_SERVER_ICE", "false")
    if api_key is None:
        monkeypatch.delenv("RTDETECT_UI_API_KEY", raising=False)
    else:
        monkeypatch.setenv("RTDETECT_UI_API_KEY", api_key)
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    return at


def jpeg(image_bgr: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", image_bgr)
    assert ok
    return buf.tobytes()


def test_upload_page_sends_its_key(
    monkeypatch: pytest.MonkeyPatch, detect_api_url: str, photos: dict[str, np.ndarray]
) -> None:
    at = ui(monkeypatch, detect_api_url, UI_KEY)
    assert not at.error, [e.value for e in at.error]
    assert "person" in at.multiselect[0].options  # GET /model, with the key
    at.file_uploader[0].set_value(("astronaut.jpg", jpeg(photos["astronaut"]), "image/jpeg"))
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    table = at.dataframe[0].value
    assert "person" in list(table["label"])  # answers came back: the key was accepted
    assert len(at.image) == 1  # the annotated image: the second /detect call had the key too


@pytest.mark.parametrize("api_key", [None, "rtd_not-the-key"])
def test_upload_page_without_the_right_key_says_what_to_set(
    monkeypatch: pytest.MonkeyPatch, detect_api_url: str, api_key: str | None
) -> None:
    at = ui(monkeypatch, detect_api_url, api_key)
    errors = " ".join(str(e.value) for e in at.error)
    assert "RTDETECT_UI_API_KEY" in errors and "needs an API key" in errors, errors
    assert ("refused" in errors) == (api_key is not None)


def test_detect_client_sends_the_key(detect_api_url: str, photos: dict[str, np.ndarray]) -> None:
    headers = UiSettings(api_key=UI_KEY).auth_headers()
    result = DetectClient(detect_api_url, 30, headers=headers).detect(
        "a.jpg", jpeg(photos["astronaut"]), DetectParams()
    )
    assert "person" in [d["label"] for d in result.detections]
    with pytest.raises(BackendRejected) as info:
        DetectClient(detect_api_url, 30).model_classes()
    assert info.value.status == 401


async def test_live_page_fetches_turn_credentials_with_its_key() -> None:
    settings = loopback_settings(auth=True, api_key_hashes=[hash_key(UI_KEY)], **TURN)
    async with running_server(settings, FakeDetector()) as server:
        headers = UiSettings(api_key=UI_KEY).auth_headers()
        fetched = await asyncio.to_thread(fetch_media_server_ice, server.url, 5, headers)
        assert fetched[-1].username and fetched[-1].credential
        with pytest.raises(requests.HTTPError):
            await asyncio.to_thread(fetch_media_server_ice, server.url, 5)

        # The page's own helper: with the key the TURN server is there; without, a warning naming the setting.
        ui_settings = UiSettings(media_server_url=server.url, api_key=UI_KEY)
        servers, warning = await asyncio.to_thread(live_page.effective_ice_servers, ui_settings)
        assert warning is None and servers[-1].credential
        servers, warning = await asyncio.to_thread(
            live_page.effective_ice_servers, UiSettings(media_server_url=server.url)
        )
        assert servers == [] and warning is not None and "RTDETECT_UI_API_KEY" in warning


async def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.02)


async def test_relay_offers_with_its_key_and_streams() -> None:
    settings = loopback_settings(auth=True, api_key_hashes=[hash_key(UI_KEY)])
    async with running_server(settings, FakeDetector()) as server:
        refused = MediaServerRelay(server.url, aiortc_configuration([]), connect_timeout_s=10)
        refused.addTrack(VideoStreamTrack())
        refused.start()
        await wait_for(lambda: refused.stats.snapshot().state == "failed", 10, "the keyless relay to fail")
        assert "401" in (refused.stats.snapshot().error or "")
        assert len(server.state.peers) == 0

        relay = MediaServerRelay(
            server.url,
            aiortc_configuration([]),
            connect_timeout_s=10,
            headers=UiSettings(api_key=UI_KEY).auth_headers(),
        )
        relay.addTrack(VideoStreamTrack())
        relay.start()
        try:
            await wait_for(lambda: relay.stats.snapshot().state == "connected", 15, "the relay to connect")
            await asyncio.wait_for(relay.output.recv(), 10)  # annotated video comes back
            await wait_for(lambda: relay.stats.snapshot().results > 0, 10, "detections on the data channel")
        finally:
            await asyncio.to_thread(relay.stop)
            assert await asyncio.to_thread(relay.wait_closed, 10)


def test_ui_key_from_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ui_api_key"
    path.write_text(UI_KEY + "\n")
    monkeypatch.setenv("RTDETECT_UI_API_KEY_FILE", str(path))
    monkeypatch.delenv("RTDETECT_UI_API_KEY", raising=False)
    assert UiSettings().auth_headers() == {"Authorization": f"Bearer {UI_KEY}"}
    monkeypatch.setenv("RTDETECT_UI_API_KEY", "rtd_from-env")  # the variable wins over the file
    assert UiSettings().auth_headers() == {"Authorization": "Bearer rtd_from-env"}
    monkeypatch.delenv("RTDETECT_UI_API_KEY")
    assert UiSettings(api_key_file=None).auth_headers() == {}
    with pytest.raises(ValueError, match="cannot read"):
        UiSettings(api_key_file=tmp_path / "missing")
