"""The accuracy gate's record: which engine x precision keeps FP32's detections, measured on real photos.

`python -m engine_build precision` writes `<model_dir>/gate.json`; serving reads it here to refuse a
combination under the threshold. No server imports: both servers and the tools use it.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

log = logging.getLogger("rtdetect.gate")

GATE_FILENAME = "gate.json"

# The CPU features that decide which reduced precisions run fast (and how they round): printed with
# every benchmark and recorded with every gate result.
PRECISION_FLAGS: tuple[str, ...] = (
    "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16",
    "amx_tile", "amx_bf16", "amx_int8",
)  # fmt: skip

# One spelling per precision: OpenVINO says f32/f16, the settings say fp32/fp16.
_ALIASES = {"f32": "fp32", "float32": "fp32", "f16": "fp16", "float16": "fp16", "i8": "int8", "u8": "int8"}


def normalize_precision(precision: str) -> str:
    p = precision.strip().lower()
    return _ALIASES.get(p, p)


class Machine(BaseModel):
    model_config = ConfigDict(frozen=True)
    cpu: str
    flags: tuple[str, ...] = ()
    gpu: str | None = None


class GateResult(BaseModel):
    model_config = ConfigDict(frozen=True)
    backend: str
    precision: str
    map: float = Field(ge=0.0, le=1.0)  # COCO mAP@0.5:0.95 against the FP32 reference's detections
    recall50: float = Field(ge=0.0, le=1.0)  # share of reference boxes found at IoU >= 0.5, same class
    passed: bool


class GateRecord(BaseModel):
    model_config = ConfigDict(frozen=True)
    machine: Machine
    threshold: float = Field(ge=0.0, le=1.0)
    onnx_sha256: str
    results: tuple[GateResult, ...] = ()

    def _find(self, backend: str, precision: str) -> GateResult | None:
        p = normalize_precision(precision)
        for r in self.results:
            if r.backend == backend and normalize_precision(r.precision) == p:
                return r
        return None

    def passed(self, backend: str, precision: str) -> bool | None:
        """True/False as measured; None when this combination was not measured."""
        r = self._find(backend, precision)
        return None if r is None else r.passed

    def score(self, backend: str, precision: str) -> float | None:
        """mAP@0.5:0.95 against FP32, or None when not measured."""
        r = self._find(backend, precision)
        return None if r is None else r.map

    def save(self, model_dir: Path) -> Path:
        path = model_dir / GATE_FILENAME
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(self.model_dump_json(indent=2) + "\n")
        tmp.replace(path)
        return path


def load_gate(model_dir: Path, *, onnx_sha256: str | None = None) -> GateRecord | None:
    """The recorded gate, or None when there is none (or it is unreadable, or for another model).

    Pass the serving model's hash to ignore a record measured on a different model.onnx.
    """
    path = model_dir / GATE_FILENAME
    try:
        record = GateRecord.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        return None
    except (ValidationError, ValueError) as e:
        log.warning("ignoring unreadable accuracy gate %s: %s", path, e)
        return None
    if onnx_sha256 is not None and record.onnx_sha256 != onnx_sha256:
        log.warning("ignoring accuracy gate %s: it was measured on another model.onnx", path)
        return None
    return record


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cpu_identity(cpuinfo: Path = Path("/proc/cpuinfo")) -> tuple[str, tuple[str, ...]]:
    """CPU model name and the precision-relevant flags it has (Linux; 'unknown' elsewhere)."""
    model, flags = "unknown", set[str]()
    try:
        text = cpuinfo.read_text()
    except OSError:
        return model, ()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model == "unknown":
            model = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    return model, tuple(f for f in PRECISION_FLAGS if f in flags)


def gpu_name() -> str | None:
    """Name of NVIDIA GPU 0, or None without a GPU or its driver."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return None
    try:
        name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(0))
        return name if isinstance(name, str) else name.decode()
    except pynvml.NVMLError:
        return None
    finally:
        pynvml.nvmlShutdown()


def current_machine() -> Machine:
    cpu, flags = cpu_identity()
    return Machine(cpu=cpu, flags=flags, gpu=gpu_name())
