"""model.onnx -> model.int8.onnx: post-training static INT8 quantisation calibrated on real photos.

ONNX Runtime's `quantize_static` in QDQ format (QuantizeLinear/DequantizeLinear pairs around each
quantised op), weights per channel: ONNX Runtime's CPU provider fuses the pairs into INT8 kernels (VNNI,
AMX-INT8) and OpenVINO reads the same file as an INT8 model, so one artifact serves both backends.
The calibration photos go through inference/preprocess.py exactly as serving sends them. A record of how
the model was made sits beside it (model.int8.json).

Defaults, each measured on the evaluation photos (docs/benchmarks.md has the table): uint8 activations
(OpenVINO reads int8-activation QDQ from this tool wrongly: mAP 0.00 against 0.91 with uint8; ONNX Runtime
scores the same with either), entropy calibration (0.92 against 0.84 for min-max), and the detection head's
tail after its last convolutions kept in float (box distributions go through a softmax).

The weight format follows the CPU's integer kernels (`choose_scheme`): int8 where VNNI or AMX accumulate in
int32; on AVX2 alone, where uint8 x int8 pairs saturate int16, the layers measured to saturate keep uint8
weights (engine_build/saturation.py). A record made for another CPU class is not current: `make model`
quantises again there.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine_build.evalset import Photo, calibration_photos, names_sha256
from engine_build.saturation import guard_saturating_layers
from inference.engines.options import int8_onnx_file
from inference.errors import ModelLoadError
from inference.gate import cpu_identity, file_sha256, int8_kernel_class, u8s8_saturates
from inference.preprocess import preprocess_one
from inference.spec import ModelSpec

log = logging.getLogger("rtdetect.engine_build")

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
# Weight formats (engine_build/saturation.py explains the saturation they answer):
#   s8          int8 weights everywhere: the fast kernels, exact where the CPU has VNNI or AMX;
#   s8-guarded  int8 weights, uint8 in the layers measured to saturate on this CPU (AVX2 without VNNI);
#   u8          uint8 weights everywhere: exact on every CPU, but U8U8 kernels are slow.
SCHEMES = ("s8", "s8-guarded", "u8")
GUARD_PHOTOS = 8  # calibration photos the per-layer saturation check runs on
# Kept in float: measured on the evaluation photos (docs/benchmarks.md), these lose accuracy for no speed.
DEFAULT_EXCLUDED_OP_TYPES: tuple[str, ...] = ()


def record_path(int8_path: Path) -> Path:
    """model.int8.onnx -> model.int8.json"""
    return int8_path.with_suffix(".json")


class PhotoCalibrationReader:
    """Feeds calibration photos one at a time (batch 1), pre-processed as serving does, logging progress."""

    def __init__(self, photos: Sequence[Photo], spec: ModelSpec) -> None:
        self._photos = list(photos)
        self._spec = spec
        self._next = 0
        self._start = time.perf_counter()

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self._photos):
            return None
        photo = self._photos[self._next]
        self._next += 1
        tensor, _ = preprocess_one(photo.image, self._spec)
        if self._next == 1 or self._next % 5 == 0 or self._next == len(self._photos):
            log.info("calibrating: image %d/%d (%s), %.1f s",
                     self._next, len(self._photos), photo.name, time.perf_counter() - self._start)  # fmt: skip
        return {self._spec.input_name: tensor[None]}

    def rewind(self) -> None:
        self._next = 0

    def __len__(self) -> int:
        return len(self._photos)


def quantize(
    model_dir: Path,
    *,
    photos: Sequence[Photo] | None = None,
    method: str = "entropy",
    per_channel: bool = True,
    exclude_op_types: Sequence[str] = DEFAULT_EXCLUDED_OP_TYPES,
    keep_head_float: bool = True,
    head_convs_float: bool = False,
    activations: str = "uint8",
    scheme: str = "auto",
    output_file: str | None = None,
    force: bool = False,
) -> Path:
    """Write model.int8.onnx (+ model.int8.json) beside model.onnx; returns its path.

    Skipped when a record says the existing INT8 model was made from this model.onnx with the same
    settings and calibration images (unless `force`).
    """
    import onnxruntime
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    flags = cpu_identity()[1]
    scheme, why = choose_scheme(scheme, flags)
    if activations not in ("int8", "uint8"):
        raise ValueError(f"activations are int8 or uint8, not {activations!r}")
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"unknown calibration method {method!r}; choose one of {CALIBRATION_METHODS}")
    spec = ModelSpec.load(model_dir)
    onnx_path = model_dir / spec.onnx_file
    if not onnx_path.is_file():
        raise ModelLoadError(f"{onnx_path} is missing: run `python -m engine_build export` first")
    out_path = model_dir / (output_file or int8_onnx_file(spec.onnx_file))
    chosen = list(photos) if photos is not None else calibration_photos()
    if not chosen:
        raise ValueError("no calibration photos")
    names = [p.name for p in chosen]
    record: dict[str, Any] = {
        "tool": "onnxruntime.quantization.quantize_static",
        "onnxruntime": onnxruntime.__version__,
        "format": "QDQ",
        "activations": f"{activations} (asymmetric, per tensor)",
        "weights": f"{'uint8 (asymmetric' if scheme == 'u8' else 'int8 (symmetric'}, "
        f"{'per channel' if per_channel else 'per tensor'})",
        "scheme": scheme,
        "scheme_reason": why,
        # The kernels the file was made for: the guarded layers are measured on them.
        "int8_kernels": int8_kernel_class(flags),
        "calibration_method": method,
        "calibration_images": len(chosen),
        "calibration_names_sha256": names_sha256(names),
        "excluded_op_types": sorted(exclude_op_types),
        "head_float": keep_head_float,
        "head_convs_float": head_convs_float,
        "source_onnx": spec.onnx_file,
        "source_onnx_sha256": file_sha256(onnx_path),
    }
    rec_path = record_path(out_path)
    if not force and out_path.is_file() and rec_path.is_file():
        try:
            old = json.loads(rec_path.read_text())
        except json.JSONDecodeError:
            old = {}
        if all(old.get(k) == v for k, v in record.items()):
            log.info("%s is current (same model, settings and calibration images)", out_path)
            return out_path

    class _Reader(CalibrationDataReader):  # onnxruntime wants its own base class
        def __init__(self) -> None:
            self.inner = PhotoCalibrationReader(chosen, spec)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return self.inner.get_next()

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=model_dir) as tmp:
        # Shape inference and constant folding first (ONNX Runtime's recommended step): the many
        # reshape-target subgraphs then disappear instead of getting quantisation nodes of their own.
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(onnx_path), str(prepared), skip_symbolic_shape=True)
        model = _load_model(prepared)
        folded = fold_infinite_pads(model)
        if folded:
            import onnx

            onnx.save(model, str(prepared))
        record["folded_pads"] = folded
        ops = sorted({n.op_type for n in model.graph.node} - set(exclude_op_types))
        # A Pad with an infinite fill (-inf in front of a max pool) has an infinite range: its scale would
        # be inf and poison every tensor after it. It stays float; the max pool after it is finite again.
        excluded_nodes = nonfinite_pad_nodes(model)
        if keep_head_float:
            excluded_nodes += head_nodes(model, include_convs=head_convs_float)
        record["excluded_nodes"] = excluded_nodes
        log.info("quantising %s: %d calibration photos, %s calibration, ops %s; kept in float: %s",
                 onnx_path.name, len(chosen), method, ", ".join(ops), excluded_nodes or "none")  # fmt: skip
        tmp_out = Path(tmp) / "model.int8.onnx"
        with warnings.catch_warnings():
            # The float-kept Pad's infinite range still gets (unused) parameters computed: inf / inf.
            warnings.filterwarnings("ignore", "invalid value encountered", RuntimeWarning)
            quantize_static(
                str(prepared),
                str(tmp_out),
                _Reader(),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=ops,
                nodes_to_exclude=excluded_nodes,
                per_channel=per_channel,
                activation_type=QuantType.QUInt8 if activations == "uint8" else QuantType.QInt8,
                weight_type=QuantType.QUInt8 if scheme == "u8" else QuantType.QInt8,
                calibrate_method={
                    "minmax": CalibrationMethod.MinMax,
                    "entropy": CalibrationMethod.Entropy,
                    "percentile": CalibrationMethod.Percentile,
                }[method],
                extra_options={"CalibMaxIntermediateOutputs": 8},  # bounds calibration memory
            )
        if scheme == "s8-guarded":
            # A few calibration photos spread over the sources (the list is sorted by name).
            probe = PhotoCalibrationReader(
                chosen[:: max(1, len(chosen) // GUARD_PHOTOS)][:GUARD_PHOTOS], spec
            )
            guarded, report = guard_saturating_layers(_load_model(tmp_out), list(iter(probe.get_next, None)))
            import onnx

            onnx.save(guarded, str(tmp_out))
            record["guarded_layers"] = report.guarded
            record["saturation_distance"] = {
                "all_int8": report.damage_all_int8,
                "guarded": report.damage_guarded,
                "layers_checked": report.layers,
                "seconds": report.seconds,
            }
        tmp_out.replace(out_path)
    record["seconds"] = round(time.perf_counter() - start, 1)
    record["created"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    rec_path.write_text(json.dumps(record, indent=2) + "\n")
    log.info("INT8 model written to %s in %.0f s (record: %s)", out_path, record["seconds"], rec_path.name)
    return out_path


def choose_scheme(requested: str, flags: Sequence[str]) -> tuple[str, str]:
    """The weight format to write and why: `auto` follows the CPU's int8 dot-product instructions."""
    if requested != "auto":
        if requested not in SCHEMES:
            raise ValueError(f"unknown weight scheme {requested!r}; choose auto or one of {SCHEMES}")
        return requested, "asked for"
    kernels = int8_kernel_class(tuple(flags))
    if u8s8_saturates(tuple(flags)):
        return "s8-guarded", (
            f"this CPU has no VNNI or AMX ({kernels}): uint8 x int8 pairs saturate int16, so the layers "
            "where that shows keep exact uint8 weights"
        )
    return "s8", f"this CPU has {kernels}: int8 dot products accumulate in int32, nothing saturates"


