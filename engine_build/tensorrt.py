"""model.onnx -> model.engine with the TensorRT 10/11 builder.

An engine is only valid for the GPU model and TensorRT version that built it, so each engine gets a
sidecar (`model.engine.json`) recording both plus the ONNX file's hash; `engine_is_current` compares it
with the running machine and a mismatch means rebuild, never load.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from engine_build.fetch import sha256
from inference.engines.tensorrt import import_tensorrt
from inference.errors import BackendUnavailableError, ModelLoadError
from inference.preprocess import input_shape
from inference.spec import ModelSpec

log = logging.getLogger("rtdetect.engine_build")

ENGINE_FILE = "model.engine"


def gpu_identity() -> dict[str, str]:
    """Name and compute capability of GPU 0, read through pynvml (no CUDA context needed)."""
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        raise BackendUnavailableError(f"no NVIDIA GPU available for TensorRT: {e}") from e
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        name = pynvml.nvmlDeviceGetName(handle)
        major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
        return {
            "gpu": name if isinstance(name, str) else name.decode(),
            "compute_capability": f"{major}.{minor}",
        }
    finally:
        pynvml.nvmlShutdown()


def engine_metadata(onnx_path: Path, trt_version: str, fp16: bool, max_batch: int) -> dict[str, Any]:
    return {
        "tensorrt": trt_version,
        **gpu_identity(),
        "onnx_sha256": sha256(onnx_path),
        "fp16": fp16,
        "max_batch": max_batch,
    }


def engine_is_current(model_dir: Path, expected: dict[str, Any]) -> bool:
    engine, meta = model_dir / ENGINE_FILE, model_dir / f"{ENGINE_FILE}.json"
    if not engine.is_file() or not meta.is_file():
        return False
    try:
        recorded = json.loads(meta.read_text())
    except json.JSONDecodeError:
        return False
    stale = {k: (recorded.get(k), v) for k, v in expected.items() if recorded.get(k) != v}
    if stale:
        log.info("existing TensorRT engine does not match this machine (%s): rebuilding", stale)
    return not stale


def build_engine(model_dir: Path, *, fp16: bool = True, max_batch: int = 8, force: bool = False) -> Path:
    trt = import_tensorrt()
    spec = ModelSpec.load(model_dir)
    onnx_path = model_dir / spec.onnx_file
    if not onnx_path.is_file():
        raise ModelLoadError(f"{onnx_path} is missing: run `python -m engine_build export` first")
    meta = engine_metadata(onnx_path, trt.__version__, fp16, max_batch)
    engine_path = model_dir / ENGINE_FILE
    if not force and engine_is_current(model_dir, meta):
        log.info("TensorRT engine %s is current for %s", engine_path, meta["gpu"])
        return engine_path

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: networks are always explicit-batch
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelLoadError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 2 << 30)
    if fp16 and builder.platform_has_fast_fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    shape = input_shape(spec)  # the served input's layout (a uint8-nhwc model's differs from the network's)
    profile = builder.create_optimization_profile()
    profile.set_shape(spec.input_name, (1, *shape), (max(1, max_batch // 2), *shape), (max_batch, *shape))
    config.add_optimization_profile(profile)
    log.info("building TensorRT engine for %s (fp16=%s, batch 1..%d); this takes a minute or two",
             meta["gpu"], fp16, max_batch)  # fmt: skip
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ModelLoadError("TensorRT failed to build the engine (see the TensorRT log above)")
    tmp = engine_path.with_suffix(".engine.tmp")
    tmp.write_bytes(bytes(serialized))
    tmp.replace(engine_path)
    (model_dir / f"{ENGINE_FILE}.json").write_text(json.dumps(meta, indent=2) + "\n")
    log.info("TensorRT engine written to %s in %.0f s", engine_path, time.perf_counter() - start)
    return engine_path
