"""model.onnx -> model.<precision>.engine (fp32, fp16, int8) with the TensorRT 10/11 builder.

An engine is only valid for the GPU model and TensorRT version that built it, so each engine gets a
sidecar (`model.<precision>.engine.json`) recording both plus the ONNX file's hash, its precision and, for
INT8, how it was calibrated; `engine_is_current` compares it with the running machine and a mismatch means
rebuild, never load.

INT8 is calibrated with an entropy calibrator (IInt8EntropyCalibrator2) over the same calibration photos
as the CPU INT8 model (engine_build/evalset.py), pre-processed as serving does. Its cache
(`model.int8.calib`) is reused only while its key (model hash, photos, input format, TensorRT version)
matches. A TensorRT without implicit calibration (it is deprecated in 10 and gone later) builds INT8
from a QDQ model instead (explicit quantisation, signed activations as TensorRT wants).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine_build.evalset import Photo, calibration_photos, names_sha256
from engine_build.fetch import sha256
from inference.engines.tensorrt import import_tensorrt
from inference.errors import BackendUnavailableError, ModelLoadError
from inference.preprocess import input_shape, preprocess
from inference.spec import ModelSpec

log = logging.getLogger("rtdetect.engine_build")

PRECISIONS = ("fp32", "fp16", "int8")
CALIBRATION_CACHE = "model.int8.calib"
QDQ_FOR_TENSORRT = "model.int8-s8.onnx"  # explicit-quantisation fallback: int8 activations (TensorRT's Q/DQ)
CALIBRATION_BATCH = 1  # every calibration photo used, whatever their number


def engine_file(precision: str) -> str:
    """The engine's file name for a precision: model.fp16.engine, ... (what the tensorrt backend looks for)."""
    if precision not in PRECISIONS:
        raise ValueError(f"TensorRT precisions are {list(PRECISIONS)}, not {precision!r}")
    return f"model.{precision}.engine"


def sidecar_path(engine_path: Path) -> Path:
    return engine_path.with_name(engine_path.name + ".json")


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


