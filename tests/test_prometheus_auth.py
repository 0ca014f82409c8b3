"""A real Prometheus (Debian's) scrapes both servers' /metrics with auth on, using the project's own
prometheus.yml: the API key comes from its `authorization.credentials_file`. A wrong key is refused (401)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from inference.apikeys import hash_key, new_key
from tests.detect_api_process import fake_detect_api
from tests.media_support import FakeDetector, loopback_settings, running_server
from tools.servers import LOOPBACK, free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS_DIR = ROOT / "observability" / "prometheus"
COMPOSE_TARGETS = {
    "detect-api": "backend:8000",
    "media-server": "media-server:8080",
    "dcgm": "dcgm-exporter:9400",
}


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: `make setup` installs Debian's prometheus package (apt)")
    return path


def project_config(targets: dict[str, str], into: Path, key: str) -> Path:
    """The project's prometheus.yml with only the targets rewritten, its rule files, and the key file."""
    text = (PROMETHEUS_DIR / "prometheus.yml").read_text()
    for job, target in COMPOSE_TARGETS.items():
        assert text.count(f'"{target}"') == 1, target
        text = text.replace(f'"{target}"', f'"{targets[job]}"')
    assert text.count("credentials_file: secrets/metrics_api_key") == 2  # both servers' jobs
    shutil.copytree(PROMETHEUS_DIR, into, ignore=shutil.ignore_patterns("prometheus.yml"))
    (into / "prometheus.yml").write_text(text)
    (into / "secrets" / "metrics_api_key").write_text(key + "\n")
    return into / "prometheus.yml"


async def targets(http: aiohttp.ClientSession, url: str) -> dict[str, dict[str, Any]]:
    async with http.get(f"{url}/api/v1/targets") as resp:
        body = await resp.json()
    return {t["labels"]["job"]: t for t in body["data"]["activeTargets"]}


async def wait_for_targets(
    http: aiohttp.ClientSession,
    url: str,
    want: str,
    error: str,
    proc: subprocess.Popen[bytes],
    timeout_s: float,
) -> dict[str, dict[str, Any]]:
    """Until both servers' targets are `want` ("up"/"down") and their last error contains `error`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    seen: dict[str, dict[str, Any]] = {}
    while True:
        assert proc.poll() is None, "prometheus exited"
        try:
            seen = await targets(http, url)
        except (aiohttp.ClientError, KeyError, ValueError):
            seen = {}
        jobs = [seen.get(job) for job in ("detect-api", "media-server")]
        if all(t is not None and t["health"] == want and error in t["lastError"] for t in jobs):
            return seen
        if loop.time() > deadline:
            summary = {j: (t["health"], t["lastError"]) for j, t in seen.items()}
            raise AssertionError(f"targets not {want} within {timeout_s} s: {summary}")
        await asyncio.sleep(0.5)  # polling Prometheus' API with a deadline


async def test_prometheus_scrapes_both_servers_with_the_key_from_its_config(tmp_path: Path) -> None:
    prometheus, promtool = tool("prometheus"), tool("promtool")
    key = new_key()
    auth = {"auth": True, "api_key_hashes": [hash_key(key)], "metrics_auth": True}
    api_env = {"RTDETECT_AUTH": "true", "RTDETECT_API_KEY_HASHES": hash_key(key)}
    with fake_detect_api(api_env, tmp_path / "detect_api.log") as (host, api_port):
        async with (
            running_server(loopback_settings(**auth), FakeDetector()) as media,
            aiohttp.ClientSession() as http,
        ):
            media_target = media.url.removeprefix("http://")
            for url in (f"http://{host}:{api_port}/metrics", f"{media.url}/metrics"):
                async with http.get(url) as resp:
                    assert resp.status == 401  # the servers do refuse a scrape without the key
            config = project_config(
                {
                    "detect-api": f"{host}:{api_port}",
                    "media-server": media_target,
                    "dcgm": f"{LOOPBACK}:{free_port()}",
                },
                tmp_path / "prometheus",
                key,
            )
            check = await asyncio.to_thread(
                subprocess.run, [promtool, "check", "config", str(config)], capture_output=True, text=True
            )
            assert check.returncode == 0, check.stdout + check.stderr
            prom_url = f"http://{LOOPBACK}:{free_port()}"
            with (tmp_path / "prometheus.log").open("wb") as log:
                proc = await asyncio.to_thread(
                    subprocess.Popen,
                    [
                        prometheus,
                        f"--config.file={config}",
                        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                        f"--web.listen-address={prom_url.removeprefix('http://')}",
                        "--log.level=warn",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            try:
                seen = await wait_for_targets(http, prom_url, "up", "", proc, timeout_s=60)
                assert seen["dcgm"]["health"] != "up"  # nothing listens there: the check can fail

                # A wrong key (Prometheus reads the file on every scrape): both servers refuse it.
                (config.parent / "secrets" / "metrics_api_key").write_text(new_key() + "\n")
                await wait_for_targets(http, prom_url, "down", "401", proc, timeout_s=30)
            finally:
                proc.terminate()
                proc.wait(timeout=15)
