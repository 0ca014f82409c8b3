"""The HTTPS front (docker/Caddyfile) with Debian's caddy on loopback, in front of the real servers.

The same Caddyfile compose mounts, with the upstreams and ports from the environment as compose sets them:
the real detect API, media server and Streamlit UI (real model), Caddy's internal CA for 127.0.0.1, and a
real Chromium that opens the live page over https:// and streams through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import cv2
import numpy as np
import pytest

from tests.browser import chromium_launch_options, photo_clip, require_chromium
from tests.web_servers import ROOT, detect_api, media_server, streamlit_ui
from tools.servers import LOOPBACK, free_port, tail

pytestmark = pytest.mark.slow

CADDYFILE = ROOT / "docker" / "Caddyfile"
READ_HEADER_TIMEOUT_S = 2


def require_caddy() -> str:
    path = shutil.which("caddy")
    if path is None:
        message = "caddy is not installed (apt-get install caddy; `make test` does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@dataclass(frozen=True)
class Front:
    url: str  # https://127.0.0.1:PORT
    http_url: str  # the plain-HTTP port (redirects)
    port: int
    health_port: int  # the container's health check (plain HTTP, loopback)
    root_cert: Path  # the internal CA's root, as a user exports it from Caddy's data directory
    logs: Path

    def ssl_context(self) -> ssl.SSLContext:
        """Verification against the exported root only: what a user who trusted it gets."""
        return ssl.create_default_context(cafile=str(self.root_cert))


def caddy_env(
    data_home: Path, https_port: int, http_port: int, health_port: int, **upstreams: str
) -> dict[str, str]:
    return {
        **os.environ,
        "XDG_DATA_HOME": str(
            data_home / "data"
        ),  # Caddy keeps its CA and certificates here (/data in compose)
        "XDG_CONFIG_HOME": str(data_home / "config"),
        "FRONT_SITE": LOOPBACK,
        "FRONT_HTTPS_PORT": str(https_port),
        "FRONT_HTTP_PORT": str(http_port),
        "FRONT_HEALTH_PORT": str(health_port),
        "FRONT_READ_HEADER_TIMEOUT": f"{READ_HEADER_TIMEOUT_S}s",
        **upstreams,
    }


def _answers(url: str, context: ssl.SSLContext) -> bool:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ssl.SSLError):
        return False


CLIENT_BURST = 6  # requests a client address may make at once to /api/detect and /live/config


@pytest.fixture(scope="module")
def front(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    caddy = require_caddy()
    logs = tmp_path_factory.mktemp("front-logs")
    # As compose runs them behind the front: the API under /api, both believing the front's X-Forwarded-For;
    # per-client limits low enough for a test to reach (each address has its own).
    api_env = {
        "RTDETECT_ROOT_PATH": "/api",
        "RTDETECT_TRUSTED_PROXIES": LOOPBACK,
        "RTDETECT_RATE_LIMIT_PER_S": "0.01",
        "RTDETECT_RATE_LIMIT_BURST": str(CLIENT_BURST),
    }
    media_env = {
        "RTDETECT_MEDIA_TRUSTED_PROXIES": LOOPBACK,
        "RTDETECT_MEDIA_ICE_RATE_PER_MIN": "1",
        "RTDETECT_MEDIA_ICE_RATE_BURST": str(CLIENT_BURST),
    }
    with (
        detect_api(model_dir, logs, api_env) as api_url,
        media_server(model_dir, logs, media_env) as media_url,
    ):
        ui_env = {
            "RTDETECT_UI_DETECT_API_URL": api_url,
            "RTDETECT_UI_MEDIA_SERVER_URL": media_url,
            "RTDETECT_UI_ICE_HOST_ADDRESSES": LOOPBACK,
            "RTDETECT_UI_ICE_SERVERS": "[]",
        }
        with streamlit_ui(logs, ui_env) as ui_url:
            https_port, http_port, health_port = free_port(), free_port(), free_port()
            # No Grafana here: its upstream is a closed port, which shows the front's own error answer.
            env = caddy_env(
                logs,
                https_port,
                http_port,
                health_port,
                FRONT_API_UPSTREAMS=api_url.removeprefix("http://"),
                FRONT_MEDIA_UPSTREAMS=media_url.removeprefix("http://"),
                FRONT_UI_UPSTREAMS=ui_url.removeprefix("http://"),
                FRONT_GRAFANA_UPSTREAMS=f"{LOOPBACK}:{free_port()}",
            )
            log_path = logs / "caddy.log"
            with log_path.open("wb") as log:
                proc = subprocess.Popen(
                    [caddy, "run", "--config", str(CADDYFILE), "--adapter", "caddyfile"],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            try:
                root = logs / "data" / "caddy" / "pki" / "authorities" / "local" / "root.crt"
                url = f"https://{LOOPBACK}:{https_port}"
                deadline = time.monotonic() + 30
                while not (
                    root.exists()
                    and _answers(f"{url}/api/healthz", ssl.create_default_context(cafile=str(root)))
                ):
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"caddy did not serve {url}:\n{tail(log_path)}")
                    time.sleep(0.2)  # polling a health URL until a deadline
                yield Front(url, f"http://{LOOPBACK}:{http_port}", https_port, health_port, root, logs)
            finally:
                proc.terminate()
                proc.wait(timeout=10)


def _jpeg(photo: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", photo)
    assert ok
    return data.tobytes()


async def test_detect_api_through_the_front_with_the_trusted_internal_ca(
    front: Front, photos: dict[str, np.ndarray]
) -> None:
    connector = aiohttp.TCPConnector(ssl=front.ssl_context())
    async with aiohttp.ClientSession(connector=connector) as http:
        form = aiohttp.FormData()
        form.add_field("file", _jpeg(photos["astronaut"]), filename="a.jpg", content_type="image/jpeg")
        async with http.post(f"{front.url}/api/detect", data=form) as resp:
            assert resp.status == 200, await resp.text()
            body = await resp.json()
        assert "person" in {d["label"] for d in body["detections"]}

        # The API's docs through the front: the page asks for the prefixed schema and assets, which load.
        async with http.get(f"{front.url}/api/docs") as resp:
            page = await resp.text()
            assert resp.status == 200 and "'/api/openapi.json'" in page, page[:2000]
            assert "/api/docs-assets/swagger-ui-bundle.js" in page
        for path in ("/api/openapi.json", "/api/docs-assets/swagger-ui-bundle.js"):
            async with http.get(front.url + path) as resp:
                assert resp.status == 200, path
        # Metrics stay inside the compose network.
        for path in ("/api/metrics", "/live/metrics"):
            async with http.get(front.url + path) as resp:
                assert resp.status == 404
                assert (await resp.json())["error"] == "not_found"
        # The front keeps the Host header, so the media server's same-origin check on /offer still tells a
        # page of this origin (the browser test below) from another site's.
        offer = {"sdp": "v=0\r\n", "type": "offer"}
        async with http.post(
            f"{front.url}/live/offer", json=offer, headers={"Origin": "https://elsewhere.example"}
        ) as resp:
            assert resp.status == 403, await resp.text()
            assert (await resp.json())["error"] == "forbidden_origin"
        # An upstream that is down: the front's own error, in the services' JSON shape.
        async with http.get(f"{front.url}/grafana/") as resp:
            assert resp.status == 502
            assert resp.content_type == "application/json"
            assert set(await resp.json()) == {"error", "detail"}
        # A body over the front's limit is refused before it reaches the API.
        big = aiohttp.FormData()
        big.add_field("file", b"\0" * (22 * 1024 * 1024), filename="big.jpg", content_type="image/jpeg")
        async with http.post(f"{front.url}/api/detect", data=big) as resp:
            assert resp.status == 413
            assert resp.content_type == "application/json"

    async with aiohttp.ClientSession() as plain:
        # Plain HTTP redirects to HTTPS (the ACME port in a deployment).
        async with plain.get(f"{front.http_url}/live/", allow_redirects=False) as resp:
            assert resp.status in (301, 302, 307, 308)
            location = resp.headers["Location"]
            assert location.startswith(f"https://{LOOPBACK}") and location.endswith("/live/"), location
        # What compose's health check asks.
        async with plain.get(f"http://{LOOPBACK}:{front.health_port}/healthz") as resp:
            assert resp.status == 200 and (await resp.json()) == {"status": "ok"}


async def test_a_client_that_never_finishes_its_headers_is_disconnected(front: Front) -> None:
    reader, writer = await asyncio.open_connection(
        LOOPBACK, front.port, ssl=front.ssl_context(), server_hostname=LOOPBACK
    )
    try:
        writer.write(b"GET /api/healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        await writer.drain()
        started = time.monotonic()
        async with asyncio.timeout(READ_HEADER_TIMEOUT_S + 10):
            rest = await reader.read()  # EOF (or a 408) once the header deadline passes
        elapsed = time.monotonic() - started
        assert elapsed >= READ_HEADER_TIMEOUT_S - 0.5, elapsed
        assert rest == b"" or rest.startswith(b"HTTP/1.1 408"), rest[:100]
    finally:
        writer.close()
        # Closing a connection the server already dropped may raise: not what is tested here.
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


def _wait(page: Any, expression: str, timeout_ms: float, what: str) -> None:
    try:
        page.wait_for_function(expression, timeout=timeout_ms, polling=100)
    except Exception as e:  # Playwright's TimeoutError; say what the page saw instead
        state = page.evaluate(
            "() => window.rtdetect && ({status: window.rtdetect.status, error: window.rtdetect.error, "
            "presented: window.rtdetect.framesPresented, results: window.rtdetect.results})"
        )
        raise AssertionError(f"timed out waiting for {what}; page state {state}") from e


def test_chromium_streams_the_live_page_over_https_through_the_front(
    front: Front, photos: dict[str, np.ndarray], tmp_path: Path
) -> None:
    chromium = require_chromium()
    from playwright.sync_api import sync_playwright

    clip = photo_clip(tmp_path / "astronaut.y4m", photos["astronaut"])
    with sync_playwright() as p:
        browser = p.chromium.launch(**chromium_launch_options(fake_camera=clip, executable=chromium))
        try:
            # The browser does not know the internal CA (a user installs it: docs/deploy.md).
            context = browser.new_context(ignore_https_errors=True)
            page = context.new_page()
            requests: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto(f"{front.url}/live")  # redirected to /live/
            assert page.url == f"{front.url}/live/"
            assert page.evaluate("() => window.isSecureContext")
            page.click("#start")
            _wait(page, "() => window.rtdetect.status === 'connected'", 30_000, "the connection")
            first = page.evaluate("() => window.rtdetect.framesPresented")
            _wait(page, f"() => window.rtdetect.framesPresented >= {first} + 60", 30_000, "60 frames back")
            _wait(page, "() => window.rtdetect.results >= 10", 30_000, "10 detection results")
            _wait(
                page,
                "() => [...document.querySelectorAll('#detections td:first-child')]"
                ".some(td => td.textContent === 'person')",
                20_000,
                "a person in the detections list",
            )
            # Signalling went through the front under its prefix, never to the server's root.
            assert f"{front.url}/live/offer" in requests, requests
            assert all(u == f"{front.url}/live" or u.startswith(f"{front.url}/live/") for u in requests), (
                requests
            )
            page.click("#stop")
            _wait(page, "() => window.rtdetect.status === 'idle'", 10_000, "the stop")
        finally:
            browser.close()


def test_streamlit_ui_and_its_websocket_through_the_front(front: Front) -> None:
    chromium = require_chromium()
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(**chromium_launch_options(executable=chromium))
        try:
            page = browser.new_context(ignore_https_errors=True).new_page()
            sockets: list[Any] = []
            frames: list[str | bytes] = []

            def watch(ws: Any) -> None:
                sockets.append(ws)
                ws.on("framereceived", lambda payload: frames.append(payload))

            page.on("websocket", watch)
            page.goto(front.url + "/")
            # The upload page renders only from what its WebSocket delivers.
            expect(page.get_by_text("Detect objects in photos")).to_be_visible(timeout=30_000)
            assert [ws.url for ws in sockets] == [f"wss://{LOOPBACK}:{front.port}/_stcore/stream"]
            assert frames and not sockets[0].is_closed()
        finally:
            browser.close()


def test_tls_modes_from_the_environment(tmp_path: Path) -> None:
    """auto: a public name gets an ACME certificate, an IP the internal CA; internal: the CA for any name."""
    caddy = require_caddy()

    def policies(**env: str) -> list[dict[str, Any]]:
        result = subprocess.run(
            [caddy, "adapt", "--config", str(CADDYFILE), "--adapter", "caddyfile"],
            env={**os.environ, "XDG_DATA_HOME": str(tmp_path), **env},
            capture_output=True,
            text=True,
            check=True,
        )
        config = json.loads(result.stdout)
        tls = config["apps"].get("tls", {})
        return list(tls.get("automation", {}).get("policies", []))

    def issuers(entries: list[dict[str, Any]]) -> list[str]:
        return [i["module"] for entry in entries for i in entry.get("issuers", [])]

    assert issuers(policies(FRONT_SITE="gpu-box.lan", FRONT_TLS="internal")) == ["internal"]
    # auto: nothing explicit for a public name (Caddy's default ACME issuers) or an IP (Caddy picks its CA).
    assert issuers(policies(FRONT_SITE="detect.example.com")) == []
    assert issuers(policies(FRONT_SITE="192.168.1.20")) == []


def test_caddyfile_is_valid_and_formatted(tmp_path: Path) -> None:
    """What compose mounts must load (defaults as compose sets them) and be as `caddy fmt` writes it."""
    caddy = require_caddy()
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)}
    result = subprocess.run(
        [caddy, "validate", "--config", str(CADDYFILE), "--adapter", "caddyfile"],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    formatted = subprocess.run(
        [caddy, "fmt", str(CADDYFILE)], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert formatted == CADDYFILE.read_text()


async def test_per_client_limits_behind_the_front_count_each_browser_address(front: Front) -> None:
    """Behind the front both servers key their per-client limits on the browser's address (trusted_proxies:
    the front's X-Forwarded-For), not the front's; a client's own X-Forwarded-For buys it no fresh bucket."""

    async def status(local: str, method: str, url: str, headers: dict[str, str] | None = None) -> int:
        connector = aiohttp.TCPConnector(ssl=front.ssl_context(), local_addr=(local, 0))
        async with (
            aiohttp.ClientSession(connector=connector) as http,
            http.request(method, url, headers=headers) as resp,
        ):
            return resp.status

    for method, url in (("POST", f"{front.url}/api/detect"), ("GET", f"{front.url}/live/config")):
        spoofing = [
            await status("127.0.0.2", method, url, {"X-Forwarded-For": f"10.9.9.{i}"})
            for i in range(CLIENT_BURST + 1)
        ]
        assert 429 not in spoofing[:CLIENT_BURST] and spoofing[-1] == 429, (url, spoofing)
        assert await status("127.0.0.3", method, url) != 429, url  # another address: a bucket of its own