def engine_metadata(
    onnx_sha256: str,
    trt_version: str,
    gpu: dict[str, str],
    *,
    precision: str,
    max_batch: int,
    input_format: str = "float",
    calibration: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What makes an engine valid: a change to any of it means a rebuild."""
    return {
        "tensorrt": trt_version,
        **gpu,
        "onnx_sha256": onnx_sha256,
        "precision": precision,
        "fp16": precision == "fp16",  # older readers looked only at this flag
        "max_batch": max_batch,
        "input_format": input_format,
        **({"calibration": calibration} if calibration is not None else {}),
    }


def engine_is_current(engine_path: Path, expected: dict[str, Any]) -> bool:
    meta = sidecar_path(engine_path)
    if not engine_path.is_file() or not meta.is_file():
        return False
    try:
        recorded = json.loads(meta.read_text())
    except json.JSONDecodeError:
        return False
    stale = {k: (recorded.get(k), v) for k, v in expected.items() if recorded.get(k) != v}
    if stale:
        log.info("existing TensorRT engine %s does not match (%s): rebuilding", engine_path.name, stale)
    return not stale


# --- INT8 calibration data (no TensorRT needed) ----------------------------------------------------------


def calibration_batches(
    photos: Sequence[Photo], spec: ModelSpec, batch_size: int = CALIBRATION_BATCH
) -> Iterator[np.ndarray]:
    """Contiguous input batches of exactly `batch_size` photos, pre-processed as serving does; a last
    partial batch is dropped (the calibrator's batch size is fixed), with a log line."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    full = len(photos) - len(photos) % batch_size
    if full < len(photos):
        log.info("calibration: %d photo(s) left out to fill batches of %d", len(photos) - full, batch_size)
    for start in range(0, full, batch_size):
        batch, _ = preprocess([p.image for p in photos[start : start + batch_size]], spec)
        yield np.ascontiguousarray(batch)


def calibration_key(
    onnx_sha256: str, photos: Sequence[Photo], spec: ModelSpec, trt_version: str
) -> dict[str, Any]:
    """What a calibration cache depends on: the model, the photos, how they are fed, the TensorRT."""
    return {
        "onnx_sha256": onnx_sha256,
        "method": "entropy2",
        "images": len(photos),
        "names_sha256": names_sha256([p.name for p in photos]),
        "input_format": spec.input_format,
        "input_size": [spec.input_width, spec.input_height],
        "tensorrt": trt_version,
    }


class CalibrationCache:
    """The calibrator's cache file plus a key file: a cache made for other photos or another model is
    ignored (TensorRT would use it without asking)."""

    def __init__(self, path: Path, key: dict[str, Any]) -> None:
        self.path = path
        self.key = key
        self.key_path = path.with_name(path.name + ".json")

    def read(self) -> bytes | None:
        try:
            recorded = json.loads(self.key_path.read_text())
            data = self.path.read_bytes()
        except (OSError, json.JSONDecodeError):
            return None
        if recorded != self.key:
            log.info("calibration cache %s is for another model or photos: calibrating again", self.path.name)
            return None
        log.info("reusing the calibration cache %s", self.path.name)
        return data

    def write(self, data: bytes) -> None:
        self.path.write_bytes(data)
        self.key_path.write_text(json.dumps(self.key, indent=2) + "\n")


def _entropy_calibrator(trt: Any, batches: list[np.ndarray], cache: CalibrationCache) -> Any:
    """An IInt8EntropyCalibrator2 feeding `batches` through one device buffer."""
    from inference.engines.tensorrt import _Cuda, _import_cudart

    cuda = _Cuda(_import_cudart())

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            super().__init__()
            self.index = 0
            self.nbytes = batches[0].nbytes if batches else 0
            self.device = int(cuda(cuda.rt.cudaMalloc(self.nbytes))) if batches else 0

        def get_batch_size(self) -> int:
            return int(batches[0].shape[0]) if batches else 1

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self.index >= len(batches):
                return None
            batch = batches[self.index]
            self.index += 1
            if self.index % 5 == 0 or self.index == len(batches):
                log.info("TensorRT calibration: batch %d/%d", self.index, len(batches))
            cuda(cuda.rt.cudaMemcpy(self.device, batch.ctypes.data, batch.nbytes,
                                    cuda.rt.cudaMemcpyKind.cudaMemcpyHostToDevice))  # fmt: skip
            return [self.device]  # one input

        def read_calibration_cache(self) -> bytes | None:
            return cache.read()

        def write_calibration_cache(self, data: Any) -> None:
            cache.write(bytes(data))

        def free(self) -> None:
            if self.device:
                cuda(cuda.rt.cudaFree(self.device))
                self.device = 0

    return Calibrator()


def build_engine(
    model_dir: Path,
    *,
    fp16: bool = True,
    precision: str | None = None,
    max_batch: int = 8,
    force: bool = False,
    photos: Sequence[Photo] | None = None,
) -> Path:
    """Build model.<precision>.engine (precision defaults to fp16, or fp32 with fp16=False)."""
    precision = precision or ("fp16" if fp16 else "fp32")
    out_name = engine_file(precision)
    trt = import_tensorrt()
    spec = ModelSpec.load(model_dir)
    onnx_path = model_dir / spec.onnx_file
    if not onnx_path.is_file():
        raise ModelLoadError(f"{onnx_path} is missing: run `python -m engine_build export` first")
    onnx_hash = sha256(onnx_path)
    implicit_int8 = precision == "int8" and hasattr(trt, "IInt8EntropyCalibrator2")
    calib_photos: list[Photo] = []
    calibration: dict[str, Any] | None = None
    source = onnx_path
    if precision == "int8":
        calib_photos = list(photos) if photos is not None else calibration_photos()
        if not calib_photos:
            raise ValueError("INT8 needs calibration photos (engine_build/evalset.py found none)")
        calibration = calibration_key(onnx_hash, calib_photos, spec, trt.__version__)
        if not implicit_int8:
            from engine_build.quantize import quantize

            calibration["method"] = "qdq"
            source = quantize(
                model_dir, photos=calib_photos, activations="int8", output_file=QDQ_FOR_TENSORRT
            )
    gpu = gpu_identity()
    meta = engine_metadata(onnx_hash, trt.__version__, gpu, precision=precision, max_batch=max_batch,
                           input_format=spec.input_format, calibration=calibration)  # fmt: skip
    engine_path = model_dir / out_name
    if not force and engine_is_current(engine_path, meta):
        log.info("TensorRT engine %s is current for %s", engine_path, meta["gpu"])
        return engine_path

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: networks are always explicit-batch
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(source.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelLoadError(f"TensorRT cannot parse {source}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 2 << 30)
    if precision in ("fp16", "int8") and builder.platform_has_fast_fp16:
        config.set_flag(trt.BuilderFlag.FP16)  # INT8 engines run what does not quantise in FP16
    shape = input_shape(spec)  # the served input's layout (a uint8-nhwc model's differs from the network's)
    profile = builder.create_optimization_profile()
    profile.set_shape(spec.input_name, (1, *shape), (max(1, max_batch // 2), *shape), (max_batch, *shape))
    config.add_optimization_profile(profile)
    calibrator = None
    if precision == "int8":
        if hasattr(trt.BuilderFlag, "INT8"):
            config.set_flag(trt.BuilderFlag.INT8)
        if implicit_int8:
            cache = CalibrationCache(model_dir / CALIBRATION_CACHE, calibration or {})
            batches = [] if cache.read() is not None else list(calibration_batches(calib_photos, spec))
            calibrator = _entropy_calibrator(trt, batches, cache)
            config.int8_calibrator = calibrator
            calib_profile = builder.create_optimization_profile()
            one = (CALIBRATION_BATCH, *shape)
            calib_profile.set_shape(spec.input_name, one, one, one)
            config.set_calibration_profile(calib_profile)
    log.info("building TensorRT %s engine for %s (batch 1..%d%s); this takes a minute or two", precision,
             meta["gpu"], max_batch, f", calibrated on {len(calib_photos)} photos" if calib_photos else "")  # fmt: skip
    start = time.perf_counter()
    try:
        serialized = builder.build_serialized_network(network, config)
    finally:
        if calibrator is not None:
            calibrator.free()
    if serialized is None:
        raise ModelLoadError("TensorRT failed to build the engine (see the TensorRT log above)")
    tmp = engine_path.with_suffix(".engine.tmp")
    tmp.write_bytes(bytes(serialized))
    tmp.replace(engine_path)
    sidecar_path(engine_path).write_text(json.dumps(meta, indent=2) + "\n")
    log.info("TensorRT engine written to %s in %.0f s", engine_path, time.perf_counter() - start)
    return engine_path
