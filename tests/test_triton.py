"""The triton engine backend against a real tritonserver (the pinned nvidia-pytriton wheel's binary, python
backend running ONNX Runtime on the CPU), started once for the module on loopback ports.

The detect API and the media server run against it as they would in production: the same detections as
ONNX Runtime in-process on real photos, a live aiortc peer, two server processes whose requests Triton puts
in one batch (its own metrics say so), and a Triton killed mid-stream and started again.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import aiohttp
import cv2
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from detect_api.errors import classify
from engine_build.triton_repo import RepoOptions, check_config, model_io, write_repository
from inference.engines import create_engine
from inference.errors import EngineUnavailableError, ModelLoadError
from inference.pipeline import Detector
from inference.spec import ModelSpec
from inference.types import DetectParams
from tests.media_support import loopback_settings, running_server
from tools.servers import LOOPBACK, free_port, get_json, server_process
from tools.synthetic import SyntheticPeer
from tools.triton import MODEL_ENV, installed, triton_process, write_repo

ROOT = Path(__file__).resolve().parents[1]
# Long enough for requests from two processes to meet, short enough not to slow a lone request much.
QUEUE_DELAY_US = 20_000


def require_triton() -> None:
    if installed() is None or not (MODEL_ENV / "bin" / "python").exists():
        message = "tritonserver is not installed: python -m tools.triton install (`make test` does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def triton_repo(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Path:
    require_triton()
    repo = tmp_path_factory.mktemp("triton-repo")
    write_repo(model_dir, repo, max_queue_delay_us=QUEUE_DELAY_US, intra_op_threads=2)
    return repo


@pytest.fixture(scope="module")
def triton(triton_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, int]]:
    """One tritonserver for the module's tests; yields its ports."""
    logs = tmp_path_factory.mktemp("triton-logs")
    with triton_process(triton_repo, logs / "tritonserver.log") as (_, ports):
        yield ports


def _url(ports: dict[str, int]) -> str:
    return f"{LOOPBACK}:{ports['grpc']}"


