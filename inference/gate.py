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
    # The same against FP32 on photos outside calibration and evaluation: a second opinion, not the verdict.
    holdout_map: float | None = Field(default=None, ge=0.0, le=1.0)
    holdout_recall50: float | None = Field(default=None, ge=0.0, le=1.0)


class GateRecord(BaseModel):
    model_config = ConfigDict(frozen=True)
    machine: Machine
    threshold: float = Field(ge=0.0, le=1.0)
    onnx_sha256: str
    # The INT8 file the int8 rows scored: a re-quantised file is not the one the gate measured.
    int8_sha256: str | None = None
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


def load_gate(
    model_dir: Path,
    *,
    onnx_sha256: str | None = None,
    machine: Machine | None = None,
    int8_sha256: str | None = None,
) -> GateRecord | None:
    """The recorded gate, or None when there is none (or it is unreadable, or for another model).

    Pass the serving model's hash to ignore a record measured on a different model.onnx, the serving
    machine to ignore one measured on another CPU or GPU (reduced precisions round differently there: an
    INT8 file that passed on a VNNI CPU can fail on an AVX2-only one), and the INT8 file's hash to drop the
    int8 verdicts when that file is not the one the gate scored.
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
    if machine is not None and record.machine != machine:
        log.warning(
            "ignoring accuracy gate %s: it was measured on %s, this is %s; run `make model` (or `python -m "
            "engine_build precision`) here to score reduced precisions on this machine",
            path, describe(record.machine), describe(machine),
        )  # fmt: skip
        return None
    if int8_sha256 is not None and record.int8_sha256 != int8_sha256:
        if any(normalize_precision(r.precision) == "int8" for r in record.results):
            log.warning("accuracy gate %s scored another INT8 file: int8 counts as not measured", path)
        kept = tuple(r for r in record.results if normalize_precision(r.precision) != "int8")
        record = record.model_copy(update={"results": kept})
    return record


def describe(machine: Machine) -> str:
    """One line for logs and pages: CPU, its precision flags, the GPU."""
    gpu = f", GPU {machine.gpu}" if machine.gpu else ""
    return f"{machine.cpu} [{' '.join(machine.flags) or 'no precision flags'}]{gpu}"


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


# Instruction sets whose 8-bit dot products accumulate in 32 bits (VPDPBUSD, TDPBUSD). Without any of them,
# x86 kernels multiply uint8 activations by int8 weights with VPMADDUBSW, which sums pairs of products in
# int16 with saturation: a layer whose weights and activations are both large then computes wrong numbers.
INT8_DOT_FLAGS: tuple[str, ...] = ("amx_int8", "avx512_vnni", "avx_vnni")


def int8_kernel_class(flags: tuple[str, ...] | list[str]) -> str:
    """'amx', 'vnni' (AVX-512 or AVX VNNI) or 'avx2' (no 32-bit int8 dot product: u8 x s8 saturates)."""
    have = set(flags)
    if "amx_int8" in have:
        return "amx"
    if have & {"avx512_vnni", "avx_vnni"}:
        return "vnni"
    return "avx2"


def u8s8_saturates(flags: tuple[str, ...] | list[str]) -> bool:
    """True where uint8 x int8 products are summed in pairs into saturating int16 (no VNNI, no AMX)."""
    return int8_kernel_class(flags) == "avx2"


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