def _load_model(path: Path) -> Any:
    import onnx

    return onnx.load(str(path))


def _constant_values(model: Any) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    values: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
    return values


def fold_infinite_pads(model: Any) -> list[str]:
    """Fold each Pad(-inf) -> MaxPool pair into the MaxPool's own padding (which is -inf by definition),
    in place; returns the folded Pad nodes' names.

    The TF.js conversion pads explicitly before its max pool. An infinite fill breaks calibration (an
    infinite range: no scale, no histogram), and the folded graph computes exactly the same.
    """
    from onnx import helper

    values = _constant_values(model)
    consumers: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    graph_outputs = {o.name for o in model.graph.output}
    folded: list[str] = []
    for pad in list(model.graph.node):
        if pad.op_type != "Pad" or len(pad.input) < 3 or pad.output[0] in graph_outputs:
            continue
        fill, pads = values.get(pad.input[2]), values.get(pad.input[1])
        users = consumers.get(pad.output[0], [])
        if fill is None or pads is None or np.isfinite(fill).all() or float(fill.ravel()[0]) > 0:
            continue
        if len(users) != 1 or users[0].op_type != "MaxPool" or pads.size != 8:
            continue
        pool = users[0]
        attrs = {a.name: helper.get_attribute_value(a) for a in pool.attribute}
        begin, end = pads[:4].tolist(), pads[4:].tolist()
        kernel = list(attrs.get("kernel_shape", []))
        spatial = [int(v) for v in begin[2:] + end[2:]]
        if begin[:2] != [0, 0] or end[:2] != [0, 0] or any(v < 0 for v in spatial) or len(kernel) != 2:
            continue
        if list(attrs.get("pads", [0, 0, 0, 0])) != [0, 0, 0, 0] or attrs.get("auto_pad", b"NOTSET") not in (
            b"NOTSET",
            "NOTSET",
        ):
            continue
        if any(v >= k for v, k in zip(spatial, kernel + kernel, strict=True)):
            continue  # pooling pads must be smaller than the kernel
        for a in pool.attribute:
            if a.name == "pads":
                pool.attribute.remove(a)
                break
        pool.attribute.append(helper.make_attribute("pads", spatial))
        pool.input[0] = pad.input[0]
        model.graph.node.remove(pad)
        folded.append(pad.name)
    if folded:  # drop the fill and pad-size constants nothing reads any more
        used = {name for node in model.graph.node for name in node.input}
        for init in list(model.graph.initializer):
            if init.name not in used:
                model.graph.initializer.remove(init)
    return folded


