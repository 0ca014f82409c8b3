"""OpenVINO backend: Intel's runtime on x86 CPUs (bf16 on AMX / AVX512-BF16, INT8 on VNNI / AMX) and Intel GPUs.

openvino is imported only in load() and supported_precisions(): without it this module still imports and
the backend fails with BackendUnavailableError only when it is chosen.
"""

from __future__ import annotations

import logging
import queue
from pathlib import Path
from typing import Any

import numpy as np

from inference.engines.options import BackendOptions, OpenVinoOptions, int8_onnx_file
from inference.errors import BackendUnavailableError, InferenceError, ModelLoadError
from inference.gate import cpu_identity
from inference.preprocess import input_shape
from inference.spec import ModelSpec

log = logging.getLogger("rtdetect.inference")

# Largest batch offered when the model's batch axis is dynamic (as the onnxruntime backend).
DYNAMIC_MAX_BATCH = 64
# Infer requests with the latency hint when num_requests is 0: the batcher's CPU default runs two batches
# in flight, and each needs its own request (a request is not re-entrant).
LATENCY_REQUESTS = 2
# The settings' names -> OpenVINO's element types for INFERENCE_PRECISION_HINT. int8 runs the QDQ model;
# the ops it leaves in float run in f32, so the accuracy gate measures the quantisation alone.
_HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16", "int8": "f32"}
_FROM_OV = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}
# Device capabilities (OPTIMIZATION_CAPABILITIES) each precision needs.
_CAPABILITY = {"fp32": "FP32", "bf16": "BF16", "fp16": "FP16", "int8": "INT8"}


def _import_openvino() -> Any:
    try:
        import openvino
    except ImportError as e:
        raise BackendUnavailableError("openvino is not installed: pip install 'rtdetect[cpu]'") from e
    return openvino


def _capabilities(core: Any, device: str) -> set[str]:
    if device.split(".")[0] not in {d.split(".")[0] for d in core.available_devices}:
        raise BackendUnavailableError(
            f"OpenVINO device {device!r} is not present here (available: {core.available_devices})"
        )
    try:
        return {str(c) for c in core.get_property(device, "OPTIMIZATION_CAPABILITIES")}
    except RuntimeError as e:
        raise BackendUnavailableError(f"OpenVINO cannot query device {device!r}: {e}") from e


