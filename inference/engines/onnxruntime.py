"""ONNX Runtime backend: TensorRT or CUDA execution providers where present, the CPU provider elsewhere."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from inference.engines.options import BackendOptions, OnnxRuntimeOptions, int8_onnx_file
from inference.errors import BackendUnavailableError, InferenceError, ModelLoadError
from inference.preprocess import input_shape
from inference.spec import ModelSpec

log = logging.getLogger("rtdetect.inference")

# ONNX Runtime's input type strings -> numpy: a uint8-input model (normalisation in its graph) takes uint8.
_INPUT_TYPES: dict[str, np.dtype[Any]] = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(uint8)": np.dtype(np.uint8),
}
# Largest batch offered when the model's batch axis is dynamic; the batcher's own limit is usually lower.
DYNAMIC_MAX_BATCH = 64
MAX_CONCURRENT_RUNS = 64
_GPU_PROVIDERS = frozenset({"TensorrtExecutionProvider", "CUDAExecutionProvider"})
_PREFERRED = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


class OnnxRuntimeEngine:
    backend = "onnxruntime"

    def __init__(
        self,
        model_dir: Path,
        spec: ModelSpec,
        *,
        providers: Sequence[str] | None = None,
        intra_op_threads: int = 0,
        allow_spinning: bool = True,
        trt_cache_dir: str | None = None,
        trt_fp16: bool = False,
        model_file: str | None = None,
        precision: str = "fp32",
    ) -> None:
        if precision not in ("fp32", "int8"):
            raise BackendUnavailableError(f"the onnxruntime backend runs fp32 or int8, not {precision}")
        # int8: the statically quantised (QDQ) model beside the FP32 one; its QDQ pairs run as INT8 kernels.
        default_file = int8_onnx_file(spec.onnx_file) if precision == "int8" else spec.onnx_file
        self.model_path = Path(model_dir) / (model_file or default_file)
        self.spec = spec
        self.precision = precision
        self.requested_providers = tuple(providers) if providers is not None else None
        self.intra_op_threads = intra_op_threads
        self.allow_spinning = allow_spinning
        self.trt_cache_dir = trt_cache_dir
        self.trt_fp16 = trt_fp16
        self.provider = "not loaded"
        self.max_batch_size = 1
        # InferenceSession.run is thread-safe: concurrent runs share the weights, each with its own buffers.
        self.max_concurrency = MAX_CONCURRENT_RUNS
        self.on_gpu = False
        self._session: Any = None
        self._input_name = spec.input_name
        self._input_dtype = np.dtype(spec.input_dtype)  # the session's own, once loaded
        self._output_names: list[str] = []

    @classmethod
    def supported_precisions(
        cls, model_dir: Path, spec: ModelSpec, options: BackendOptions
    ) -> tuple[str, ...]:
        """fp32, plus int8 once `python -m engine_build quantize` has written the INT8 model."""
        assert isinstance(options, OnnxRuntimeOptions)
        try:
            import onnxruntime  # noqa: F401
        except ImportError as e:
            raise BackendUnavailableError("onnxruntime is not installed") from e
        if (model_dir / int8_onnx_file(spec.onnx_file)).is_file():
            return ("fp32", "int8")
        return ("fp32",)

    def load(self) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise BackendUnavailableError(
                "onnxruntime is not installed: pip install 'rtdetect[cpu]' (or [gpu] for onnxruntime-gpu)"
            ) from e
        if not self.model_path.is_file():
            raise ModelLoadError(f"no ONNX model at {self.model_path}; run `python -m engine_build export`")

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = self.intra_op_threads
        # Idle worker threads busy-wait for the next call by default: fastest for a bare benchmark, but a
        # server that also decodes images and speaks HTTP on the same cores wants those cycles back.
        options.add_session_config_entry(
            "session.intra_op.allow_spinning", "1" if self.allow_spinning else "0"
        )
        providers = self._providers(ort.get_available_providers())
        try:
            session = ort.InferenceSession(str(self.model_path), sess_options=options, providers=providers)
        except Exception as e:  # onnxruntime raises plain Exception subclasses (InvalidProtobuf, ...)
            raise ModelLoadError(f"onnxruntime cannot load {self.model_path}: {e}") from e

        inputs = {i.name: i for i in session.get_inputs()}
        if self._input_name not in inputs:
            raise ModelLoadError(
                f"{self.model_path} has no input {self._input_name!r} (inputs: {sorted(inputs)})"
            )
        input_type = inputs[self._input_name].type
        dtype = _INPUT_TYPES.get(input_type)
        if dtype is None or dtype != np.dtype(self.spec.input_dtype):
            raise ModelLoadError(
                f"{self.model_path} takes {input_type} but model.json says input_format "
                f"{self.spec.input_format!r} ({self.spec.input_dtype}): export it again with the spec it serves"
            )
        self._input_dtype = dtype
        batch_dim = inputs[self._input_name].shape[0]
        # A symbolic (str) or unknown (None) leading dimension means any batch size.
        self.max_batch_size = batch_dim if isinstance(batch_dim, int) and batch_dim > 0 else DYNAMIC_MAX_BATCH
        self._output_names = [o.name for o in session.get_outputs()]
        self._session = session
        self.provider = session.get_providers()[0]
        self.on_gpu = self.provider in _GPU_PROVIDERS
        log.info(
            "onnxruntime %s loaded %s with %s, %s (max batch %d)",
            ort.__version__,
            self.model_path,
            self.provider,
            self.precision,
            self.max_batch_size,
        )

    def _providers(self, available: Sequence[str]) -> list[Any]:
        """The providers to ask for, best first, restricted to what this onnxruntime build has."""
        wanted = self.requested_providers or _PREFERRED
        chosen = [p for p in wanted if p in available]
        missing = [p for p in wanted if p not in available]
        if self.requested_providers is not None and missing:
            log.warning("onnxruntime here lacks %s (available: %s)", missing, list(available))
        if not chosen:
            raise BackendUnavailableError(
                f"none of the onnxruntime providers {list(wanted)} is available here (have {list(available)})"
            )
        result: list[Any] = []
        for name in chosen:
            if name == "TensorrtExecutionProvider":
                trt_options: dict[str, Any] = {"trt_fp16_enable": self.trt_fp16}
                if self.trt_cache_dir:
                    # Building TensorRT engines takes minutes; the cache makes it a one-time cost.
                    trt_options |= {
                        "trt_engine_cache_enable": True,
                        "trt_engine_cache_path": self.trt_cache_dir,
                    }
                result.append((name, trt_options))
            else:
                result.append(name)
        return result

    def warmup(self, batch_sizes: tuple[int, ...] = (1,)) -> None:
        shape = input_shape(self.spec)
        for n in batch_sizes:
            self.infer(np.zeros((min(n, self.max_batch_size), *shape), dtype=self._input_dtype))

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if self._session is None:
            raise InferenceError("the onnxruntime engine is not loaded")
        if batch.shape[0] > self.max_batch_size:
            raise InferenceError(f"batch of {batch.shape[0]} exceeds the engine's max {self.max_batch_size}")
        feed = {self._input_name: np.ascontiguousarray(batch, dtype=self._input_dtype)}
        try:
            results = self._session.run(self._output_names, feed)
        except Exception as e:  # onnxruntime's errors derive straight from Exception
            raise InferenceError(f"onnxruntime failed on a batch of shape {batch.shape}: {e}") from e
        return dict(zip(self._output_names, results, strict=True))

    def close(self) -> None:
        self._session = None
