"""The Detector both servers use: pre-process -> shared micro-batcher -> engine -> decoder + NMS.

HTTP requests and WebRTC peers call `detect` concurrently; their tensors meet in one MicroBatcher, so they
share engine calls. Pre-processing and decoding run in worker threads, inference in the batcher's own thread:
the event loop only schedules.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from inference.autoselect import SelectedEngine
from inference.batcher import MicroBatcher
from inference.decoders import Decoder, create_decoder
from inference.engines import Engine
from inference.errors import InferenceError
from inference.observer import InferenceObserver
from inference.preprocess import Transform, preprocess, preprocess_one
from inference.settings import ServingSettings
from inference.spec import ModelSpec
from inference.types import DetectionResult, DetectParams, Timings

log = logging.getLogger("rtdetect.inference")

_DEFAULT_PARAMS = DetectParams()

# Defaults by where the engine runs (docs/benchmarks.md compares them on /detect). A CPU gains nothing
# per image from batching (ONNX Runtime here: 13.0 ms per image at batch 1, 13.6 at batch 4), but two
# runs in flight keep its cores busy through every hand-off between requests; a GPU gains from batching.
CPU_WORKERS, CPU_BATCH = 2, 1
GPU_WORKERS, GPU_BATCH = 1, 8


@dataclass(frozen=True, slots=True)
class Prepared:
    """One image ready for the batcher: its input tensor and the way back to its pixels."""

    tensor: np.ndarray
    transform: Transform
    preprocess_ms: float


@dataclass(frozen=True, slots=True)
class RawOutput:
    """One image's engine outputs (batch axis of 1), before decoding."""

    outputs: dict[str, np.ndarray]
    batch_size: int  # how many images shared the engine call
    inference_s: float
    wait_ms: float  # submit -> outputs back (queueing included)


def build_engine(settings: ServingSettings, spec: ModelSpec) -> Engine:
    """The engine the settings ask for: an explicit backend and precision, or the automatic choice
    (inference/autoselect.py), made when the engine loads; either way under the accuracy gate."""
    return SelectedEngine(
        settings.model_dir,
        spec,
        backend=settings.backend,
        precision=settings.precision,
        options=settings.all_backend_options(),
        time_per_candidate_s=settings.autoselect_time_s,
    )


def _auto(value: int | None, name: str) -> int | None:
    if value is not None and value < 1:
        raise ValueError(f"{name} must be >= 1 (or None for the device's default), got {value}")
    return value