class OpenVinoEngine:
    backend = "openvino"

    def __init__(
        self,
        model_dir: Path,
        spec: ModelSpec,
        *,
        device: str = "CPU",
        hint: str = "latency",
        num_requests: int = 0,
        threads: int = 0,
        cache_dir: str | None = None,
        precision: str = "fp32",
    ) -> None:
        if precision not in _HINTS:
            raise BackendUnavailableError(f"the openvino backend runs {sorted(_HINTS)}, not {precision}")
        self.model_path = Path(model_dir) / (
            int8_onnx_file(spec.onnx_file) if precision == "int8" else spec.onnx_file
        )
        self.spec = spec
        self.device = device
        self.hint = hint
        self.num_requests = num_requests
        self.threads = threads
        self.cache_dir = cache_dir
        self.requested_precision = precision
        self.precision = precision  # replaced by what the compiled model reports once loaded
        self.provider = "not loaded"
        self.max_batch_size = 1
        self.max_concurrency = 1
        self.on_gpu = device.upper().startswith("GPU")
        self._compiled: Any = None
        # A pool of infer requests: each call takes one, so concurrent calls never share one.
        self._requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._input_dtype: np.dtype[Any] = np.dtype(np.float32)
        self._output_names: list[str] = []

    @classmethod
    def supported_precisions(
        cls, model_dir: Path, spec: ModelSpec, options: BackendOptions
    ) -> tuple[str, ...]:
        """By the device's capabilities; int8 also needs the quantised model beside model.onnx."""
        assert isinstance(options, OpenVinoOptions)
        ov = _import_openvino()
        caps = _capabilities(ov.Core(), options.device)
        have_int8 = (model_dir / int8_onnx_file(spec.onnx_file)).is_file()
        return tuple(
            p
            for p in ("fp32", "bf16", "fp16", "int8")
            if _CAPABILITY[p] in caps and (p != "int8" or have_int8)
        )

    def load(self) -> None:
        ov = _import_openvino()
        import openvino.properties as props
        import openvino.properties.hint as hints

        if not self.model_path.is_file():
            what = (
                "python -m engine_build quantize"
                if self.requested_precision == "int8"
                else "python -m engine_build export"
            )
            raise ModelLoadError(f"no ONNX model at {self.model_path}; run `{what}`")
        core = ov.Core()
        caps = _capabilities(core, self.device)
        if _CAPABILITY[self.requested_precision] not in caps:
            raise BackendUnavailableError(
                f"OpenVINO on {self.device} cannot run {self.requested_precision} here (capabilities {sorted(caps)})"
            )
        config: dict[Any, Any] = {
            hints.performance_mode: (
                hints.PerformanceMode.THROUGHPUT
                if self.hint == "throughput"
                else hints.PerformanceMode.LATENCY
            ),
            hints.inference_precision: getattr(ov.Type, _HINTS[self.requested_precision]),
        }
        if self.threads:
            config[props.inference_num_threads] = self.threads
        if self.cache_dir:
            config[props.cache_dir] = self.cache_dir
        try:
            model = core.read_model(str(self.model_path))
            compiled = core.compile_model(model, self.device, config)
        except RuntimeError as e:
            raise ModelLoadError(f"OpenVINO cannot compile {self.model_path} for {self.device}: {e}") from e

        names = [i.get_any_name() for i in compiled.inputs]
        if names != [self.spec.input_name]:
            raise ModelLoadError(
                f"{self.model_path} inputs {names} do not match the spec's {self.spec.input_name!r}"
            )
        port = compiled.input(0)
        batch_dim = port.get_partial_shape()[0]
        self.max_batch_size = batch_dim.get_length() if batch_dim.is_static else DYNAMIC_MAX_BATCH
        self._input_dtype = np.dtype(port.get_element_type().to_dtype())
        self._output_names = [o.get_any_name() for o in compiled.outputs]

        wanted = self.num_requests
        if not wanted:
            optimal = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
            wanted = optimal if self.hint == "throughput" else max(LATENCY_REQUESTS, 1)
        for _ in range(wanted):
            self._requests.put(compiled.create_infer_request())
        self.max_concurrency = wanted
        self._compiled = compiled

        used = compiled.get_property(hints.inference_precision).get_type_name()
        # int8 runs the quantised model; its float remainder runs at `used`.
        self.precision = "int8" if self.requested_precision == "int8" else _FROM_OV.get(used, used)
        full_name = str(core.get_property(self.device, "FULL_DEVICE_NAME"))
        self.provider = (
            f"OpenVINO {ov.__version__.split('-')[0]} on {self.device} ({full_name}), {self.precision}"
        )
        _, flags = cpu_identity()
        log.info(
            "openvino %s compiled %s on %s (%s): precision %s (asked %s, inference precision %s), "
            "hint %s, %d infer request(s), max batch %d; CPU features %s",
            ov.__version__.split("-")[0],
            self.model_path.name,
            self.device,
            full_name,
            self.precision,
            self.requested_precision,
            used,
            self.hint,
            wanted,
            self.max_batch_size,
            " ".join(
                f for f in flags if f in ("avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
            )
            or "(no VNNI, BF16 or AMX)",
        )

    def warmup(self, batch_sizes: tuple[int, ...] = (1,)) -> None:
        shape = input_shape(self.spec)
        for n in batch_sizes:
            self.infer(np.zeros((min(n, self.max_batch_size), *shape), dtype=self._input_dtype))

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if self._compiled is None:
            raise InferenceError("the openvino engine is not loaded")
        if batch.shape[0] > self.max_batch_size:
            raise InferenceError(f"batch of {batch.shape[0]} exceeds the engine's max {self.max_batch_size}")
        request = self._requests.get()
        try:
            # share_outputs=False (the default): the results are copies, safe after the request is reused.
            results = request.infer(
                {0: np.ascontiguousarray(batch, dtype=self._input_dtype)}, share_inputs=True
            )
            return {name: results[i] for i, name in enumerate(self._output_names)}
        except RuntimeError as e:
            raise InferenceError(f"openvino failed on a batch of shape {batch.shape}: {e}") from e
        finally:
            self._requests.put(request)

    def close(self) -> None:
        while True:
            try:
                self._requests.get_nowait()
            except queue.Empty:
                break
        self._compiled = None
