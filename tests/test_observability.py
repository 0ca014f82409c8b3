"""observability: the inference metrics (with an injected clock), the observer hook on the real batcher, and
the GPU sampler against a fake NVML (GPU path) and the real pynvml (no-GPU path)."""

from __future__ import annotations

import logging
import threading
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from inference.batcher import MicroBatcher
from observability.gpu import GpuSampler
from observability.metrics import InferenceMetrics, PrometheusObserver, RateWindow, new_registry, render
from tests.detect_api_support import nvml_works


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def value(registry: CollectorRegistry, name: str, labels: dict[str, str] | None = None) -> float | None:
    return registry.get_sample_value(name, labels or {})


# --- inference metrics -------------------------------------------------------------------------------------


def test_rate_window_counts_images_in_the_last_window_only() -> None:
    clock = Clock()
    window = RateWindow(5.0, clock)
    assert window.rate() == 0.0
    window.add(8)
    window.add(2)
    assert window.rate() == pytest.approx(10 / 5)
    clock.now += 3.0
    window.add(5)
    assert window.rate() == pytest.approx(15 / 5)
    clock.now += 2.5  # the first two batches are now 5.5 s old
    assert window.rate() == pytest.approx(5 / 5)
    clock.now += 10.0
    assert window.rate() == 0.0
    with pytest.raises(ValueError):
        RateWindow(0.0)


def test_inference_metrics_follow_batches_and_fps_decays_at_scrape_time() -> None:
    clock = Clock()
    registry = CollectorRegistry()
    metrics = InferenceMetrics(registry, fps_window_s=5.0, clock=clock)
    observer = PrometheusObserver(metrics)

    assert value(registry, "inference_fps") == 0.0
    observer.on_batch(4, 0.020)
    observer.on_batch(1, 0.004)
    observer.on_queue_depth(7)

    assert value(registry, "images_processed_total") == 5
    assert value(registry, "inference_latency_seconds_count") == 2
    assert value(registry, "inference_latency_seconds_sum") == pytest.approx(0.024)
    assert value(registry, "inference_latency_seconds_bucket", {"le": "0.005"}) == 1
    assert value(registry, "inference_batch_size_sum") == 5
    assert value(registry, "inference_batch_size_bucket", {"le": "1.0"}) == 1
    assert value(registry, "inference_batch_size_bucket", {"le": "4.0"}) == 2
    assert value(registry, "inference_queue_depth") == 7
    assert value(registry, "inference_fps") == pytest.approx(5 / 5.0)

    # No new batch: the gauge is recomputed on every scrape and falls to 0 once the window has passed.
    clock.now += 4.9
    assert value(registry, "inference_fps") == pytest.approx(1.0)
    clock.now += 0.2
    assert value(registry, "inference_fps") == 0.0
    assert b"inference_fps 0.0" in generate_latest(registry)
    assert value(registry, "images_processed_total") == 5  # counters do not decay


def test_model_info_and_exposition() -> None:
    registry = new_registry()
    metrics = InferenceMetrics(registry)
    metrics.set_model(model="nanodet-g", backend="onnxruntime", provider="CPUExecutionProvider")
    labels = {"model": "nanodet-g", "backend": "onnxruntime", "provider": "CPUExecutionProvider"}
    assert value(registry, "inference_model_info", labels) == 1.0
    body, content_type = render(registry)
    assert content_type.startswith("text/plain")
    # An app's own registry still carries the process metrics the dashboard's CPU and memory panels use.
    for name in (
        b"process_cpu_seconds_total",
        b"process_resident_memory_bytes",
        b"inference_latency_seconds",
    ):
        assert name in body


def test_each_metric_is_defined_once_per_registry() -> None:
    first, second = CollectorRegistry(), CollectorRegistry()
    a, b = InferenceMetrics(first), InferenceMetrics(second)  # two apps in one process: no collision
    a.record_batch(3, 0.01)
    assert value(first, "images_processed_total") == 3
    assert value(second, "images_processed_total") == 0
    assert b.fps is not a.fps
    with pytest.raises(ValueError, match="Duplicated"):
        InferenceMetrics(first)


async def test_the_real_batcher_reports_through_the_observer() -> None:
    registry = CollectorRegistry()
    metrics = InferenceMetrics(registry)
    batcher = MicroBatcher(
        lambda batch: {"y": batch * 2},
        max_batch_size=4,
        max_delay_ms=1.0,
        observer=PrometheusObserver(metrics),
    )
    await batcher.start()
    try:
        for i in range(3):
            out, n, _ = await batcher.submit(np.full((2,), i, np.float32))
            assert n == 1 and out["y"][0, 0] == 2 * i
    finally:
        await batcher.close()
    assert value(registry, "images_processed_total") == 3
    assert value(registry, "inference_batch_size_count") == 3
    assert value(registry, "inference_latency_seconds_count") == 3
    assert value(registry, "inference_queue_depth") == 0
    assert (value(registry, "inference_fps") or 0) > 0


# --- GPU sampler -------------------------------------------------------------------------------------------


class FakeNVMLError(Exception):
    pass


class FakeNVMLNotSupported(FakeNVMLError):
    pass


