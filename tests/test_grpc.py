"""The detect API's gRPC service, served by the app's lifespan beside REST, on real photos and the real
model (NanoDet-g, ONNX Runtime CPU); readiness and a full queue on a fake engine."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import cv2
import grpc
import httpx
import numpy as np
import pytest
import pytest_asyncio

from detect_api.app import create_app
from detect_api.client import AsyncDetectClient, DetectClient, DetectError, image_message
from detect_api.proto import detect_pb2 as pb
from detect_api.settings import Settings
from inference.pipeline import Detector
from tests.detect_api_support import (
    FAKE_SPEC,
    FakeEngine,
    encode,
    iou,
    metric_value,
    png_header_only,
    serve,
    upload,
)
from tests.grpc_support import GRPC_FOR_HTTP, ReflectionClient, error_code
from tests.test_detect_api_errors import BAD_UPLOADS
from tools.servers import LOOPBACK, free_port

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture(scope="module")
def grpc_port() -> int:
    return free_port()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def http(model_dir: Path, grpc_port: int) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        model_dir=model_dir,
        backend="onnxruntime",  # pinned: test_get_model names it (the default, auto, may choose another)
        onnxruntime={"providers": ["CPUExecutionProvider"]},
        host=LOOPBACK,
        grpc_port=grpc_port,
        gpu_sample_interval_s=0,
    )
    async with serve(create_app(settings)) as c:
        yield c


@pytest_asyncio.fixture(loop_scope="module")
async def client(http: httpx.AsyncClient, grpc_port: int) -> AsyncIterator[AsyncDetectClient]:
    async with AsyncDetectClient(f"{LOOPBACK}:{grpc_port}") as c:
        yield c


@pytest.fixture(scope="module")
def good_jpeg(photos: dict) -> bytes:
    return encode(photos["astronaut"])


async def assert_still_serves(client: AsyncDetectClient, good_jpeg: bytes) -> None:
    response = await client.detect(good_jpeg)
    assert response.detections[0].label == "person"


def box(d: pb.Detection) -> list[float]:
    return [d.box.x1, d.box.y1, d.box.x2, d.box.y2]


# --- parity with REST ----------------------------------------------------------------------------------


@pytest.mark.parametrize("photo", ["astronaut", "coffee", "motorcycle", "chelsea"])
async def test_detect_gives_the_same_detections_as_rest(
    http: httpx.AsyncClient, client: AsyncDetectClient, photos: dict, photo: str
) -> None:
    data = encode(photos[photo])
    rest = (await http.post("/detect", files=upload(data))).json()
    response = await client.detect(data)
    assert response.model == rest["model"] == "nanodet-g"
    assert (response.image.width, response.image.height) == (
        rest["image"]["width"],
        rest["image"]["height"],
    )
    assert len(response.detections) == len(rest["detections"]) > 0
    for got, want in zip(response.detections, rest["detections"], strict=True):
        assert (got.label, got.class_id) == (want["label"], want["class_id"])
        assert got.score == pytest.approx(want["score"], abs=1e-3)
        assert box(got) == pytest.approx(want["box"], abs=0.1)
    t = response.timings_ms
    assert t.inference > 0 and t.total >= t.decode + t.inference


async def test_raw_pixels_give_the_same_detections_as_a_lossless_file(
    client: AsyncDetectClient, photos: dict
) -> None:
    image = photos["motorcycle"]
    from_png = await client.detect(encode(image, ".png"))
    from_bgr = await client.detect(image)  # sent raw: BGR24 with its shape
    rgb = np.ascontiguousarray(image[:, :, ::-1])
    raw_rgb = image_message(rgb)
    raw_rgb.raw.format = pb.PIXEL_FORMAT_RGB24
    from_rgb = await client.detect_request(pb.DetectRequest(image=raw_rgb))
    for response in (from_bgr, from_rgb):
        assert [d.label for d in response.detections] == [d.label for d in from_png.detections]
        for got, want in zip(response.detections, from_png.detections, strict=True):
            assert box(got) == pytest.approx(box(want), abs=0.01)
    assert from_bgr.timings_ms.decode < from_png.timings_ms.decode  # no decoding to do


async def test_options_classes_limits_and_annotated(client: AsyncDetectClient, photos: dict) -> None:
    data = encode(photos["motorcycle"])
    everything = await client.detect(data, score_threshold=0.2)
    assert len({d.label for d in everything.detections}) > 1
    only = await client.detect(data, score_threshold=0.2, classes=["motorcycle"])
    assert only.detections and {d.label for d in only.detections} == {"motorcycle"}
    by_id = await client.detect(data, score_threshold=0.2, classes=[3])  # 3 = motorcycle
    assert [box(d) for d in by_id.detections] == [box(d) for d in only.detections]
    assert len((await client.detect(data, score_threshold=0.2, max_detections=1)).detections) == 1
    annotated = await client.detect(data, annotated=True)
    image = cv2.imdecode(np.frombuffer(annotated.annotated_jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == photos["motorcycle"].shape
    assert not annotated.annotated_jpeg or annotated.detections  # boxes drawn on what was found
    assert (await client.detect(data)).annotated_jpeg == b""


async def test_get_model(client: AsyncDetectClient) -> None:
    info = await client.model()
    assert (info.name, info.backend, info.input_width, info.input_height) == (
        "nanodet-g",
        "onnxruntime",
        416,
        416,
    )
    assert len(info.classes) == 80 and info.classes[0] == "person"
    assert info.max_queue == 256 and info.workers >= 1


async def test_rest_and_grpc_share_one_detector(
    http: httpx.AsyncClient, client: AsyncDetectClient, good_jpeg: bytes
) -> None:
    # One engine, one images_processed_total: gRPC requests go through the same batcher as REST ones.
    before = metric_value((await http.get("/metrics")).text, "images_processed_total") or 0
    await asyncio.gather(*(client.detect(good_jpeg) for _ in range(3)))
    await http.post("/detect", files=upload(good_jpeg))
    after = metric_value((await http.get("/metrics")).text, "images_processed_total")
    assert after == before + 4


# --- hostile input: a clean status, and the server keeps serving ----------------------------------------


@pytest.mark.parametrize("case", BAD_UPLOADS)
async def test_every_bad_upload_of_the_rest_tests_gets_a_clean_status(
    client: AsyncDetectClient, good_jpeg: bytes, case: str
) -> None:
    make, http_status, error = BAD_UPLOADS[case]
    with pytest.raises(DetectError) as caught:
        await client.detect(make(good_jpeg))
    assert caught.value.status == GRPC_FOR_HTTP[http_status]
    assert caught.value.error == error and caught.value.detail
    await assert_still_serves(client, good_jpeg)


BAD_OPTIONS: dict[str, dict[str, Any]] = {
    "score below 0": {"score_threshold": -0.1},
    "score above 1": {"score_threshold": 1.5},
    "score NaN": {"score_threshold": math.nan},
    "iou above 1": {"iou_threshold": 2.0},
    "iou below 0": {"iou_threshold": -1.0},
    "max_detections 0": {"max_detections": 0},
    "max_detections over the cap": {"max_detections": 301},
}


@pytest.mark.parametrize("case", BAD_OPTIONS)
async def test_out_of_range_options_are_invalid_argument(
    client: AsyncDetectClient, good_jpeg: bytes, case: str
) -> None:
    options = BAD_OPTIONS[case]
    with pytest.raises(DetectError) as caught:
        await client.detect(good_jpeg, **options)
    assert caught.value.status == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.error == "invalid_request"
    assert next(iter(options)) in caught.value.detail
    await assert_still_serves(client, good_jpeg)


async def test_unknown_classes_are_invalid_argument(client: AsyncDetectClient, good_jpeg: bytes) -> None:
    for classes in (["dragon"], ["person", "dragon"], ["80"], [","], ["-1"], [""], ["²"], ["\x00"]):
        with pytest.raises(DetectError) as caught:
            await client.detect(good_jpeg, classes=classes)
        assert caught.value.status == grpc.StatusCode.INVALID_ARGUMENT, classes
        assert caught.value.error in ("unknown_class", "invalid_class_id")
    await assert_still_serves(client, good_jpeg)


def raw(data: bytes, width: int, height: int, fmt: int = pb.PIXEL_FORMAT_BGR24) -> pb.DetectRequest:
    return pb.DetectRequest(
        image=pb.Image(raw=pb.RawImage(data=data, width=width, height=height, format=fmt))
    )


BAD_REQUESTS: dict[str, tuple[pb.DetectRequest, grpc.StatusCode, str]] = {
    "no image": (pb.DetectRequest(), grpc.StatusCode.INVALID_ARGUMENT, "invalid_request"),
    "empty encoded": (
        pb.DetectRequest(image=pb.Image(encoded=b"")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "invalid_image",
    ),
    "raw too few bytes": (raw(b"\0" * 100, 10, 10), grpc.StatusCode.INVALID_ARGUMENT, "invalid_image"),
    "raw too many bytes": (raw(b"\0" * 301, 10, 10), grpc.StatusCode.INVALID_ARGUMENT, "invalid_image"),
    "raw zero size": (raw(b"", 0, 10), grpc.StatusCode.INVALID_ARGUMENT, "invalid_image"),
    "raw unknown format": (raw(b"\0" * 300, 10, 10, 99), grpc.StatusCode.INVALID_ARGUMENT, "invalid_image"),
    # 4e9 pixels declared in a few bytes: refused before anything is allocated.
    "raw huge declared": (
        raw(b"\0" * 12, 65535, 65535),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "image_too_large",
    ),
    "bomb png": (
        pb.DetectRequest(image=pb.Image(encoded=png_header_only(30000, 30000))),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "image_too_large",
    ),
    "encoded over max_upload_bytes": (
        pb.DetectRequest(image=pb.Image(encoded=b"\xff\xd8" + b"\0" * (20 * 1024 * 1024))),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "upload_too_large",
    ),
}


async def test_garbage_in_a_stream_is_a_clean_status(http: httpx.AsyncClient, grpc_port: int) -> None:
    async def requests() -> AsyncIterator[bytes]:
        yield b"\xff\xff\xff\xff garbage"

    async with grpc.aio.insecure_channel(f"{LOOPBACK}:{grpc_port}") as channel:
        call = channel.stream_stream("/rtdetect.v1.DetectService/DetectStream")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in call(requests()):
                pass
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("case", BAD_REQUESTS)
async def test_malformed_requests_get_a_clean_status(
    client: AsyncDetectClient, good_jpeg: bytes, case: str
) -> None:
    request, status, error = BAD_REQUESTS[case]
    with pytest.raises(DetectError) as caught:
        await client.detect_request(request)
    assert (caught.value.status, caught.value.error) == (status, error), caught.value
    await assert_still_serves(client, good_jpeg)


async def test_message_over_the_receive_limit_is_refused_by_grpc(
    client: AsyncDetectClient, good_jpeg: bytes
) -> None:
    with pytest.raises(DetectError) as caught:
        await client.detect(b"\0" * (25 * 1024 * 1024))  # over the 24 MiB default
    assert caught.value.status == grpc.StatusCode.RESOURCE_EXHAUSTED
    await assert_still_serves(client, good_jpeg)


async def test_garbage_bytes_for_a_message_is_a_clean_status(
    http: httpx.AsyncClient, grpc_port: int, good_jpeg: bytes
) -> None:
    # Not a DetectRequest at all: the server's deserializer refuses it.
    async with grpc.aio.insecure_channel(f"{LOOPBACK}:{grpc_port}") as channel:
        call = channel.unary_unary("/rtdetect.v1.DetectService/Detect")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(b"\xff\xff\xff\xff garbage")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_code(caught.value) == "invalid_request"
    assert "protobuf" not in (caught.value.details() or "")  # no parser internals in the answer
    async with AsyncDetectClient(f"{LOOPBACK}:{grpc_port}") as client:
        await assert_still_serves(client, good_jpeg)


# --- health, reflection, metrics ------------------------------------------------------------------------


async def test_health_and_reflection_with_a_generic_client(
    http: httpx.AsyncClient, grpc_port: int, good_jpeg: bytes
) -> None:
    def generic() -> tuple[list[str], list[str], dict, dict, dict]:
        reflection = ReflectionClient(f"{LOOPBACK}:{grpc_port}")
        try:
            services = reflection.services()
            methods = reflection.methods("rtdetect.v1.DetectService")
            health = reflection.call("grpc.health.v1.Health/Check", {"service": ""})
            model = reflection.call("rtdetect.v1.DetectService/GetModel", {})
            import base64

            detect = reflection.call(
                "rtdetect.v1.DetectService/Detect",
                {
                    "image": {"encoded": base64.b64encode(good_jpeg).decode()},
                    "options": {"classes": ["person"]},
                },
            )
            return services, methods, health, model, detect
        finally:
            reflection.close()

    services, methods, health, model, detect = await asyncio.to_thread(generic)
    assert {"rtdetect.v1.DetectService", "grpc.health.v1.Health"} <= set(services)
    assert methods == ["Detect", "DetectStream", "GetModel"]
    assert health == {"status": "SERVING"}
    assert model["name"] == "nanodet-g"
    assert detect["detections"][0]["label"] == "person"
    assert (
        iou([detect["detections"][0]["box"][k] for k in ("x1", "y1", "x2", "y2")], (14, 14, 364, 507)) > 0.8
    )


async def test_health_watch_streams_the_status(http: httpx.AsyncClient, grpc_port: int) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with grpc.aio.insecure_channel(f"{LOOPBACK}:{grpc_port}") as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
        first = await watch.read()
        watch.cancel()
    assert first.status == health_pb2.HealthCheckResponse.SERVING


async def test_sync_client_and_cli(
    http: httpx.AsyncClient,
    grpc_port: int,
    good_jpeg: bytes,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from detect_api.client import main

    photo = tmp_path / "astronaut.jpg"
    photo.write_bytes(good_jpeg)
    target = f"{LOOPBACK}:{grpc_port}"

    def use() -> tuple[str, list[int], int, int]:
        with DetectClient(target) as sync:
            status = sync.health("rtdetect.v1.DetectService")
            ids = [r.frame_id for r in sync.stream([(5, good_jpeg), (6, good_jpeg)])]
        return (
            status,
            ids,
            main(["--target", target, "health"]),
            main(["--target", target, "detect", str(photo)]),
        )

    status, ids, health_rc, detect_rc = await asyncio.to_thread(use)
    assert status == "SERVING" and health_rc == 0 and detect_rc == 0
    assert ids and ids[-1] == 6  # the last frame is always answered; an earlier one may be dropped
    printed = capsys.readouterr().out
    assert '"label": "person"' in printed


async def test_calls_are_counted_by_method_and_code(
    http: httpx.AsyncClient, client: AsyncDetectClient, good_jpeg: bytes
) -> None:
    def count(text: str, method: str, code: str) -> float:
        labels = {"grpc_method": method, "grpc_code": code}
        return metric_value(text, "grpc_server_handled_total", labels) or 0

    before = (await http.get("/metrics")).text
    await client.detect(good_jpeg)
    with pytest.raises(DetectError):
        await client.detect(b"not an image")
    after = (await http.get("/metrics")).text
    assert count(after, "Detect", "OK") == count(before, "Detect", "OK") + 1
    assert count(after, "Detect", "INVALID_ARGUMENT") == count(before, "Detect", "INVALID_ARGUMENT") + 1
    labels = {"grpc_method": "Detect", "grpc_type": "unary"}
    assert (metric_value(after, "grpc_server_handling_seconds_count", labels) or 0) >= 2


# --- DetectStream -----------------------------------------------------------------------------------------


async def paced_frames(
    images: list[np.ndarray], fps: float, seconds: float, sent: dict[int, float]
) -> AsyncIterator[pb.Frame]:
    """Frames at `fps` for `seconds`, cycling through `images` (raw BGR), recording when each left."""
    start = time.perf_counter()
    n = int(fps * seconds)
    for i in range(n):
        await asyncio.sleep(max(0.0, start + i / fps - time.perf_counter()))  # pacing to the frame clock
        sent[i] = time.perf_counter()
        yield pb.Frame(frame_id=i, image=image_message(images[i % len(images)]))


async def run_stream(
    client: AsyncDetectClient, images: list[np.ndarray], fps: float, seconds: float
) -> tuple[list[pb.Result], list[float], int]:
    sent: dict[int, float] = {}
    results: list[pb.Result] = []
    latencies: list[float] = []
    async for result in client.stream(paced_frames(images, fps, seconds, sent)):
        latencies.append(time.perf_counter() - sent[result.frame_id])
        results.append(result)
    return results, latencies, len(sent)


async def test_stream_results_name_their_frames_and_follow_the_newest(
    client: AsyncDetectClient, photos: dict
) -> None:
    frames = [cv2.resize(photos[name], (640, 480)) for name in ("astronaut", "motorcycle")]
    # Far faster than the engine: most frames must be dropped, the results must keep up with the newest.
    results, latencies, sent = await run_stream(client, frames, fps=500, seconds=1.0)
    ids = [r.frame_id for r in results]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert ids[-1] == sent - 1  # the last frame sent is always processed
    last = results[-1]
    assert last.frames_received == sent
    assert last.frames_dropped == sent - len(results) > 0
    for r in results:  # each result's detections belong to its own frame
        expected = "person" if r.frame_id % 2 == 0 else "motorcycle"
        assert expected in {d.label for d in r.detections}, (r.frame_id, [d.label for d in r.detections])
    # Bounded by the engine's time for a frame or two, not by the thousands of frames sent (generous for a
    # shared 2-core machine).
    assert sorted(latencies)[int(0.95 * len(latencies))] < 2.0


async def test_stream_bad_frame_ends_the_stream_with_a_status(
    client: AsyncDetectClient, photos: dict
) -> None:
    async def frames() -> AsyncIterator[pb.Frame]:
        yield pb.Frame(frame_id=1, image=image_message(encode(photos["astronaut"])))
        await asyncio.sleep(0.5)
        yield pb.Frame(frame_id=2, image=pb.Image(encoded=b"not an image"))
        await asyncio.sleep(5)

    got: list[int] = []
    with pytest.raises(DetectError) as caught:
        async for result in client.stream(frames()):
            got.append(result.frame_id)
    assert caught.value.status == grpc.StatusCode.INVALID_ARGUMENT
    assert "frame 2" in caught.value.detail and caught.value.error == "invalid_image"
    assert got == [1]


@pytest.mark.slow
async def test_stream_at_30_fps_keeps_up_for_60_s_without_growing_latency(
    client: AsyncDetectClient, photos: dict
) -> None:
    frames = [cv2.resize(photos[name], (640, 480)) for name in ("astronaut", "motorcycle", "coffee")]
    results, latencies, sent = await run_stream(client, frames, fps=30, seconds=60.0)
    assert len(results) >= 0.5 * sent, f"{len(results)} results for {sent} frames"
    tenth = len(latencies) // 10
    first, last = sorted(latencies[:tenth]), sorted(latencies[-tenth:])
    median_first, median_last = first[len(first) // 2], last[len(last) // 2]
    # Latest frame wins: latency stays where it started instead of growing with a queue.
    assert median_last < median_first + 0.1, (median_first, median_last)
    assert sorted(latencies)[int(0.95 * len(latencies))] < 1.0


# --- readiness and overload, on a fake engine -------------------------------------------------------------


@pytest_asyncio.fixture(loop_scope="module")
async def fake() -> AsyncIterator[tuple[Detector, FakeEngine]]:
    engine = FakeEngine()
    det = Detector(engine, FAKE_SPEC, max_batch_size=1, max_delay_ms=0.0, max_queue=1)
    try:
        yield det, engine
    finally:
        engine.gate.set()
        await det.close()


def fake_settings(port: int) -> Settings:
    return Settings(gpu_sample_interval_s=0, retry_after_s=3, host=LOOPBACK, grpc_port=port)


FAKE_IMAGE = encode(np.full((128, 128, 3), 127, np.uint8), ".png")


async def test_unavailable_and_not_serving_until_the_detector_starts(
    fake: tuple[Detector, FakeEngine],
) -> None:
    detector, _ = fake
    port = free_port()
    async with (
        serve(create_app(fake_settings(port), detector=detector)),
        AsyncDetectClient(f"{LOOPBACK}:{port}") as client,
    ):
        assert await client.health() == "NOT_SERVING"
        with pytest.raises(DetectError) as caught:
            await client.detect(FAKE_IMAGE)
        assert (caught.value.status, caught.value.error) == (grpc.StatusCode.UNAVAILABLE, "not_ready")
        with pytest.raises(DetectError) as caught:
            await client.model()
        assert caught.value.status == grpc.StatusCode.UNAVAILABLE
        await detector.start()
        assert await client.health() == "SERVING"
        response = await client.detect(FAKE_IMAGE)
        assert box(response.detections[0]) == pytest.approx([32, 32, 96, 96])


async def test_full_queue_is_resource_exhausted_with_retry_after(fake: tuple[Detector, FakeEngine]) -> None:
    detector, engine = fake
    await detector.start()
    engine.gate.clear()
    port = free_port()
    async with (
        serve(create_app(fake_settings(port), detector=detector)),
        grpc.aio.insecure_channel(f"{LOOPBACK}:{port}") as channel,
    ):
        from detect_api.proto import detect_pb2_grpc

        stub = detect_pb2_grpc.DetectServiceStub(channel)
        request = pb.DetectRequest(image=pb.Image(encoded=FAKE_IMAGE))
        first = asyncio.ensure_future(stub.Detect(request))
        assert await asyncio.to_thread(engine.entered.wait, 30), "the first call never reached the engine"
        second, third = (
            asyncio.ensure_future(stub.Detect(request)),
            asyncio.ensure_future(stub.Detect(request)),
        )
        done, pending = await asyncio.wait({second, third}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        assert len(done) == 1 and len(pending) == 1
        refused = done.pop().exception()
        assert isinstance(refused, grpc.aio.AioRpcError)
        assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error_code(refused) == "overloaded"
        assert ("retry-after", "3") in tuple(refused.trailing_metadata())
        engine.gate.set()
        assert (await first).detections
        assert (await pending.pop()).detections


async def test_grpc_port_0_turns_grpc_off(fake: tuple[Detector, FakeEngine]) -> None:
    detector, _ = fake
    app = create_app(Settings(gpu_sample_interval_s=0, grpc_port=0), detector=detector)
    async with serve(app):
        assert getattr(app.state, "grpc_server", None) is None


async def test_a_taken_grpc_port_fails_the_start(fake: tuple[Detector, FakeEngine]) -> None:
    detector, _ = fake
    await detector.start()
    port = free_port()
    async with serve(create_app(fake_settings(port), detector=detector)):
        with pytest.raises(OSError, match="RTDETECT_GRPC_PORT"):
            async with serve(create_app(fake_settings(port), detector=detector)):
                pass
