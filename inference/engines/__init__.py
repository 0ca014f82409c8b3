"""Engine backends behind one protocol, registered by name and imported lazily.

A missing TensorRT, OpenVINO (or torch) fails only when that backend is chosen. Each backend has its typed
options (inference/engines/options.py), validated before the engine is built, and says which precisions it
can run on this machine.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from inference.engines.options import (
    OPTIONS,
    PRECISIONS,
    BackendOptions,
    BackendOptionsError,
    validate_options,
)
from inference.errors import BackendUnavailableError
from inference.spec import ModelSpec

BACKENDS: dict[str, str] = {
    "onnxruntime": "inference.engines.onnxruntime:OnnxRuntimeEngine",
    "openvino": "inference.engines.openvino:OpenVinoEngine",
    "tensorrt": "inference.engines.tensorrt:TensorRTEngine",
    "torch": "inference.engines.torch:TorchEngine",
    "triton": "inference.engines.triton:TritonEngine",
}
assert set(BACKENDS) == set(OPTIONS), "every backend registers its options beside it"

__all__ = [
    "BACKENDS",
    "OPTIONS",
    "PRECISIONS",
    "BackendOptions",
    "BackendOptionsError",
    "Engine",
    "create_engine",
    "engine_precisions",
    "validate_options",
]


class Engine(Protocol):
    """Moves tensors: an input batch in, named raw outputs (leading batch axis) out."""

    backend: str
    provider: str  # what actually runs it, e.g. "CPUExecutionProvider", "TensorRT 10.9 on NVIDIA H100"
    precision: str  # fp32 | fp16 | bf16 | int8: what runs once loaded (the device may narrow a request)
    max_batch_size: int  # largest batch `infer` accepts
    max_concurrency: int  # how many `infer` calls may run at once from different threads
    on_gpu: bool  # where inference runs once loaded: decides the batching defaults

    def load(self) -> None: ...

    def warmup(self, batch_sizes: tuple[int, ...] = (1,)) -> None: ...

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


def _engine_class(backend: str) -> Any:
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
    return getattr(module, class_name)


def _options(backend: str, options: BackendOptions | Mapping[str, Any] | None, extra: dict[str, Any]) -> Any:
    if backend not in OPTIONS:
        raise BackendUnavailableError(f"unknown engine backend {backend!r}; choose one of {sorted(BACKENDS)}")
    if extra:
        base = (
            options.model_dump(exclude_unset=True)
            if isinstance(options, BackendOptions)
            else dict(options or {})
        )
        options = {**base, **extra}
    return validate_options(backend, options)


def create_engine(
    backend: str,
    model_dir: Path,
    spec: ModelSpec,
    options: BackendOptions | Mapping[str, Any] | None = None,
    *,
    precision: str = "fp32",
    **extra: Any,
) -> Engine:
    """Instantiate (but do not load) the engine registered as `backend`, with validated options.

    `extra` keyword options are merged over `options` (handy in tests and tools); unknown ones raise
    BackendOptionsError naming the backend.
    """
    validated = _options(backend, options, extra)
    if precision not in PRECISIONS:
        raise BackendUnavailableError(f"unknown precision {precision!r}; choose one of {list(PRECISIONS)}")
    engine: Engine = _engine_class(backend)(model_dir, spec, precision=precision, **validated.model_dump())
    return engine


def engine_precisions(
    backend: str,
    model_dir: Path,
    spec: ModelSpec,
    options: BackendOptions | Mapping[str, Any] | None = None,
) -> tuple[str, ...]:
    """The precisions `backend` can run for this model on this machine (BackendUnavailableError when it
    cannot run here at all: library or device missing)."""
    validated = _options(backend, options, {})
    precisions: tuple[str, ...] = _engine_class(backend).supported_precisions(
        Path(model_dir), spec, validated
    )
    return precisions