def nonfinite_pad_nodes(model: Any) -> list[str]:
    """Names of Pad nodes whose constant fill value is not finite (e.g. -inf before a MaxPool)."""
    from onnx import numpy_helper

    values: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
    names = []
    for node in model.graph.node:
        if node.op_type != "Pad" or len(node.input) < 3 or not node.input[2]:
            continue
        fill = values.get(node.input[2])
        if fill is not None and not np.all(np.isfinite(fill.astype(np.float64))):
            names.append(node.name)
    return names


_COMPUTE_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


def head_nodes(model: Any, *, include_convs: bool = False) -> list[str]:
    """Names of the nodes between the graph's outputs and the last compute op (Conv, Gemm, MatMul) on
    each path: the detection head's split, sigmoid, reshapes and transposes (and those convs, if asked).

    In INT8 these would round the raw outputs to 256 levels: box distributions go through a softmax
    where that moves every box edge, so they stay float.
    """
    producer = {out: node for node in model.graph.node for out in node.output}
    names: list[str] = []
    seen: set[str] = set()
    stack = [o.name for o in model.graph.output]
    while stack:
        node = producer.get(stack.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type in _COMPUTE_OPS:
            if include_convs:
                names.append(node.name)
            continue
        names.append(node.name)
        stack.extend(i for i in node.input if i)
    return sorted(names)
