"""The detector as the media server sees it, and how it is built from settings."""

from __future__ import annotations

from collections.abc import Callable
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

    async def serving_problem(self) -> str | None: ...

    async def detect(self, image: np.ndarray, params: DetectParams = ...) -> DetectionResult: ...


def build_detector(
    settings: Settings,
    observer: InferenceObserver | None = None,
    wrap_engine: Callable[[Engine], Engine] | None = None,
) -> DetectorLike:
    """The engine and the shared Detector from settings; not started (the app's startup does that).

    `wrap_engine` lets a benchmark or a test put something around the engine (an artificial delay)."""
    # The batcher and the engine choice live there; imported when a server starts.
    from inference.pipeline import Detector, build_engine

    spec = ModelSpec.load(settings.model_dir)
    engine: Engine = build_engine(settings, spec)  # backend=auto: chosen when the detector starts
    if wrap_engine is not None:
        engine = wrap_engine(engine)
    detector: DetectorLike = Detector(engine, spec, **settings.detector_kwargs(), observer=observer)
    return detector
