"""Native TensorRT backend (TensorRT 10/11 name-based tensor API, buffers through cuda-python).

Everything GPU-related is imported inside load(): on a machine without TensorRT or a GPU this module imports
fine and the engine fails with BackendUnavailableError only when it is chosen.
"""

from __future__ import annotations

import ctypes
import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from inference.engines.options import BackendOptions, TensorRTOptions
from inference.errors import BackendUnavailableError, InferenceError, ModelLoadError
from inference.preprocess import input_shape
from inference.spec import ModelSpec

log = logging.getLogger("rtdetect.inference")

DEFAULT_ENGINE_FILE = "model.engine"
TRT_PRECISIONS = ("fp32", "fp16", "int8")


def _sidecar_precision(path: Path) -> str | None:
    """The precision `engine_build tensorrt` recorded beside an engine (its `precision`, else its fp16 flag)."""
    try:
        meta = json.loads(path.with_name(path.name + ".json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict):
        return None
    if isinstance(meta.get("precision"), str):
        return str(meta["precision"])
    return "fp16" if meta.get("fp16") else "fp32"


def engine_file_for(model_dir: Path, precision: str) -> Path | None:
    """An engine per precision: `model.<precision>.engine`, else `model.engine` if its sidecar says so."""
    per_precision = model_dir / f"model.{precision}.engine"
    if per_precision.is_file():
        return per_precision
    default = model_dir / DEFAULT_ENGINE_FILE
    if default.is_file() and _sidecar_precision(default) == precision:
        return default
    return None


def import_tensorrt() -> Any:
    try:
        import tensorrt
    except ImportError as e:
        raise BackendUnavailableError(
            "TensorRT is not installed: use the Docker image, or pip install tensorrt from NVIDIA's index "
            "(pip install --extra-index-url https://pypi.nvidia.com tensorrt) on a machine with an NVIDIA GPU"
        ) from e
    return tensorrt


def _import_cudart() -> Any:
    try:
        from cuda.bindings import runtime
    except ImportError:
        try:  # cuda-python before 12.6 exposed the runtime API as cuda.cudart
            from cuda import cudart as runtime
        except ImportError as e:
            raise BackendUnavailableError(
                "the TensorRT backend needs cuda-python for GPU buffers: pip install cuda-python"
            ) from e
    return runtime


class _Cuda:
    """Thin checked wrapper over cuda-python's runtime API, whose calls return (error, *values)."""

    def __init__(self, runtime: Any) -> None:
        self.rt = runtime

    def __call__(self, result: Any) -> Any:
        err, *values = result if isinstance(result, tuple) else (result,)
        if err != self.rt.cudaError_t.cudaSuccess:
            _, name = self.rt.cudaGetErrorName(err)
            raise RuntimeError(f"CUDA error {name.decode() if isinstance(name, bytes) else name}")
        if not values:
            return None
        return values[0] if len(values) == 1 else tuple(values)


@dataclass
class _Binding:
    name: str
    dtype: np.dtype[Any]
    max_shape: tuple[int, ...]
    device: int  # device pointer
    host_ptr: int  # pinned host pointer
    host: np.ndarray  # flat pinned view, sized for max_shape

    @property
    def itemsize(self) -> int:
        return int(self.dtype.itemsize)


def _gpu_name(cuda: _Cuda, device_id: int) -> str:
    err, props = cuda.rt.cudaGetDeviceProperties(device_id)
    if err != cuda.rt.cudaError_t.cudaSuccess or props is None:
        return f"GPU {device_id}"
    name = props.name
    if isinstance(name, bytes):
        name = name.decode(errors="replace")
    return str(name).rstrip("\x00") or f"GPU {device_id}"


class TensorRTEngine:
    backend = "tensorrt"

    def __init__(
        self,
        model_dir: Path,
        spec: ModelSpec,
        *,
        engine_file: str | None = None,
        device_id: int = 0,
        profile_index: int = 0,
        precision: str = "fp32",
    ) -> None:
        if precision not in TRT_PRECISIONS:
            raise BackendUnavailableError(
                f"the tensorrt backend runs {list(TRT_PRECISIONS)}, not {precision}"
            )
        model_dir = Path(model_dir)
        if engine_file is not None:
            self.engine_path = model_dir / engine_file
        else:
            self.engine_path = (
                engine_file_for(model_dir, precision) or model_dir / f"model.{precision}.engine"
            )
        self.spec = spec
        self.precision = precision
        self.device_id = device_id
        self.profile_index = profile_index
        self.provider = "not loaded"
        self.max_batch_size = 1
        self.min_batch_size = 1
        # One execution context and one stream: calls are serialised. Parallel runs would need a context
        # (and optimisation profile) per worker; a GPU gets its concurrency from batching instead.
        self.max_concurrency = 1
        self.on_gpu = True
        self._cuda: _Cuda | None = None
        self._engine: Any = None
        self._context: Any = None
        self._stream: Any = None
        self._input: _Binding | None = None
        self._outputs: list[_Binding] = []
        # One execution context and one set of buffers: batches must not interleave.
        self._lock = threading.Lock()

    @classmethod
    def supported_precisions(
        cls, model_dir: Path, spec: ModelSpec, options: BackendOptions
    ) -> tuple[str, ...]:
        """The precisions with an engine file built here (each engine is built for one precision)."""
        assert isinstance(options, TensorRTOptions)
        import_tensorrt()
        if options.engine_file is not None:
            path = model_dir / options.engine_file
            recorded = _sidecar_precision(path) if path.is_file() else None
            return (recorded,) if recorded in TRT_PRECISIONS else ()
        return tuple(p for p in TRT_PRECISIONS if engine_file_for(model_dir, p) is not None)

    def load(self) -> None:
        trt = import_tensorrt()
        cuda = _Cuda(_import_cudart())
        err, count = cuda.rt.cudaGetDeviceCount()
        if err != cuda.rt.cudaError_t.cudaSuccess or count == 0:
            raise BackendUnavailableError(f"TensorRT needs an NVIDIA GPU, and CUDA finds none here ({err})")
        if self.device_id >= count:
            raise BackendUnavailableError(f"GPU {self.device_id} requested but only {count} present")
        if not self.engine_path.is_file():
            raise ModelLoadError(
                f"no TensorRT engine at {self.engine_path}; build one on this GPU with "
                "`python -m engine_build tensorrt` (engines are specific to a GPU and TensorRT version)"
            )
        try:
            cuda(cuda.rt.cudaSetDevice(self.device_id))
            runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
            engine = runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        except RuntimeError as e:
            raise ModelLoadError(f"cannot load TensorRT engine {self.engine_path}: {e}") from e
        if engine is None:
            raise ModelLoadError(
                f"TensorRT could not deserialize {self.engine_path}: built by another TensorRT version or "
                "for another GPU? Rebuild it here with `python -m engine_build tensorrt`"
            )
        self._cuda, self._engine = cuda, engine
        try:
            self._setup(trt, cuda, engine)
        except BaseException:
            self.close()
            raise
        self.provider = f"TensorRT {trt.__version__} on {_gpu_name(cuda, self.device_id)}"
        log.info(
            "%s loaded %s (batch %d..%d)",
            self.provider,
            self.engine_path,
            self.min_batch_size,
            self.max_batch_size,
        )

    def _setup(self, trt: Any, cuda: _Cuda, engine: Any) -> None:
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if inputs != [self.spec.input_name]:
            raise ModelLoadError(f"engine inputs {inputs} do not match the spec's {self.spec.input_name!r}")
        name = inputs[0]
        shape = tuple(engine.get_tensor_shape(name))
        if shape[0] == -1:
            lo, _, hi = engine.get_tensor_profile_shape(name, self.profile_index)
            self.min_batch_size, self.max_batch_size = int(lo[0]), int(hi[0])
        else:
            self.min_batch_size = self.max_batch_size = int(shape[0])
        expected = input_shape(self.spec)
        if -1 not in shape[1:] and tuple(shape[1:]) != expected:
            raise ModelLoadError(f"engine input shape {shape} does not fit the spec's {expected}")
        # The engine's input type follows its ONNX (float32, or uint8 with the normalisation in the graph).
        dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
        if dtype != np.dtype(self.spec.input_dtype):
            raise ModelLoadError(
                f"engine input {name} is {dtype} but model.json says input_format {self.spec.input_format!r}: "
                "rebuild it from the model.onnx this spec describes"
            )

        context = engine.create_execution_context()
        if context is None:
            raise ModelLoadError("TensorRT could not create an execution context (out of GPU memory?)")
        self._context = context
        self._stream = cuda(cuda.rt.cudaStreamCreate())
        if engine.num_optimization_profiles > 1:
            context.set_optimization_profile_async(self.profile_index, self._stream)
        # Size every buffer for the largest batch once, so infer() never allocates.
        max_in = (self.max_batch_size, *expected)
        context.set_input_shape(name, max_in)
        self._input = self._allocate(trt, cuda, engine, name, max_in)
        for out in outputs:  # appended one by one so close() frees whatever was allocated on failure
            self._outputs.append(self._allocate(trt, cuda, engine, out, tuple(context.get_tensor_shape(out))))
        for binding in (self._input, *self._outputs):
            context.set_tensor_address(binding.name, binding.device)

    @staticmethod
    def _allocate(trt: Any, cuda: _Cuda, engine: Any, name: str, shape: tuple[int, ...]) -> _Binding:
        if any(d < 0 for d in shape):
            raise ModelLoadError(f"tensor {name} has unresolved shape {shape}")
        dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
        count = int(np.prod(shape))
        nbytes = max(1, count * dtype.itemsize)
        device = int(cuda(cuda.rt.cudaMalloc(nbytes)))
        # Pinned host memory: page-locked copies are faster and truly asynchronous.
        host_ptr = int(cuda(cuda.rt.cudaMallocHost(nbytes)))
        raw = (ctypes.c_ubyte * nbytes).from_address(host_ptr)
        host = np.frombuffer(raw, dtype=dtype, count=count)
        return _Binding(name, dtype, shape, device, host_ptr, host)

    def warmup(self, batch_sizes: tuple[int, ...] = (1,)) -> None:
        shape = input_shape(self.spec)
        for n in batch_sizes:
            n = min(max(n, self.min_batch_size), self.max_batch_size)
            self.infer(np.zeros((n, *shape), dtype=self.spec.input_dtype))

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if self._context is None or self._input is None or self._cuda is None:
            raise InferenceError("the TensorRT engine is not loaded")
        n = batch.shape[0]
        if not self.min_batch_size <= n <= self.max_batch_size:
            raise InferenceError(
                f"batch of {n} outside the engine's profile {self.min_batch_size}..{self.max_batch_size}"
            )
        cuda, rt, context, inp = self._cuda, self._cuda.rt, self._context, self._input
        h2d, d2h = rt.cudaMemcpyKind.cudaMemcpyHostToDevice, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        with self._lock:
            try:
                # The current device is per thread, and the batcher calls from its own thread.
                cuda(rt.cudaSetDevice(self.device_id))
                if not context.set_input_shape(inp.name, tuple(batch.shape)):
                    raise InferenceError(f"TensorRT rejected input shape {batch.shape}")
                count = batch.size
                np.copyto(inp.host[:count].reshape(batch.shape), batch, casting="same_kind")
                cuda(rt.cudaMemcpyAsync(inp.device, inp.host_ptr, count * inp.itemsize, h2d, self._stream))
                if not context.execute_async_v3(self._stream):
                    raise InferenceError("TensorRT execute_async_v3 failed (see the TensorRT log)")
                shapes = {}
                for out in self._outputs:
                    shape = tuple(context.get_tensor_shape(out.name))
                    shapes[out.name] = shape
                    nbytes = int(np.prod(shape)) * out.itemsize
                    cuda(rt.cudaMemcpyAsync(out.host_ptr, out.device, nbytes, d2h, self._stream))
                cuda(rt.cudaStreamSynchronize(self._stream))
            except RuntimeError as e:
                raise InferenceError(f"TensorRT failed on a batch of shape {batch.shape}: {e}") from e
            # Copies: the pinned buffers are reused by the next batch.
            return {
                out.name: out.host[: int(np.prod(shapes[out.name]))].reshape(shapes[out.name]).copy()
                for out in self._outputs
            }

    def close(self) -> None:
        with self._lock:
            cuda = self._cuda
            if cuda is not None:
                for binding in [b for b in (self._input, *self._outputs) if b is not None]:
                    cuda(cuda.rt.cudaFree(binding.device))
                    cuda(cuda.rt.cudaFreeHost(binding.host_ptr))
                if self._stream is not None:
                    cuda(cuda.rt.cudaStreamDestroy(self._stream))
            self._input, self._outputs, self._stream = None, [], None
            self._context = None
            self._engine = None