def _counter(ports: dict[str, int], name: str) -> float:
    """A counter of Triton's own metrics for the rtdetect model (summed over its labels)."""
    import urllib.request

    with urllib.request.urlopen(f"http://{LOOPBACK}:{ports['metrics']}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in (name, f"{name}_total") and sample.labels.get("model") == "rtdetect":
                total += sample.value
    return total


# --- the repository writer (no server) -------------------------------------------------------------------


def test_repository_config_is_the_models_own_and_a_mismatch_is_refused(
    tmp_path: Path, model_dir: Path
) -> None:
    target = write_repository(model_dir, tmp_path, RepoOptions(platform="onnxruntime_onnx", max_batch_size=4))
    config = (target / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in config and "max_batch_size: 4" in config
    assert "preferred_batch_size: [ 4 ]" in config  # 8 is above the max: left out
    assert (target / "1" / "model.onnx").is_file()
    inputs, outputs = model_io(model_dir / "model.onnx")
    assert [i.name for i in inputs] == ["input"] and inputs[0].dims == (3, 416, 416)
    # The check parses with Triton's schema: a config whose output shape differs from the model is refused.
    (target / "config.pbtxt").write_text(config.replace("dims: [ 2704, 80 ]", "dims: [ 2704, 81 ]"))
    with pytest.raises(ModelLoadError, match="does not match"):
        check_config(target / "config.pbtxt", inputs, outputs)
    (target / "config.pbtxt").write_text(config.replace("max_batch_size", "max_batch_sise"))
    with pytest.raises(ModelLoadError, match="not a valid Triton model config"):
        check_config(target / "config.pbtxt", inputs, outputs)


def test_python_platform_names_its_environment(tmp_path: Path, model_dir: Path) -> None:
    target = write_repository(
        model_dir, tmp_path, RepoOptions(python_env=Path("/opt/env"), intra_op_threads=2)
    )
    config = (target / "config.pbtxt").read_text()
    assert 'backend: "python"' in config and "KIND_CPU" in config
    assert 'key: "EXECUTION_ENV_PATH" value: { string_value: "/opt/env" }' in config
    assert (target / "1" / "model.py").is_file() and (target / "1" / "model.onnx").is_file()


# --- against the real tritonserver -----------------------------------------------------------------------


@pytest.mark.parametrize("shared_memory", ["none", "system"])
async def test_same_detections_as_onnxruntime_on_real_photos(
    triton: dict[str, int], model_dir: Path, photos: dict[str, np.ndarray], shared_memory: str
) -> None:
    spec = ModelSpec.load(model_dir)
    reference = Detector(create_engine("onnxruntime", model_dir, spec), spec)
    remote = Detector(
        create_engine("triton", model_dir, spec, url=_url(triton), shared_memory=shared_memory), spec
    )
    await reference.start()
    await remote.start()
    try:
        assert remote.info()["backend"] == "triton" and "Triton" in remote.info()["provider"]
        params = DetectParams(score_threshold=0.35)
        for name in ("astronaut", "coffee", "motorcycle"):
            want = await reference.detect(photos[name], params)
            got = await remote.detect(photos[name], params)
            assert want.detections, name
            assert [d.label for d in got.detections] == [d.label for d in want.detections], name
            for a, b in zip(got.detections, want.detections, strict=True):
                assert abs(a.score - b.score) < 1e-4 and np.allclose(a.box, b.box, atol=0.05), (name, a, b)
    finally:
        await remote.close()
        await reference.close()


async def test_wrong_model_name_fails_at_load_with_a_clear_error(
    triton: dict[str, int], model_dir: Path
) -> None:
    spec = ModelSpec.load(model_dir)
    engine = create_engine("triton", model_dir, spec, url=_url(triton), model_name="nope", load_timeout_s=1.0)
    with pytest.raises(ModelLoadError, match="not ready"):
        await asyncio.to_thread(engine.load)


def _detect_api_env(ports: dict[str, int], model_dir: Path, port: int) -> dict[str, str]:
    return {
        "RTDETECT_HOST": LOOPBACK,
        "RTDETECT_PORT": str(port),
        "RTDETECT_GRPC_PORT": "0",
        "RTDETECT_MODEL_DIR": str(model_dir),
        "RTDETECT_GPU_SAMPLE_INTERVAL_S": "0",
        "RTDETECT_BACKEND": "triton",
        "RTDETECT_TRITON__URL": _url(ports),
        # One request in flight per process: a Triton batch above 1 can only mix the two processes.
        "RTDETECT_MAX_BATCH_SIZE": "1",
        "RTDETECT_INFERENCE_WORKERS": "1",
        "RTDETECT_TRITON__MAX_IN_FLIGHT": "1",
    }


def _jpeg(photo: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", photo)
    assert ok
    return data.tobytes()


async def _detect(http: aiohttp.ClientSession, url: str, jpeg: bytes) -> dict[str, object]:
    form = aiohttp.FormData()
    form.add_field("file", jpeg, filename="a.jpg", content_type="image/jpeg")
    async with http.post(f"{url}/detect", data=form) as resp:
        assert resp.status == 200, await resp.text()
        body: dict[str, object] = await resp.json()
        return body


@pytest.mark.slow
async def test_two_detect_api_processes_meet_in_one_triton_batch(
    triton: dict[str, int], model_dir: Path, photos: dict[str, np.ndarray], tmp_path: Path
) -> None:
    ports = [free_port(), free_port()]
    urls = [f"http://{LOOPBACK}:{p}" for p in ports]
    jpeg = _jpeg(photos["astronaut"])
    with (
        server_process(
            [sys.executable, "-m", "detect_api"], ready_url=f"{urls[0]}/readyz", log_path=tmp_path / "api0.log",
            env=_detect_api_env(triton, model_dir, ports[0]), cwd=ROOT, timeout_s=90,
        ) as first,
        server_process(
            [sys.executable, "-m", "detect_api"], ready_url=f"{urls[1]}/readyz", log_path=tmp_path / "api1.log",
            env=_detect_api_env(triton, model_dir, ports[1]), cwd=ROOT, timeout_s=90,
        ),
    ):  # fmt: skip
        model = get_json(f"{urls[0]}/model")
        assert model is not None and model["backend"] == "triton", model
        assert first.ready  # /readyz answered once the model was ready in Triton
        requests0 = _counter(triton, "nv_inference_request_success")
        executions0 = _counter(triton, "nv_inference_exec_count")
        async with aiohttp.ClientSession() as http:
            body = await _detect(http, urls[0], jpeg)
            assert "person" in {d["label"] for d in body["detections"]}  # type: ignore[attr-defined]

            async def client(url: str, n: int) -> None:
                for _ in range(n):
                    await _detect(http, url, jpeg)

            await asyncio.gather(client(urls[0], 12), client(urls[1], 12))
        requests = _counter(triton, "nv_inference_request_success") - requests0
        executions = _counter(triton, "nv_inference_exec_count") - executions0
    # Each process had one request in flight at most: fewer executions than requests means batches that
    # held a request from each process.
    assert requests == 25, requests
    assert executions < requests, (executions, requests)


async def test_live_peer_through_triton(
    triton: dict[str, int], model_dir: Path, photos: dict[str, np.ndarray]
) -> None:
    settings = loopback_settings(model_dir=model_dir, backend="triton", triton={"url": _url(triton)})
    async with running_server(settings) as server, aiohttp.ClientSession() as http:
        assert server.state.detector.info()["backend"] == "triton"
        peer = SyntheticPeer(server.url, photos["astronaut"], fps=30.0)
        try:
            await peer.connect(http)
            await peer.wait_until(
                lambda: sum(1 for m in peer.detections if m["detections"]) >= 10, 30, "10 results with boxes"
            )
            await peer.wait_for_frames(60, limit_s=20)
        finally:
            await peer.close()
    labels = {d["label"] for m in peer.detections for d in m["detections"]}
    assert "person" in labels, labels


@pytest.mark.slow
async def test_triton_killed_mid_stream_video_flows_errors_counted_and_it_recovers(
    triton_repo: Path, model_dir: Path, photos: dict[str, np.ndarray], tmp_path: Path
) -> None:
    ports = {"http": free_port(), "grpc": free_port(), "metrics": free_port()}
    settings = loopback_settings(
        model_dir=model_dir, backend="triton", triton={"url": _url(ports), "timeout_s": 2.0}
    )
    spec = ModelSpec.load(model_dir)
    bare = create_engine("triton", model_dir, spec, url=_url(ports), timeout_s=2.0)
    async with AsyncExitStack() as stack:
        first, _ = stack.enter_context(triton_process(triton_repo, tmp_path / "triton-1.log", ports=ports))
        server = await stack.enter_async_context(running_server(settings))
        http = await stack.enter_async_context(aiohttp.ClientSession())
        peer = SyntheticPeer(server.url, photos["astronaut"], fps=30.0)
        stack.push_async_callback(peer.close)
        await peer.connect(http)
        await peer.wait_until(lambda: len(peer.detections) >= 5, 30, "5 results before the kill")
        await asyncio.to_thread(bare.load)
        stack.callback(bare.close)
        first.proc.send_signal(signal.SIGKILL)  # no goodbye: as a crash or an OOM kill
        first.proc.wait(timeout=10)

        # A Triton that is not there is "unavailable" (the detect API's 503 engine_unavailable), not a bad request.
        with pytest.raises(EngineUnavailableError, match="Triton at"):
            await asyncio.to_thread(bare.infer, np.zeros((1, 3, 416, 416), np.float32))
        assert classify(EngineUnavailableError("down")) == (503, "engine_unavailable")

        registry = server.state.registry

        def failures() -> float:
            labels = {"error": "inference"}
            return registry.get_sample_value("rtdetect_live_inference_failures_total", labels) or 0.0

        frames_at_kill = len(peer.echoes)
        results_at_kill = len(peer.detections)
        # Readiness follows Triton's model-ready API: the server says it cannot serve, and why.
        down = await _wait_for_readyz(http, server.url, 503, limit_s=10)
        assert down["error"] == "engine_unavailable" and "Triton at" in down["detail"], down
        await peer.wait_until(lambda: failures() >= 3, 20, "failures counted while Triton is down")
        # The video keeps flowing meanwhile, without new results.
        await peer.wait_for_frames(frames_at_kill + 60, limit_s=20)
        assert len(peer.detections) <= results_at_kill + 2  # at most those already in flight
        with triton_process(triton_repo, tmp_path / "triton-2.log", ports=ports):
            back = len(peer.detections)
            await peer.wait_until(
                lambda: any(m["detections"] for m in peer.detections[back:]), 60, "results after the restart"
            )
            assert await asyncio.to_thread(bare.infer, np.zeros((1, 3, 416, 416), np.float32))  # reconnected
            assert (await _wait_for_readyz(http, server.url, 200, limit_s=10))["status"] == "ready"
        assert failures() >= 3


async def _wait_for_readyz(
    http: aiohttp.ClientSession, url: str, status: int, limit_s: float
) -> dict[str, object]:
    """The server's /readyz body once it answers `status` (readiness is cached for a second)."""
    deadline = time.monotonic() + limit_s
    while True:
        async with http.get(f"{url}/readyz") as resp:
            if resp.status == status:
                body: dict[str, object] = await resp.json()
                return body
        if time.monotonic() > deadline:
            raise AssertionError(f"/readyz did not answer {status} within {limit_s:g} s")
        await asyncio.sleep(0.2)  # polling readiness until a deadline


def test_make_triton_ports_do_not_collide_with_the_projects() -> None:
    from tools.triton import DEFAULT_PORTS

    assert not set(DEFAULT_PORTS.values()) & {8000, 8001, 8002, 8080, 8501, 9090, 3000, 50051}
    makefile = (ROOT / "Makefile").read_text()
    for name, port in DEFAULT_PORTS.items():
        assert re.search(rf"^TRITON_{name.upper()}_PORT\s+\?= {port}$", makefile, re.M), name


def test_triton_url_in_both_spellings(monkeypatch: pytest.MonkeyPatch) -> None:
    from detect_api.settings import Settings as ApiSettings
    from media_server.settings import Settings as MediaSettings

    monkeypatch.setenv("RTDETECT_BACKEND", "triton")
    monkeypatch.setenv("RTDETECT_TRITON_URL", "triton-a:8701")
    monkeypatch.setenv("RTDETECT_MEDIA_TRITON_URL", "triton-b:8701")
    assert ApiSettings().backend_options("triton").url == "triton-a:8701"  # type: ignore[attr-defined]
    assert MediaSettings().triton.url == "triton-b:8701"
    monkeypatch.setenv("RTDETECT_TRITON__URL", "nested:8701")  # the nested spelling wins
    monkeypatch.setenv("RTDETECT_TRITON__MAX_IN_FLIGHT", "3")
    options = ApiSettings().triton
    assert (options.url, options.max_in_flight) == ("nested:8701", 3)
