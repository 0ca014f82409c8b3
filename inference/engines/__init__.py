"""Engine backends behind one protocol, registered by name and imported lazily.

A missing TensorRT (or torch) fails only when that backend is chosen.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from inference.errors import BackendUnavailableError
from inference.spec import ModelSpec

BACKENDS: dict[str, str] = {
    "onnxruntime": "inference.engines.onnxruntime:OnnxRuntimeEngine",
    "tensorrt": "inference.engines.tensorrt:TensorRTEngine",
    "torch": "inference.engines.torch:TorchEngine",
}


class Engine(Protocol):
    """Moves tensors: a float32 batch in, named raw outputs (leading batch axis) out."""

    backend: str
    provider: str  # what actually runs it, e.g. "CPUExecutionProvider", "TensorRT 10.9 on NVIDIA H100"
    max_batch_size: int  # largest batch `infer` accepts
    max_concurrency: int  # how many `infer` calls may run at once from different threads
    on_gpu: bool  # where inference runs once loaded: decides the batching defaults

    def load(self) -> None: ...

    def warmup(self, batch_sizes: tuple[int, ...] = (1,)) -> None: ...

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


def create_engine(backend: str, model_dir: Path, spec: ModelSpec, **options: Any) -> Engine:
    """Instantiate (but do not load) the engine registered as `backend`."""
    try:
        target = BACKENDS[backend]
    except KeyError as e:
        raise BackendUnavailableError(
            f"unknown engine backend {backend!r}; choose one of {sorted(BACKENDS)}"
        ) from e
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise BackendUnavailableError(f"engine backend {backend!r} cannot be imported here: {e}") from e
    engine: Engine = getattr(module, class_name)(model_dir, spec, **options)
    return engine
