"""The detect API with the real default model (NanoDet-g on ONNX Runtime, CPU), in process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
import pytest_asyncio

from detect_api.app import DetectResponse, create_app
from detect_api.settings import Settings
from inference.pipeline import CPU_BATCH, CPU_WORKERS
from tests.detect_api_support import encode, iou, metric_value, nvml_works, serve, upload

pytestmark = pytest.mark.asyncio(loop_scope="module")

ASTRONAUT_BOX = (14, 14, 364, 507)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(model_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        model_dir=model_dir,
        backend="onnxruntime",
        precision="fp32",
        onnxruntime={"providers": ["CPUExecutionProvider"]},
        max_delay_ms=5.0,
    )
    async with serve(create_app(settings)) as c:
        yield c


async def detect(client: httpx.AsyncClient, data: bytes, **params: str) -> httpx.Response:
    return await client.post("/detect", params=params, files=upload(data))


async def test_astronaut_is_a_person_with_the_known_box(client: httpx.AsyncClient, photos: dict) -> None:
    r = await detect(client, encode(photos["astronaut"]))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "nanodet-g"
    assert body["image"] == {"width": 512, "height": 512}
    top = body["detections"][0]
    assert top["label"] == "person" and top["class_id"] == 0
    assert top["score"] >= 0.6
    assert iou(top["box"], ASTRONAUT_BOX) > 0.8
    assert set(top) == {"label", "class_id", "score", "box"}
    timings = body["timings_ms"]
    assert set(timings) == {"decode", "preprocess", "inference", "postprocess", "total"}
    assert all(v > 0 for v in timings.values())
    assert timings["total"] >= timings["decode"] + timings["inference"]
    assert "inference;dur=" in r.headers["server-timing"]
    # The body is serialised by hand; the documented model must describe it exactly.
    assert DetectResponse.model_validate(body).model_dump() == body
    documented = (await client.get("/openapi.json")).json()["components"]["schemas"]["DetectResponse"]
    assert set(documented["properties"]) == set(body)


async def test_boxes_are_in_the_uploaded_images_pixels(client: httpx.AsyncClient, photos: dict) -> None:
    # The same photo at twice the size: the box scales with it.
    big = cv2.resize(photos["astronaut"], (1024, 1024), interpolation=cv2.INTER_LINEAR)
    body = (await detect(client, encode(big))).json()
    assert body["image"] == {"width": 1024, "height": 1024}
    top = body["detections"][0]
    assert top["label"] == "person"
    assert iou(top["box"], [2 * v for v in ASTRONAUT_BOX]) > 0.8


@pytest.mark.parametrize("ext", [".png", ".webp", ".bmp"])
async def test_every_supported_format(client: httpx.AsyncClient, photos: dict, ext: str) -> None:
    r = await detect(client, encode(photos["astronaut"], ext))
    assert r.status_code == 200, r.text
    assert r.json()["detections"][0]["label"] == "person"


async def test_coffee_is_a_cup(client: httpx.AsyncClient, photos: dict) -> None:
    labels = [d["label"] for d in (await detect(client, encode(photos["coffee"]))).json()["detections"]]
    assert "cup" in labels


async def test_annotated_returns_a_jpeg_of_the_same_size_with_boxes(
    client: httpx.AsyncClient, photos: dict
) -> None:
    image = photos["astronaut"]
    data = encode(image, ".png")  # lossless input: any change in the reply is the drawing (or JPEG noise)
    r = await detect(client, data, annotated="true")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/jpeg"
    assert int(r.headers["x-detections"]) >= 1
    assert r.headers["x-model"] == "nanodet-g"
    drawn = cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_COLOR)
    assert drawn is not None and drawn.shape == image.shape
    # The person's box edge (x1 = 14 .. 15) is drawn: far from the original there, unlike JPEG noise.
    x1, y1, _, y2 = ASTRONAUT_BOX
    edge = np.abs(drawn[y1 + 40 : y2 - 40, x1 : x1 + 2].astype(int) - image[y1 + 40 : y2 - 40, x1 : x1 + 2])
    interior = np.abs(drawn[200:300, 200:300].astype(int) - image[200:300, 200:300])
    assert edge.mean() > 4 * interior.mean() + 10


async def test_classes_filter_by_name_or_id(client: httpx.AsyncClient, photos: dict) -> None:
    data = encode(photos["astronaut"])
    for classes in ("person", "Person", "0", " person , cup "):
        labels = {d["label"] for d in (await detect(client, data, classes=classes)).json()["detections"]}
        assert labels == {"person"}, classes
    only_cups = (await detect(client, data, classes="cup")).json()["detections"]
    assert all(d["label"] == "cup" for d in only_cups)
    assert not any(d["label"] == "person" for d in only_cups)


async def test_thresholds_and_max_detections(client: httpx.AsyncClient, photos: dict) -> None:
    data = encode(photos["astronaut"])
    many = (await detect(client, data, score_threshold="0.05")).json()["detections"]
    assert len(many) > 1
    assert all(d["score"] >= 0.05 for d in many)
    assert [d["score"] for d in many] == sorted((d["score"] for d in many), reverse=True)
    assert (
        len((await detect(client, data, score_threshold="0.05", max_detections="1")).json()["detections"])
        == 1
    )
    assert (await detect(client, data, score_threshold="0.99")).json()["detections"] == []


async def test_concurrent_requests_get_their_own_answers(client: httpx.AsyncClient, photos: dict) -> None:
    # Requests share engine calls in the micro-batcher; each must still get its own image's detections.
    images = {name: encode(photos[name]) for name in ("astronaut", "coffee", "motorcycle", "chelsea")}
    alone = {name: (await detect(client, data)).json()["detections"] for name, data in images.items()}
    names = list(images) * 3
    replies = await asyncio.gather(*(detect(client, images[name]) for name in names))
    for name, r in zip(names, replies, strict=True):
        assert r.status_code == 200
        got = r.json()["detections"]
        assert [d["label"] for d in got] == [d["label"] for d in alone[name]], name
        for a, b in zip(got, alone[name], strict=True):
            assert a["score"] == pytest.approx(b["score"], abs=1e-3)


async def test_health_ready_model_and_docs(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    model = (await client.get("/model")).json()
    assert model["name"] == "nanodet-g"
    assert (model["backend"], model["precision"]) == ("onnxruntime", "fp32")
    # fp32 is the gate's reference: 1.0 once `engine_build precision` has run, null (not measured) before.
    assert model["gate_score"] is None or 0.9 <= model["gate_score"] <= 1.0
    assert model["provider"] == "CPUExecutionProvider"
    assert model["input_size"] == [416, 416]
    assert len(model["classes"]) == 80 and model["classes"][0] == "person"
    # CPU defaults: no batching (no gain per image there), two runs in flight.
    assert (model["max_batch_size"], model["workers"]) == (CPU_BATCH, CPU_WORKERS) == (1, 2)
    assert model["max_queue"] == 256
    assert (await client.get("/docs")).status_code == 200
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert {"/detect", "/healthz", "/readyz", "/model", "/metrics"} <= set(paths)
    params = {p["name"]: p for p in paths["/detect"]["post"]["parameters"]}
    assert params["max_detections"]["schema"]["maximum"] == 300


async def test_metrics_count_requests_and_images(client: httpx.AsyncClient, photos: dict) -> None:
    before = (await client.get("/metrics")).text
    images_before = metric_value(before, "images_processed_total") or 0.0
    requests_before = (
        metric_value(before, "http_requests_total", {"handler": "/detect", "status": "200"}) or 0.0
    )
    assert (await detect(client, encode(photos["astronaut"]))).status_code == 200

    r = await client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert metric_value(text, "images_processed_total") == images_before + 1
    assert (
        metric_value(text, "http_requests_total", {"handler": "/detect", "method": "POST", "status": "200"})
        == requests_before + 1
    )
    assert metric_value(text, "http_request_duration_seconds_count", {"handler": "/detect"})
    assert (metric_value(text, "inference_latency_seconds_count") or 0) >= 1
    assert (metric_value(text, "inference_latency_seconds_sum") or 0) > 0
    assert (metric_value(text, "inference_batch_size_count") or 0) >= 1
    assert metric_value(text, "inference_queue_depth") == 0
    assert (metric_value(text, "inference_fps") or 0) > 0  # an image within the last 5 s
    assert metric_value(
        text, "inference_model_info", {"model": "nanodet-g", "backend": "onnxruntime"}
    ) == pytest.approx(1.0)
    assert metric_value(text, "process_resident_memory_bytes")
    assert 'handler="/metrics"' not in text  # /metrics itself is not instrumented
    if nvml_works():
        assert (metric_value(text, "gpu_memory_total_bytes", {"gpu": "0"}) or 0) > 0
    else:
        assert "gpu_" not in text  # absent, not zero, without a GPU
