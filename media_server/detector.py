"""The detector as the media server sees it, and how it is built from settings."""

from __future__ import annotations

import time
from typing import Any, Protocol

import numpy as np

from inference.engines import Engine
from inference.observer import InferenceObserver
from inference.spec import ModelSpec
from inference.types import DetectionResult, DetectParams
from media_server.settings import Settings


class DetectorLike(Protocol):
    """What the media server needs of `inference.pipeline.Detector` (tests pass small fakes)."""

    @property
    def ready(self) -> bool: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def info(self) -> dict[str, Any]: ...

    async def detect(self, image: np.ndarray, params: DetectParams = ...) -> DetectionResult: ...


class SlowEngine:
    """Wraps an engine and sleeps in every call: simulates an engine slower than the frame interval
    (tests and benchmarks only; see `Settings.engine_delay_ms`)."""

    def __init__(self, inner: Engine, delay_s: float) -> None:
        self._inner = inner
        self._delay_s = delay_s
        self.backend = inner.backend
        self.precision = inner.precision
        self.gate_score: float | None = None
        self.provider = self._describe()
        self.max_batch_size = inner.max_batch_size
        self.max_concurrency = inner.max_concurrency
        self.on_gpu = inner.on_gpu

    def _describe(self) -> str:
        return f"{self._inner.provider} (+{self._delay_s * 1e3:.0f} ms artificial delay)"

    def load(self) -> None:
        self._inner.load()
        # Both are known only once the inner engine is loaded.
        self.provider = self._describe()
        self.backend, self.precision = self._inner.backend, self._inner.precision
        self.gate_score = getattr(self._inner, "gate_score", None)
        self.max_batch_size = self._inner.max_batch_size
        self.max_concurrency = self._inner.max_concurrency
        self.on_gpu = self._inner.on_gpu

    def warmup(self, batch_sizes: tuple[int, ...] = (1,)) -> None:
        self._inner.warmup(batch_sizes)

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        # A blocking sleep, like a real slow engine: it holds the batcher's worker, not the event loop.
        time.sleep(self._delay_s)
        return self._inner.infer(batch)

    def close(self) -> None:
        self._inner.close()


def build_detector(settings: Settings, observer: InferenceObserver | None = None) -> DetectorLike:
    """The engine and the shared Detector from settings; not started (the app's startup does that)."""
    # The batcher and the engine choice live there; imported when a server starts.
    from inference.pipeline import Detector, build_engine

    spec = ModelSpec.load(settings.model_dir)
    engine: Engine = build_engine(settings, spec)  # backend=auto: chosen when the detector starts
    if settings.engine_delay_ms > 0:
        engine = SlowEngine(engine, settings.engine_delay_ms / 1e3)
    detector: DetectorLike = Detector(engine, spec, **settings.detector_kwargs(), observer=observer)
    return detector
