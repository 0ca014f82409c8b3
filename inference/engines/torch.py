"""PyTorch backend: runs the unconverted model from its factory and state dict (parity checks, debugging).

torch is imported only in load(): serving never needs it.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from inference.errors import BackendUnavailableError, InferenceError, ModelLoadError
from inference.preprocess import input_shape
from inference.spec import ModelSpec

log = logging.getLogger("rtdetect.inference")

MAX_BATCH = 64


def import_factory(target: str) -> Any:
    """'package.module:callable' -> the callable."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ModelLoadError(f"torch_source.factory must look like 'package.module:callable', got {target!r}")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ModelLoadError(f"cannot import factory {target!r}: {e}") from e


class TorchEngine:
    backend = "torch"

    def __init__(
        self,
        model_dir: Path,
        spec: ModelSpec,
        *,
        device: str = "cpu",
        threads: int | None = None,
        precision: str = "fp32",
    ) -> None:
        if precision != "fp32":
            raise BackendUnavailableError(f"the torch backend runs fp32 only, not {precision}")
        self.model_dir = Path(model_dir)
        self.spec = spec
        self.precision = precision
        self.device = device
        self.threads = threads
        self.provider = "not loaded"
        self.max_batch_size = MAX_BATCH
        self.max_concurrency = 1  # the baseline: one forward at a time (see _lock)
        self.on_gpu = False
        self._torch: Any = None
        self._model: Any = None
        self._device: Any = None
        self._output_names: list[str] = []
        self._lock = threading.Lock()

    @classmethod
    def supported_precisions(cls, model_dir: Path, spec: ModelSpec, options: object) -> tuple[str, ...]:
        """fp32: the reference the other engines are compared with."""
        if importlib.util.find_spec("torch") is None:
            raise BackendUnavailableError("torch is not installed")
        return ("fp32",)

    def load(self) -> None:
        try:
            import torch
        except ImportError as e:
            raise BackendUnavailableError(
                "torch is not installed: pip install 'rtdetect[build]' (torch is only needed for this backend)"
            ) from e
        source = self.spec.torch_source
        if source is None:
            raise ModelLoadError(f"model spec {self.spec.name!r} has no torch_source to build the model from")
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        try:
            device = torch.device(self.device)
        except RuntimeError as e:
            raise BackendUnavailableError(f"invalid torch device {self.device!r}: {e}") from e
        if device.type == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailableError(f"torch device {self.device!r} requested but no CUDA GPU is usable")

        factory = import_factory(source.factory)
        kwargs: dict[str, Any] = dict(source.kwargs)
        for key in source.path_kwargs:
            if key not in kwargs:
                raise ModelLoadError(f"torch_source.path_kwargs names {key!r}, which is not in kwargs")
            kwargs[key] = str(self.model_dir / str(kwargs[key]))
        weights = self.model_dir / source.weights
        if not weights.is_file():
            raise ModelLoadError(f"no weights at {weights}")
        try:
            model = factory(**kwargs)
            if not isinstance(model, torch.nn.Module):
                raise ModelLoadError(f"{source.factory} returned {type(model).__name__}, not an nn.Module")
            state = torch.load(weights, map_location=device, weights_only=True)
            if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
                state = state["state_dict"]  # the usual training-checkpoint layout
            model.load_state_dict(state, strict=True)
        except ModelLoadError:
            raise
        except Exception as e:  # factories and unpickling raise anything; all mean "cannot load"
            raise ModelLoadError(f"cannot build {source.factory} with {weights}: {e}") from e
        # The decoder spec names the outputs unless the model does (output_names on the module).
        names = getattr(model, "output_names", None)
        self._output_names = list(names) if names else list(self.spec.decoder.output_names)
        if self.spec.input_format != "float":
            from inference.engines.torch_uint8 import Uint8Input

            model = Uint8Input(model, self.spec)  # the same uint8 input as the exported graph
        self._model = model.to(device).eval()
        self._torch = torch
        self._device = device
        self.on_gpu = device.type == "cuda"
        self.provider = f"torch {torch.__version__} on {device}"
        log.info("torch engine built %s from %s on %s", source.factory, weights, device)

    @property
    def model(self) -> Any:
        """The loaded nn.Module (for export and parity checks)."""
        if self._model is None:
            raise InferenceError("the torch engine is not loaded")
        return self._model

    @property
    def output_names(self) -> list[str]:
        return list(self._output_names)

    def warmup(self, batch_sizes: tuple[int, ...] = (1,)) -> None:
        shape = input_shape(self.spec)
        for n in batch_sizes:
            self.infer(np.zeros((min(n, self.max_batch_size), *shape), dtype=self.spec.input_dtype))

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if self._model is None:
            raise InferenceError("the torch engine is not loaded")
        torch = self._torch
        try:
            # One call at a time: modules are not guaranteed re-entrant and threads would only contend.
            with self._lock, torch.inference_mode():
                x = torch.from_numpy(np.ascontiguousarray(batch, dtype=self.spec.input_dtype)).to(
                    self._device
                )
                outs = self._model(x)
                return self._to_numpy(outs)
        except InferenceError:
            raise
        except Exception as e:  # torch raises RuntimeError, ValueError, ... for bad inputs
            raise InferenceError(f"torch failed on a batch of shape {batch.shape}: {e}") from e

    def _to_numpy(self, outs: Any) -> dict[str, np.ndarray]:
        torch = self._torch
        if isinstance(outs, dict):
            return {str(k): self._array(v) for k, v in outs.items()}
        if isinstance(outs, torch.Tensor):
            outs = (outs,)
        if not isinstance(outs, Sequence) or len(outs) != len(self._output_names):
            got = len(outs) if isinstance(outs, Sequence) else type(outs).__name__
            raise InferenceError(f"model returned {got} outputs, expected {self._output_names}")
        return {n: self._array(o) for n, o in zip(self._output_names, outs, strict=True)}

    def _array(self, t: Any) -> np.ndarray:
        """float32 for any float tensor (fp16/bf16 included); integer outputs (labels) keep their type."""
        t = t.detach()
        return (t.float() if t.is_floating_point() else t).cpu().numpy()

    def close(self) -> None:
        self._model = None
