"""Typed options per engine backend, one pydantic model each (Frigate's per-detector config idea).

Plain pydantic, no engine library imported: the settings validate them at start-up, before any backend is
loaded. Unknown keys are refused (`extra="forbid"`), so a typo fails with the backend's name in the error
instead of silently doing nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import NoDecode

from inference.envlist import split_list

PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "bf16", "int8")


class BackendOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OnnxRuntimeOptions(BackendOptions):
    # Execution providers in order of preference ("CUDAExecutionProvider,CPUExecutionProvider" or JSON);
    # None lets the engine pick the best this build has.
    providers: Annotated[list[str] | None, NoDecode] = None
    intra_op_threads: int = Field(default=0, ge=0)  # 0: onnxruntime's own default (one per core)
    # Idle worker threads busy-wait by default in onnxruntime. Off, the media server measured the same
    # results and latency at 116 % instead of 164 % of a core for one peer: the cores go to decoding, HTTP
    # and the video codecs instead.
    allow_spinning: bool = False
    trt_cache_dir: str | None = None  # TensorrtExecutionProvider only: where its built engines are cached
    trt_fp16: bool = False  # TensorrtExecutionProvider only

    @field_validator("providers", mode="before")
    @classmethod
    def _parse_providers(cls, value: Any) -> Any:
        return split_list(value) or None  # empty: the engine's own choice


class OpenVinoOptions(BackendOptions):
    device: str = "CPU"  # "CPU", "GPU", "GPU.1", ... (Intel GPUs): as `openvino.Core().available_devices`
    hint: Literal["latency", "throughput"] = "latency"  # OpenVINO's PERFORMANCE_HINT
    # Infer requests in flight = the engine's max_concurrency. 0: 2 with the latency hint (what the batcher
    # runs on a CPU), OpenVINO's optimal number with the throughput hint.
    num_requests: int = Field(default=0, ge=0)
    threads: int = Field(default=0, ge=0)  # INFERENCE_NUM_THREADS; 0: OpenVINO's default (all cores)
    cache_dir: str | None = None  # compiled-model cache (CACHE_DIR): a faster second start


class TensorRTOptions(BackendOptions):
    # None: by precision, `model.<precision>.engine`, else `model.engine` when its sidecar says that precision.
    engine_file: str | None = None
    device_id: int = Field(default=0, ge=0)
    profile_index: int = Field(default=0, ge=0)


class TorchOptions(BackendOptions):
    device: str = "cpu"
    threads: int | None = Field(default=None, ge=1)


class TritonOptions(BackendOptions):
    """A Triton Inference Server shared by many processes (inference/engines/triton.py)."""

    # Triton's gRPC endpoint, host:port (`make triton` listens on 127.0.0.1:8701).
    url: str = "127.0.0.1:8701"
    model_name: str = "rtdetect"  # as `python -m engine_build triton-repo --name` wrote it
    model_version: str = ""  # "": the latest version Triton has ready
    timeout_s: float = Field(default=5.0, gt=0.0)  # per request, Triton's queue included
    # Requests in flight from this process (the engine's max_concurrency): Triton batches across them and
    # across processes, so this bounds what one process contributes to a batch.
    max_in_flight: int = Field(default=8, ge=1, le=256)
    # "system": tensors through POSIX shared memory (Triton on the same host, sharing /dev/shm); "none":
    # inside the gRPC messages (any host).
    shared_memory: Literal["none", "system"] = "none"
    load_timeout_s: float = Field(default=30.0, gt=0.0)  # at start: wait this long for the model to be ready


OPTIONS: dict[str, type[BackendOptions]] = {
    "onnxruntime": OnnxRuntimeOptions,
    "openvino": OpenVinoOptions,
    "tensorrt": TensorRTOptions,
    "torch": TorchOptions,
    "triton": TritonOptions,
}


class BackendOptionsError(ValueError):
    """Options that do not fit their backend (a ValueError, so pydantic reports it as a settings error)."""


def validate_options(backend: str, options: BackendOptions | Mapping[str, Any] | None) -> BackendOptions:
    """`options` as the backend's typed model; unknown or ill-typed keys fail naming the backend."""
    try:
        model = OPTIONS[backend]
    except KeyError as e:
        raise BackendOptionsError(
            f"unknown engine backend {backend!r}; choose one of {sorted(OPTIONS)}"
        ) from e
    if isinstance(options, model):
        return options
    if isinstance(options, BackendOptions):
        raise BackendOptionsError(
            f"the {backend} backend takes {model.__name__}, not {type(options).__name__}"
        )
    data = dict(options or {})
    unknown = sorted(set(data) - set(model.model_fields))
    if unknown:
        raise BackendOptionsError(
            f"unknown option(s) {unknown} for the {backend} backend; it takes {sorted(model.model_fields)}"
        )
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise BackendOptionsError(f"invalid options for the {backend} backend: {e}") from e


def int8_onnx_file(onnx_file: str) -> str:
    """The INT8 (QDQ) model's file name beside the FP32 one: model.onnx -> model.int8.onnx."""
    stem = onnx_file[: -len(".onnx")] if onnx_file.endswith(".onnx") else onnx_file
    return f"{stem}.int8.onnx"
