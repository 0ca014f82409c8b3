"""Every bad input gets a 4xx JSON `{error, detail}` and the server keeps serving.

Most run against the real model; the size limits, overload, readiness and failure paths use a Detector on a
small fake engine, where the timing of each step can be controlled.
"""

from __future__ import annotations

import asyncio
import io
import resource
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import pytest_asyncio
from PIL import Image

import detect_api.app
import detect_api.service
from detect_api.app import create_app
from detect_api.settings import Settings
from inference.pipeline import Detector
from tests.detect_api_support import (
    FAKE_SPEC,
    FakeEngine,
    encode,
    metric_value,
    png_header_only,
    serve,
    upload,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

GOOD_SIZE = 128  # the fake detector's test image is GOOD_SIZE x GOOD_SIZE


def assert_error(r: httpx.Response, status: int, error: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error", "detail"}, body
    assert body["error"] == error, body
    assert isinstance(body["detail"], str) and body["detail"]
    return body


# --- against the real model --------------------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(model_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        model_dir=model_dir, backend="onnxruntime", onnxruntime={"providers": ["CPUExecutionProvider"]}
    )
    async with serve(create_app(settings)) as c:
        yield c


@pytest.fixture(scope="module")
def good_jpeg(photos: dict) -> bytes:
    return encode(photos["astronaut"])


async def assert_still_serves(client: httpx.AsyncClient, good_jpeg: bytes) -> None:
    r = await client.post("/detect", files=upload(good_jpeg))
    assert r.status_code == 200, r.text
    assert r.json()["detections"][0]["label"] == "person"


def gif_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(buf, format="GIF")
    return buf.getvalue()


BAD_UPLOADS = {
    "empty file": (lambda jpeg: b"", 400, "invalid_image"),
    "not an image": (lambda jpeg: b"%PDF-1.7 this is not an image at all" * 10, 400, "invalid_image"),
    "random bytes": (lambda jpeg: np.random.default_rng(0).bytes(5000), 400, "invalid_image"),
    "truncated jpeg": (lambda jpeg: jpeg[: len(jpeg) // 2], 400, "invalid_image"),
    "jpeg header only": (lambda jpeg: jpeg[:200], 400, "invalid_image"),
    "gif": (lambda jpeg: gif_bytes(), 415, "unsupported_image_type"),
    "tiff": (lambda jpeg: encode(np.zeros((16, 16, 3), np.uint8), ".tiff"), 415, "unsupported_image_type"),
    # 49 megapixels: over the 40 MP setting, under Pillow's own bomb guard, so our check is what refuses it.
    "too many pixels": (lambda jpeg: png_header_only(7000, 7000), 413, "image_too_large"),
}


@pytest.mark.parametrize("case", BAD_UPLOADS)
async def test_bad_upload_is_a_4xx_json_and_the_server_keeps_serving(
    client: httpx.AsyncClient, good_jpeg: bytes, case: str
) -> None:
    make, status, error = BAD_UPLOADS[case]
    r = await client.post("/detect", files=upload(make(good_jpeg)))
    assert_error(r, status, error)
    await assert_still_serves(client, good_jpeg)


async def test_decompression_bomb_is_refused_before_its_pixels_exist(
    client: httpx.AsyncClient, good_jpeg: bytes
) -> None:
    bomb = png_header_only(30000, 30000)  # 2.7 GB of pixels declared in a few hundred bytes
    assert len(bomb) < 4096
    peak_before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    r = await client.post("/detect", files=upload(bomb, "bomb.png"))
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before_kib) / 1024
    assert_error(r, 413, "image_too_large")
    assert grown_mib < 200, f"peak memory grew by {grown_mib:.0f} MiB: the pixels were allocated"
    await assert_still_serves(client, good_jpeg)


@pytest.mark.parametrize(
    "params",
    [
        {"score_threshold": "-0.1"},
        {"score_threshold": "1.5"},
        {"score_threshold": "abc"},
        {"iou_threshold": "2"},
        {"iou_threshold": "-1"},
        {"max_detections": "0"},
        {"max_detections": "301"},
        {"max_detections": "1.5"},
        {"annotated": "maybe"},
    ],
)
async def test_out_of_range_parameters_are_422(
    client: httpx.AsyncClient, good_jpeg: bytes, params: dict[str, str]
) -> None:
    r = await client.post("/detect", params=params, files=upload(good_jpeg))
    body = assert_error(r, 422, "invalid_request")
    assert next(iter(params)) in body["detail"]


async def test_unknown_class_is_422_listing_the_valid_ones(
    client: httpx.AsyncClient, good_jpeg: bytes
) -> None:
    for classes in ("dragon", "person,dragon", "80", ",", "-1"):
        r = await client.post("/detect", params={"classes": classes}, files=upload(good_jpeg))
        body = assert_error(r, 422, "unknown_class")
        assert "person" in body["detail"] and "toothbrush" in body["detail"]
    r = await client.post("/detect", params={"classes": "dragon"}, files=upload(good_jpeg))
    assert "'dragon'" in r.json()["detail"]


async def test_missing_file_or_body_is_a_json_error(client: httpx.AsyncClient, good_jpeg: bytes) -> None:
    assert_error(await client.post("/detect"), 422, "invalid_request")
    assert_error(await client.post("/detect", files={"image": ("a.jpg", good_jpeg)}), 422, "invalid_request")
    assert_error(await client.post("/detect", data={"file": "not a file"}), 422, "invalid_request")
    assert_error(
        await client.post("/detect", content=good_jpeg, headers={"content-type": "image/jpeg"}),
        422,
        "invalid_request",
    )
    # A multipart body that does not follow its own boundary.
    r = await client.post(
        "/detect",
        content=b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\nabc',
        headers={"content-type": "multipart/form-data; boundary=xyz"},
    )
    assert r.status_code in (400, 422) and set(r.json()) == {"error", "detail"}
    await assert_still_serves(client, good_jpeg)


async def test_routing_errors_are_json(client: httpx.AsyncClient) -> None:
    assert_error(await client.get("/no/such/path"), 404, "not_found")
    r = await client.get("/detect")
    assert_error(r, 405, "method_not_allowed")
    assert "POST" in r.headers["allow"]


async def test_upload_over_the_default_20_mib_is_413(client: httpx.AsyncClient, good_jpeg: bytes) -> None:
    big = good_jpeg + b"\0" * (21 * 1024 * 1024)  # a JPEG with 21 MiB of trailing junk
    assert_error(await client.post("/detect", files=upload(big)), 413, "upload_too_large")
    await assert_still_serves(client, good_jpeg)


async def test_errors_are_counted_by_status(client: httpx.AsyncClient) -> None:
    before = metric_value((await client.get("/metrics")).text, "http_requests_total", {"status": "415"}) or 0
    await client.post("/detect", files=upload(gif_bytes()))
    after = metric_value((await client.get("/metrics")).text, "http_requests_total", {"status": "415"})
    assert after == before + 1


# --- against a fake engine ---------------------------------------------------------------------------------


@pytest.fixture
def fake_image() -> bytes:
    return encode(np.full((GOOD_SIZE, GOOD_SIZE, 3), 127, np.uint8), ".png")


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest_asyncio.fixture(loop_scope="module")
async def detector(engine: FakeEngine) -> AsyncIterator[Detector]:
    det = Detector(engine, FAKE_SPEC, max_batch_size=1, max_delay_ms=0.0, max_queue=1)
    try:
        yield det
    finally:
        engine.gate.set()
        await det.close()


def fake_settings(**overrides: object) -> Settings:
    return Settings(gpu_sample_interval_s=0, retry_after_s=3, **overrides)  # type: ignore[arg-type]


async def test_fake_engine_serves(detector: Detector, fake_image: bytes) -> None:
    await detector.start()
    async with serve(create_app(fake_settings(), detector=detector)) as c:
        r = await c.post("/detect", files=upload(fake_image))
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == "fake-yolo"
        (det,) = body["detections"]
        assert det["label"] == "person"
        # [16, 16, 48, 48] in the 64x64 input, which was the 128x128 image stretched: twice that.
        assert det["box"] == pytest.approx([32, 32, 96, 96])


async def test_not_ready_is_503_until_the_detector_starts(detector: Detector, fake_image: bytes) -> None:
    async with serve(create_app(fake_settings(), detector=detector)) as c:
        assert (await c.get("/healthz")).status_code == 200
        ready = await c.get("/readyz")
        assert_error(ready, 503, "not_ready")
        assert ready.headers["retry-after"] == "3"
        assert_error(await c.post("/detect", files=upload(fake_image)), 503, "not_ready")
        assert_error(await c.get("/model"), 503, "not_ready")
        await detector.start()
        assert (await c.get("/readyz")).status_code == 200
        assert (await c.post("/detect", files=upload(fake_image))).status_code == 200


async def test_full_queue_is_503_with_retry_after(
    detector: Detector, engine: FakeEngine, fake_image: bytes
) -> None:
    await detector.start()
    engine.gate.clear()
    async with serve(create_app(fake_settings(), detector=detector)) as c:

        async def post() -> httpx.Response:
            return await c.post("/detect", files=upload(fake_image))

        first = asyncio.create_task(post())
        assert await asyncio.to_thread(engine.entered.wait, 30), "the first request never reached the engine"
        # The engine holds the first; the queue (max 1) takes one of these two, the other must be refused.
        second, third = asyncio.create_task(post()), asyncio.create_task(post())
        done, pending = await asyncio.wait({second, third}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        assert len(done) == 1 and len(pending) == 1
        refused = done.pop().result()
        assert_error(refused, 503, "overloaded")
        assert refused.headers["retry-after"] == "3"
        engine.gate.set()
        assert (await first).status_code == 200
        assert (await pending.pop()).status_code == 200
        assert engine.calls == 2


async def test_engine_failure_is_a_json_500_and_recovers(
    detector: Detector, engine: FakeEngine, fake_image: bytes
) -> None:
    await detector.start()
    async with serve(create_app(fake_settings(), detector=detector)) as c:
        engine.fail = True
        assert_error(await c.post("/detect", files=upload(fake_image)), 500, "inference_failed")
        engine.fail = False
        assert (await c.post("/detect", files=upload(fake_image))).status_code == 200


async def test_unexpected_exception_is_a_logged_json_500_and_recovers(
    detector: Detector, fake_image: bytes, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: object) -> bytes:
        raise RuntimeError("a bug in the drawing code")

    monkeypatch.setattr(detect_api.service, "annotate", broken)
    await detector.start()
    async with serve(create_app(fake_settings(), detector=detector)) as c:
        r = await c.post("/detect", params={"annotated": "true"}, files=upload(fake_image))
        body = assert_error(r, 500, "internal_error")
        assert "drawing" not in body["detail"]  # internals stay in the log
        assert any("a bug in the drawing code" in (rec.exc_text or "") for rec in caplog.records)
        assert (await c.post("/detect", files=upload(fake_image))).status_code == 200
        text = (await c.get("/metrics")).text
        assert metric_value(text, "http_requests_total", {"handler": "/detect", "status": "500"}) == 1


# --- the upload size limit, on a small limit ---------------------------------------------------------------

SMALL_LIMIT = 64 * 1024


class CountingBody:
    """A request body streamed in chunks, counting how much of it the server pulled."""

    def __init__(self, total: int, chunk: int = 4096, prefix: bytes = b"") -> None:
        self.total, self.chunk, self.prefix = total, chunk, prefix
        self.sent = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self.prefix:
            self.sent += len(self.prefix)
            yield self.prefix
        while self.sent < self.total:
            self.sent += self.chunk
            yield b"\0" * self.chunk


MULTIPART_HEAD = (
    b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.jpg"\r\n'
    b"Content-Type: application/octet-stream\r\n\r\n"
)


async def test_declared_length_over_the_limit_is_refused_unread(detector: Detector) -> None:
    await detector.start()
    async with serve(create_app(fake_settings(max_upload_bytes=SMALL_LIMIT), detector=detector)) as c:
        body = CountingBody(50 * 1024 * 1024, prefix=MULTIPART_HEAD)
        r = await c.post(
            "/detect",
            content=body,
            headers={"content-type": "multipart/form-data; boundary=b", "content-length": str(body.total)},
        )
        assert_error(r, 413, "upload_too_large")
        assert body.sent == 0


async def test_chunked_body_over_the_limit_stops_being_read(detector: Detector, fake_image: bytes) -> None:
    await detector.start()
    async with serve(create_app(fake_settings(max_upload_bytes=SMALL_LIMIT), detector=detector)) as c:
        body = CountingBody(50 * 1024 * 1024, prefix=MULTIPART_HEAD)
        r = await c.post("/detect", content=body, headers={"content-type": "multipart/form-data; boundary=b"})
        assert_error(r, 413, "upload_too_large")
        # Read up to the limit (plus the multipart allowance and one chunk), not the whole 50 MiB.
        assert body.sent <= SMALL_LIMIT + detect_api.app.MULTIPART_OVERHEAD_BYTES + 2 * body.chunk
        assert (await c.post("/detect", files=upload(fake_image))).status_code == 200


async def test_file_over_the_limit_inside_the_multipart_allowance_is_413(
    detector: Detector, fake_image: bytes
) -> None:
    await detector.start()
    async with serve(create_app(fake_settings(max_upload_bytes=SMALL_LIMIT), detector=detector)) as c:
        just_over = fake_image + b"\0" * (SMALL_LIMIT + 1 - len(fake_image))
        body = assert_error(await c.post("/detect", files=upload(just_over)), 413, "upload_too_large")
        assert str(SMALL_LIMIT) in body["detail"]
        at_limit = fake_image + b"\0" * (SMALL_LIMIT - len(fake_image))  # PNG ignores trailing bytes
        assert (await c.post("/detect", files=upload(at_limit))).status_code == 200


async def test_readyz_follows_an_engine_that_goes_away_after_start(
    detector: Detector, engine: FakeEngine
) -> None:
    """An engine in another process (Triton) can go away after start: /readyz says so with the engine's reason,
    so a balancer stops routing, and is ready again once it is back (the real Triton: tests/test_triton.py)."""
    problem: list[str | None] = [None]
    engine.serving_problem = lambda: problem[0]  # type: ignore[attr-defined]
    await detector.start()
    async with serve(create_app(fake_settings(), detector=detector)) as c:
        assert (await c.get("/readyz")).status_code == 200
        problem[0] = "Triton at 127.0.0.1:1 does not answer: connection refused"
        ready = await c.get("/readyz")
        assert assert_error(ready, 503, "engine_unavailable")["detail"] == problem[0]
        assert ready.headers["retry-after"] == "3"
        problem[0] = None
        assert (await c.get("/readyz")).status_code == 200
