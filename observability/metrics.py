"""The inference metrics, defined once, on a registry the caller owns (one registry per app).

The core reports through `inference.observer.InferenceObserver`; `PrometheusObserver` turns those events
into these metrics. Names are unprefixed and label-free so that the detect API and the media server export
the same series; what runs (model, backend, provider) is on the `inference_model_info` info metric, which a
query can join on when it needs it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

# One engine call: about 1 ms for a small model on a GPU, up to seconds for a large batch on a slow CPU.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
# HTTP request durations by handler (prometheus-fastapi-instrumentator's http_request_duration_seconds):
# fine enough below 100 ms for a p99 on the dashboard, few enough to keep one series per bucket and route.
HTTP_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
FPS_WINDOW_S = 5.0

__all__ = [
    "BATCH_SIZE_BUCKETS",
    "CONTENT_TYPE_LATEST",
    "FPS_WINDOW_S",
    "HTTP_LATENCY_BUCKETS",
    "LATENCY_BUCKETS",
    "GrpcMetrics",
    "InferenceMetrics",
    "PrometheusObserver",
    "RateWindow",
    "new_registry",
    "render",
]


def new_registry() -> CollectorRegistry:
    """An app's own registry, with the process, platform and GC metrics the global registry would have.

    A fresh CollectorRegistry has none of them, and the dashboard's CPU and memory panels read
    `process_cpu_seconds_total` and `process_resident_memory_bytes`.
    """
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The registry in the Prometheus text format, and its content type (for aiohttp or Starlette)."""
    return generate_latest(registry), CONTENT_TYPE_LATEST


class RateWindow:
    """Events per second over the last `window_s` seconds, from the timestamps of recent batches.

    Thread-safe: batches are recorded on the event loop, scrapes may run in a worker thread.
    """

    def __init__(self, window_s: float = FPS_WINDOW_S, clock: Callable[[], float] = time.monotonic) -> None:
        if window_s <= 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        self.window_s = window_s
        self._clock = clock
        self._events: deque[tuple[float, int]] = deque()
        self._total = 0
        self._lock = threading.Lock()

    def add(self, count: int) -> None:
        now = self._clock()
        with self._lock:
            self._events.append((now, count))
            self._total += count
            self._expire(now)

    def rate(self) -> float:
        now = self._clock()
        with self._lock:
            self._expire(now)
            # Divide by the whole window, not by the time since the first event: a single image just after
            # start-up is 0.2/s over 5 s, not thousands per second.
            return self._total / self.window_s

    def _expire(self, now: float) -> None:
        cutoff = now - self.window_s
        while self._events and self._events[0][0] <= cutoff:
            _, count = self._events.popleft()
            self._total -= count


class InferenceMetrics:
    """Every inference metric, registered on `registry`. Two apps with two registries never collide."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        fps_window_s: float = FPS_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.latency = Histogram(
            "inference_latency_seconds",
            "Duration of one engine call (one batch), in seconds.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.images = Counter(
            "images_processed_total",
            "Images that went through the engine.",
            registry=registry,
        )
        self.batch_size = Histogram(
            "inference_batch_size",
            "Images per engine call.",
            buckets=BATCH_SIZE_BUCKETS,
            registry=registry,
        )
        self.queue_depth = Gauge(
            "inference_queue_depth",
            "Images waiting in the micro-batcher's queue.",
            registry=registry,
        )
        self.window = RateWindow(fps_window_s, clock)
        self.fps = Gauge(
            "inference_fps",
            f"Images inferred per second over the last {fps_window_s:g} s, in this process.",
            registry=registry,
        )
        # Computed at scrape time, so the value decays to 0 while idle instead of freezing at the last batch.
        self.fps.set_function(self.window.rate)
        self.model_info = Info(
            "inference_model",
            "The model this process serves: name, engine backend and the provider that runs it.",
            registry=registry,
        )

    def set_model(self, *, model: str, backend: str, provider: str) -> None:
        self.model_info.info({"model": model, "backend": backend, "provider": provider})

    def record_batch(self, batch_size: int, inference_seconds: float) -> None:
        self.latency.observe(inference_seconds)
        self.images.inc(batch_size)
        self.batch_size.observe(batch_size)
        self.window.add(batch_size)

    def record_queue_depth(self, depth: int) -> None:
        self.queue_depth.set(depth)


class PrometheusObserver:
    """`inference.observer.InferenceObserver` backed by `InferenceMetrics`."""

    def __init__(self, metrics: InferenceMetrics) -> None:
        self.metrics = metrics

    def on_batch(self, batch_size: int, inference_seconds: float) -> None:
        self.metrics.record_batch(batch_size, inference_seconds)

    def on_queue_depth(self, depth: int) -> None:
        self.metrics.record_queue_depth(depth)


class GrpcMetrics:
    """The detect API's gRPC metrics, on the same registry (and /metrics) as its HTTP ones.

    Named after go-grpc-prometheus's server metrics, which dashboards and alerts often expect. `grpc_method`
    takes only the server's own method names (unknown ones are refused before they are counted) and
    `grpc_code` only the status code names: both bounded.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.handled = Counter(
            "grpc_server_handled_total",
            "gRPC calls completed, by method and status code.",
            ["grpc_service", "grpc_method", "grpc_type", "grpc_code"],
            registry=registry,
        )
        self.handling = Histogram(
            "grpc_server_handling_seconds",
            "Duration of unary gRPC calls until the response or error, in seconds.",
            ["grpc_service", "grpc_method", "grpc_type"],
            buckets=HTTP_LATENCY_BUCKETS,
            registry=registry,
        )
        self.stream_frames = Counter(
            "grpc_stream_frames_received_total",
            "Frames received on DetectStream calls.",
            registry=registry,
        )
        self.stream_dropped = Counter(
            "grpc_stream_frames_dropped_total",
            "DetectStream frames replaced by a newer frame (latest frame wins) or refused by a full queue.",
            registry=registry,
        )
        self.stream_latency = Histogram(
            "grpc_stream_result_latency_seconds",
            "DetectStream: from a frame's arrival to its result being sent, in seconds.",
            buckets=HTTP_LATENCY_BUCKETS,
            registry=registry,
        )