class Detector:
    def __init__(
        self,
        engine: Engine,
        spec: ModelSpec,
        *,
        max_batch_size: int | None = None,
        max_delay_ms: float = 2.0,
        max_queue: int = 256,
        workers: int | None = None,
        observer: InferenceObserver | None = None,
    ) -> None:
        """`max_batch_size` and `workers` (batches in flight at once) default by the engine's device,
        see CPU_WORKERS/GPU_WORKERS; either is capped by what the loaded engine accepts."""
        self.engine = engine
        self.spec = spec
        self.decoder: Decoder = create_decoder(spec)
        self.ready = False
        self._batch_setting = _auto(max_batch_size, "max_batch_size")
        self._workers_setting = _auto(workers, "workers")
        self._max_delay_ms = max_delay_ms
        self._max_queue = max_queue
        self._observer = observer
        self._batcher: MicroBatcher | None = None
        # Resolved once the engine is loaded (its device and limits are known then).
        self._batch = self._batch_setting or 1
        self._workers = self._workers_setting or 1

    @property
    def max_batch_size(self) -> int:
        """The batch limit in force (the setting before the engine is loaded)."""
        return self._batch if self._batch_setting is None or self.ready else self._batch_setting

    @property
    def workers(self) -> int:
        """Batches that may be in the engine at once."""
        return self._workers if self._workers_setting is None or self.ready else self._workers_setting

    def _resolve_sizes(self) -> None:
        engine = self.engine
        batch = self._batch_setting or (GPU_BATCH if engine.on_gpu else CPU_BATCH)
        workers = self._workers_setting or (GPU_WORKERS if engine.on_gpu else CPU_WORKERS)
        self._batch = max(1, min(batch, engine.max_batch_size))
        self._workers = max(1, min(workers, engine.max_concurrency))
        if self._workers_setting is not None and self._workers < workers:
            log.warning(
                "the %s engine runs %d batch(es) at a time: %d inference workers asked for, %d used",
                engine.backend,
                engine.max_concurrency,
                workers,
                self._workers,
            )

    async def start(self) -> None:
        """Load and warm up the engine (in a thread: it takes seconds), then start the batcher."""
        if self.ready:
            return
        await asyncio.to_thread(self._load)
        self._batcher = MicroBatcher(
            self.engine.infer,
            max_batch_size=self._batch,
            max_delay_ms=self._max_delay_ms,
            max_queue=self._max_queue,
            workers=self._workers,
            observer=self._observer,
        )
        await self._batcher.start()
        self.ready = True
        score = getattr(self.engine, "gate_score", None)
        log.info(
            "detector ready: model %s, backend %s, precision %s (accuracy gate mAP %s), provider %s (%s), "
            "batch <= %d, delay <= %.1f ms, %d batch(es) in flight",
            self.spec.name,
            self.engine.backend,
            getattr(self.engine, "precision", "fp32"),
            "not measured" if score is None else f"{score:.3f}",
            self.engine.provider,
            "GPU" if self.engine.on_gpu else "CPU",
            self._batch,
            self._max_delay_ms,
            self._workers,
        )

    def _load(self) -> None:
        log.info("loading model %s with the %s backend", self.spec.name, self.engine.backend)
        self.engine.load()
        self._resolve_sizes()
        batch = self._batch
        # Warm the shapes serving will use, so the first requests do not pay for lazy initialisation.
        self.engine.warmup((1, batch) if batch > 1 else (1,))

    async def close(self) -> None:
        """Stop the batcher (pending requests fail with InferenceError), then release the engine."""
        self.ready = False
        batcher, self._batcher = self._batcher, None
        if batcher is not None:
            await batcher.close()
        await asyncio.to_thread(self.engine.close)

    async def serving_problem(self) -> str | None:
        """None while the engine can serve; otherwise why not. An engine in another process (Triton) can go
        away after start and says so (`serving_problem`); one in this process serves once loaded."""
        probe = getattr(self.engine, "serving_problem", None)
        return None if probe is None else await asyncio.to_thread(probe)

    def info(self) -> dict[str, Any]:
        return {
            "name": self.spec.name,
            "backend": self.engine.backend,
            # getattr: engines built outside the registry (test fakes, wrappers) may not say; fp32 is the
            # precision every model is exported in.
            "precision": getattr(self.engine, "precision", "fp32"),
            "gate_score": getattr(self.engine, "gate_score", None),
            "provider": self.engine.provider,
            "input_size": [self.spec.input_width, self.spec.input_height],
            "classes": list(self.spec.class_names),
            "max_batch_size": self.max_batch_size,
            "max_delay_ms": self._max_delay_ms,
            "workers": self.workers,
        }

    async def detect(self, image: np.ndarray, params: DetectParams = _DEFAULT_PARAMS) -> DetectionResult:
        """Detections for one HxWx3 uint8 BGR image, in its own pixel coordinates.

        Raises InvalidImageError for a malformed image, OverloadedError when the batcher's queue is full and
        InferenceError when the engine fails or the detector is not started.
        """
        self._require_batcher()
        return await self.detect_prepared(await asyncio.to_thread(self.prepare, image), params)

    def prepare(self, image: np.ndarray) -> Prepared:
        """Pre-process one image (blocking; any thread). A caller that already works in a thread (the
        detect API decodes uploads in one) prepares there and calls `detect_prepared`: one thread hop
        fewer per request, which at concurrency 1 is half a millisecond on a busy 2-core machine."""
        t0 = time.perf_counter()
        tensor, transform = preprocess_one(image, self.spec)
        return Prepared(tensor, transform, (time.perf_counter() - t0) * 1e3)

    async def infer_prepared(self, prepared: Prepared) -> RawOutput:
        """The engine's outputs for a prepared image, through the shared batcher. With `prepare` and
        `finish` this is `detect` in three steps, for a caller that runs the blocking two in a thread of
        its own, fused with its other work (the live pipeline: three thread round trips per frame)."""
        batcher = self._require_batcher()
        t0 = time.perf_counter()
        outputs, batch_size, inference_s = await batcher.submit(prepared.tensor)
        return RawOutput(outputs, batch_size, inference_s, (time.perf_counter() - t0) * 1e3)

    def finish(
        self, prepared: Prepared, raw: RawOutput, params: DetectParams = _DEFAULT_PARAMS
    ) -> DetectionResult:
        """Decode + NMS of `infer_prepared`'s outputs (blocking; any thread)."""
        t0 = time.perf_counter()
        detections = self.decoder.decode(raw.outputs, [prepared.transform], params)[0]
        post = (time.perf_counter() - t0) * 1e3
        timings = Timings(
            preprocess=prepared.preprocess_ms,
            inference=raw.inference_s * 1e3,
            postprocess=post,
            total=prepared.preprocess_ms + raw.wait_ms + post,
        )
        transform = prepared.transform
        return DetectionResult(detections, transform.src_w, transform.src_h, raw.batch_size, timings)

    async def detect_prepared(
        self, prepared: Prepared, params: DetectParams = _DEFAULT_PARAMS
    ) -> DetectionResult:
        """`detect` for an image already through `prepare`."""
        batcher = self._require_batcher()
        transform = prepared.transform
        t1 = time.perf_counter()
        outputs, batch_size, inference_s = await batcher.submit(prepared.tensor)
        t2 = time.perf_counter()
        detections = (await asyncio.to_thread(self.decoder.decode, outputs, [transform], params))[0]
        t3 = time.perf_counter()
        timings = Timings(
            preprocess=prepared.preprocess_ms,
            inference=inference_s * 1e3,
            postprocess=(t3 - t2) * 1e3,
            total=prepared.preprocess_ms + (t3 - t1) * 1e3,
        )
        return DetectionResult(
            detections=detections,
            width=transform.src_w,
            height=transform.src_h,
            batch_size=batch_size,
            timings=timings,
        )

    def _require_batcher(self) -> MicroBatcher:
        if self._batcher is None:
            raise InferenceError("the detector is not started")
        return self._batcher

    def detect_batch_sync(
        self, images: Sequence[np.ndarray], params: DetectParams = _DEFAULT_PARAMS
    ) -> list[DetectionResult]:
        """The direct path without the batcher (benchmarks, parity tests): blocking, in the caller's thread.

        The engine must be loaded (start() or engine.load()). Chunks of engine.max_batch_size images.
        """
        if not images:
            return []
        results: list[DetectionResult] = []
        step = max(1, self.engine.max_batch_size)
        for start in range(0, len(images), step):
            chunk = images[start : start + step]
            t0 = time.perf_counter()
            batch, transforms = preprocess(chunk, self.spec)
            t1 = time.perf_counter()
            outputs = self.engine.infer(batch)
            t2 = time.perf_counter()
            decoded = self.decoder.decode(outputs, transforms, params)
            t3 = time.perf_counter()
            n = len(chunk)
            # Per-image share of each stage; inference is one call for the whole chunk.
            for transform, detections in zip(transforms, decoded, strict=True):
                timings = Timings(
                    preprocess=(t1 - t0) * 1e3 / n,
                    inference=(t2 - t1) * 1e3,
                    postprocess=(t3 - t2) * 1e3 / n,
                    total=(t3 - t0) * 1e3,
                )
                results.append(
                    DetectionResult(
                        detections=detections,
                        width=transform.src_w,
                        height=transform.src_h,
                        batch_size=n,
                        timings=timings,
                    )
                )
        return results
