"""Authentication and the rate limit of the detect API, in process, on a fake engine.

With auth on, every protected entry point refuses a missing and a wrong key (one by one) and accepts the
right one; the probes stay open; /metrics follows metrics_auth.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import numpy as np
import pytest

from detect_api.app import create_app
from detect_api.settings import Settings
from inference.apikeys import hash_key, new_key
from inference.pipeline import Detector
from tests.detect_api_support import FAKE_SPEC, FakeEngine, encode, serve, upload

pytestmark = pytest.mark.asyncio

KEY = new_key()
OTHER_KEY = new_key()
IMAGE = encode(np.full((96, 96, 3), 127, np.uint8), ".png")

# method, path, request keyword arguments
PROTECTED: dict[str, tuple[str, str, dict[str, Any]]] = {
    "detect": ("POST", "/detect", {"files": upload(IMAGE)}),
    "detect annotated": ("POST", "/detect", {"files": upload(IMAGE), "params": {"annotated": "true"}}),
    "model": ("GET", "/model", {}),
    "docs": ("GET", "/docs", {}),
    "redoc": ("GET", "/redoc", {}),
    "openapi": ("GET", "/openapi.json", {}),
    "metrics": ("GET", "/metrics", {}),
    "unknown path": ("GET", "/nothing-here", {}),  # deny by default: no route is open by accident
}


@asynccontextmanager
async def api(**overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
    values: dict[str, Any] = {"gpu_sample_interval_s": 0, "auth": True, "api_key_hashes": [hash_key(KEY)]}
    values.update(overrides)
    detector = Detector(FakeEngine(), FAKE_SPEC, max_batch_size=1, max_delay_ms=0.0, max_queue=8)
    await detector.start()
    try:
        async with serve(create_app(Settings(**values), detector=detector)) as client:
            yield client
    finally:
        await detector.close()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_401(r: httpx.Response, error: str) -> None:
    assert r.status_code == 401, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert r.json()["error"] == error and r.json()["detail"]
    assert r.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize("entry", PROTECTED)
async def test_protected_entry_point_refuses_missing_and_wrong_keys(entry: str) -> None:
    method, path, kwargs = PROTECTED[entry]
    async with api() as client:
        assert_401(await client.request(method, path, **kwargs), "unauthorized")
        assert_401(await client.request(method, path, headers=bearer(OTHER_KEY), **kwargs), "invalid_api_key")
        assert_401(
            await client.request(method, path, headers={"Authorization": KEY}, **kwargs), "unauthorized"
        )
        basic = {"Authorization": "Basic " + KEY}
        assert_401(await client.request(method, path, headers=basic, **kwargs), "unauthorized")
        r = await client.request(method, path, headers=bearer(KEY), **kwargs)
        assert r.status_code == (404 if entry == "unknown path" else 200), r.text


async def test_right_key_gets_real_answers() -> None:
    async with api(api_key_hashes=[hash_key(OTHER_KEY), hash_key(KEY)]) as client:
        r = await client.post("/detect", files=upload(IMAGE), headers=bearer(KEY))
        assert r.json()["detections"][0]["label"] == "person"
        assert (await client.get("/model", headers=bearer(OTHER_KEY))).json()["name"] == "fake-yolo"
        assert "paths" in (await client.get("/openapi.json", headers=bearer(KEY))).json()


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
async def test_probes_stay_open(path: str) -> None:
    async with api() as client:
        assert (await client.get(path)).status_code == 200
        assert (await client.get(path, headers=bearer(OTHER_KEY))).status_code == 200


async def test_metrics_open_when_metrics_auth_is_off() -> None:
    async with api(metrics_auth=False) as client:
        r = await client.get("/metrics")
        assert r.status_code == 200 and "http_requests_total" in r.text
        assert_401(await client.get("/model"), "unauthorized")


async def test_refused_before_the_body_is_read() -> None:
    # A request without a key announcing 1 GB is answered at once, not after (or instead of) a 413.
    async with api() as client:
        r = await client.post("/detect", content=b"x" * 10, headers={"Content-Length": str(1 << 30)})
        assert_401(r, "unauthorized")


async def test_auth_off_by_default_everything_open() -> None:
    async with api(auth=False, api_key_hashes=[]) as client:
        assert (await client.post("/detect", files=upload(IMAGE))).status_code == 200
        assert (await client.get("/model")).status_code == 200
        assert (await client.get("/metrics")).status_code == 200


async def test_rate_limit_per_key_is_429_json() -> None:
    async with api(
        rate_limit_per_s=0.2, rate_limit_burst=2, api_key_hashes=[hash_key(KEY), hash_key(OTHER_KEY)]
    ) as client:
        for _ in range(2):
            assert (await client.post("/detect", files=upload(IMAGE), headers=bearer(KEY))).status_code == 200
        r = await client.post("/detect", files=upload(IMAGE), headers=bearer(KEY))
        assert r.status_code == 429, r.text
        assert r.json()["error"] == "rate_limited" and r.json()["detail"]
        assert 1 <= int(r.headers["retry-after"]) <= 5
        # Another key has its own budget; other paths are not limited.
        assert (
            await client.post("/detect", files=upload(IMAGE), headers=bearer(OTHER_KEY))
        ).status_code == 200
        assert (await client.get("/model", headers=bearer(KEY))).status_code == 200


async def test_rate_limit_per_address_when_auth_is_off() -> None:
    async with api(auth=False, api_key_hashes=[], rate_limit_per_s=0.2, rate_limit_burst=1) as client:
        assert (await client.post("/detect", files=upload(IMAGE))).status_code == 200
        r = await client.post("/detect", files=upload(IMAGE))
        assert r.status_code == 429 and r.json()["error"] == "rate_limited"