class FakeNvml:
    """The parts of pynvml the sampler uses: two GPUs, the second without a power reading."""

    NVMLError = FakeNVMLError
    NVML_TEMPERATURE_GPU = 0

    def __init__(self, *, init_error: Exception | None = None) -> None:
        self.init_error = init_error
        self.inits = 0
        self.shutdowns = 0
        self.utilization = [57, 3]
        self.used = [2 * 2**30, 2**20]
        self.reads = 0
        self.read_event = threading.Event()

    def nvmlInit(self) -> None:
        self.inits += 1
        if self.init_error is not None:
            raise self.init_error

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetName(self, handle: int) -> str | bytes:
        return "NVIDIA H100 80GB HBM3" if handle == 0 else b"NVIDIA L4"  # old pynvml returns bytes

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> Any:
        self.reads += 1
        self.read_event.set()
        return SimpleNamespace(gpu=self.utilization[handle], memory=10)

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:
        return SimpleNamespace(used=self.used[handle], total=80 * 2**30 if handle == 0 else 24 * 2**30)

    def nvmlDeviceGetTemperature(self, handle: int, sensor: int) -> int:
        assert sensor == self.NVML_TEMPERATURE_GPU
        return 41 + handle

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        if handle == 1:
            raise FakeNVMLNotSupported("Not Supported")
        return 123_456  # milliwatts


GPU0 = {"gpu": "0", "name": "NVIDIA H100 80GB HBM3"}
GPU1 = {"gpu": "1", "name": "NVIDIA L4"}


def test_gpu_sampler_exports_every_gauge_per_gpu() -> None:
    registry, nvml = CollectorRegistry(), FakeNvml()
    sampler = GpuSampler(registry, interval_s=60.0, nvml=nvml)
    assert b"gpu_" not in generate_latest(registry)  # nothing before start
    assert sampler.start() is True
    try:
        assert value(registry, "gpu_utilization_ratio", GPU0) == pytest.approx(0.57)
        assert value(registry, "gpu_utilization_ratio", GPU1) == pytest.approx(0.03)
        assert value(registry, "gpu_memory_used_bytes", GPU0) == 2 * 2**30
        assert value(registry, "gpu_memory_total_bytes", GPU1) == 24 * 2**30
        assert value(registry, "gpu_temperature_celsius", GPU0) == 41
        assert value(registry, "gpu_power_watts", GPU0) == pytest.approx(123.456)
        # GPU 1 cannot report power: its series is left out, not zero, and the others are unaffected.
        assert value(registry, "gpu_power_watts", GPU1) is None
        assert value(registry, "gpu_temperature_celsius", GPU1) == 42
    finally:
        sampler.stop()


def test_gpu_sampler_thread_keeps_the_values_fresh() -> None:
    registry, nvml = CollectorRegistry(), FakeNvml()
    sampler = GpuSampler(registry, interval_s=0.01, nvml=nvml)
    sampler.start()
    try:
        nvml.utilization = [99, 1]
        # A read after the change, then the start of the next sample: the one that read it is published.
        for _ in range(2):
            nvml.read_event.clear()
            assert nvml.read_event.wait(timeout=10), "the sampler thread stopped reading"
        assert value(registry, "gpu_utilization_ratio", GPU0) == pytest.approx(0.99)
    finally:
        sampler.stop()


def test_gpu_sampler_start_and_stop_are_idempotent() -> None:
    registry, nvml = CollectorRegistry(), FakeNvml()
    sampler = GpuSampler(registry, interval_s=60.0, nvml=nvml)
    assert sampler.start() and sampler.start()
    assert nvml.inits == 1 and sampler.running
    sampler.stop()
    sampler.stop()
    assert nvml.shutdowns == 1 and not sampler.running
    assert b"gpu_" not in generate_latest(registry)  # stopped: no stale values
    assert sampler.start()  # and it can start again
    assert nvml.inits == 2 and value(registry, "gpu_memory_total_bytes", GPU0) == 80 * 2**30
    sampler.stop()
    assert nvml.shutdowns == 2


def test_gpu_sampler_without_nvml_logs_once_and_exports_nothing(caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    nvml = FakeNvml(init_error=FakeNVMLError("NVML Shared Library Not Found"))
    sampler = GpuSampler(registry, nvml=nvml)
    with caplog.at_level(logging.INFO, logger="rtdetect.observability"):
        assert sampler.start() is False
        assert sampler.start() is False
        sampler.stop()
    assert not sampler.running and nvml.shutdowns == 0
    messages = [r for r in caplog.records if r.name == "rtdetect.observability"]
    assert len(messages) == 1 and messages[0].levelno == logging.INFO
    assert "Not Found" in messages[0].getMessage()
    assert b"gpu_" not in generate_latest(registry)


def test_gpu_sampler_with_the_real_pynvml_and_no_gpu(caplog: pytest.LogCaptureFixture) -> None:
    if nvml_works():
        pytest.skip("a GPU is visible here: the no-GPU path cannot be exercised with the real pynvml")
    registry = new_registry()
    sampler = GpuSampler(registry, interval_s=0.5)
    with caplog.at_level(logging.INFO, logger="rtdetect.observability"):
        assert sampler.start() is False
    sampler.stop()
    assert any(r.levelno == logging.INFO and "no NVIDIA GPU" in r.getMessage() for r in caplog.records)
    assert not any(r.levelno >= logging.WARNING for r in caplog.records)
    text = generate_latest(registry)
    assert b"gpu_" not in text and b"process_cpu_seconds_total" in text


@pytest.mark.gpu
def test_gpu_sampler_with_the_real_pynvml_on_a_gpu() -> None:
    if not nvml_works():
        pytest.skip("no NVIDIA GPU or driver here")
    registry = CollectorRegistry()
    sampler = GpuSampler(registry, interval_s=0.5)
    assert sampler.start()
    try:
        labels = {"gpu": "0", "name": sampler.samples()[0].name}
        assert (value(registry, "gpu_memory_total_bytes", labels) or 0) > 0
        assert 0.0 <= (value(registry, "gpu_utilization_ratio", labels) or 0) <= 1.0
    finally:
        sampler.stop()
