""".pth -> ONNX: torch.onnx.export with a dynamic batch axis, onnx.checker, and a parity check.

The same path serves the built-in NanoDet-g and a user's own network (an importable factory returning an
`nn.Module` plus a state dict): whatever produces the .pth, the ONNX that comes out is checked against
PyTorch on real photos before anything serves it. With a uint8 input_format the exported graph starts with
the normalisation (inference/engines/torch_uint8.py), and is also checked against the float model fed by the
float pre-processing, i.e. against what serving did before.
"""

from __future__ import annotations

import logging
import shutil
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from inference.engines.torch import TorchEngine, import_factory
from inference.preprocess import preprocess
from inference.spec import InputFormat, ModelSpec, TorchSource

log = logging.getLogger("rtdetect.engine_build")

OPSET = 17
PARITY_TOLERANCE = 1e-4


class ExportError(RuntimeError):
    """The model could not be exported, or the export does not match PyTorch."""


@dataclass(frozen=True)
class ParityRow:
    images: str
    batch: int
    output: str
    max_abs_diff: float


def load_torch_engine(model_dir: Path, spec: ModelSpec) -> TorchEngine:
    """The unconverted model, built exactly as the `torch` serving backend builds it."""
    engine = TorchEngine(model_dir, spec)
    engine.load()
    return engine


def parity_images() -> dict[str, np.ndarray]:
    """Real photos shipped inside scikit-image, as BGR."""
    from skimage import data

    rgb = {
        "astronaut": data.astronaut(),
        "coffee": data.coffee(),
        "motorcycle": data.stereo_motorcycle()[0],
        "chelsea": data.chelsea(),
    }
    return {k: np.ascontiguousarray(v[:, :, ::-1]) for k, v in rgb.items()}


def check_parity(
    torch_engine: TorchEngine,
    onnx_path: Path,
    spec: ModelSpec,
    images: dict[str, np.ndarray],
    *,
    torch_spec: ModelSpec | None = None,
) -> list[ParityRow]:
    """Compare PyTorch and ONNX Runtime (CPU) on each photo alone and on all of them as one batch.

    `torch_spec`, when given, pre-processes PyTorch's input by another spec than the ONNX model's (the float
    model against a uint8-input export of it).
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    rows: list[ParityRow] = []
    cases = [(name, [img]) for name, img in images.items()] + [("all", list(images.values()))]
    for label, imgs in cases:
        batch, _ = preprocess(imgs, spec)
        expected = torch_engine.infer(preprocess(imgs, torch_spec)[0] if torch_spec else batch)
        names = list(expected)
        got = dict(zip(names, session.run(names, {spec.input_name: batch}), strict=True))
        for name in names:
            if got[name].shape != expected[name].shape:
                raise ExportError(f"{name}: ONNX shape {got[name].shape} != PyTorch {expected[name].shape}")
            diff = float(np.max(np.abs(got[name] - expected[name])))
            rows.append(ParityRow(label, len(imgs), name, diff))
    return rows


def export_onnx(model: nn.Module, names: list[str], spec: ModelSpec, path: Path, opset: int = OPSET) -> None:
    dtype = torch.uint8 if spec.input_dtype == "uint8" else torch.float32
    example = torch.zeros(1, 3, spec.input_height, spec.input_width, dtype=dtype)
    if spec.input_layout == "NHWC":
        example = example.permute(0, 2, 3, 1).contiguous()
    dynamic = {spec.input_name: {0: "batch"}, **{n: {0: "batch"} for n in names}}
    # The TorchScript exporter needs no extra packages and handles our interpreter modules well;
    # the dynamo exporter would add onnxscript to the build dependencies for no gain here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*legacy TorchScript")
        # Slices with a step other than 1 stay unfolded: harmless (parity is checked below), but loud.
        warnings.filterwarnings("ignore", category=UserWarning, message="Constant folding - Only steps=1")
        torch.onnx.export(
            model, (example,), str(path), dynamo=False, opset_version=opset,
            input_names=[spec.input_name], output_names=names, dynamic_axes=dynamic, do_constant_folding=True,
        )  # fmt: skip
    onnx.checker.check_model(str(path), full_check=True)


def export(
    model_dir: Path,
    *,
    opset: int = OPSET,
    tolerance: float = PARITY_TOLERANCE,
    input_format: InputFormat | None = None,
) -> list[ParityRow]:
    """Export `model_dir`'s PyTorch model (per its model.json) to model.onnx and check parity.

    `input_format` overrides model.json's; the spec is rewritten with it only once the model passed.
    """
    spec = ModelSpec.load(model_dir)
    if input_format is not None and input_format != spec.input_format:
        spec = ModelSpec.model_validate({**spec.model_dump(), "input_format": input_format})
    if spec.torch_source is None:
        raise ExportError(f"{model_dir / 'model.json'} names no torch_source (factory + .pth) to export")
    torch_engine = load_torch_engine(model_dir, spec)
    onnx_path = model_dir / spec.onnx_file
    tmp = onnx_path.with_suffix(".onnx.tmp")
    start = time.perf_counter()
    log.info("exporting %s to ONNX (opset %d, dynamic batch, %s input)", spec.name, opset, spec.input_format)
    export_onnx(torch_engine.model, torch_engine.output_names, spec, tmp, opset)
    log.info("exported and checked with onnx.checker in %.1f s", time.perf_counter() - start)
    log.info("checking parity PyTorch vs ONNX Runtime on real photos (tolerance %g)", tolerance)
    images = parity_images()
    rows = check_parity(torch_engine, tmp, spec, images)
    print(format_parity(rows))
    if spec.input_format != "float":
        # The uint8 graph against the float model as served before: the normalisation moved, nothing else.
        float_spec = ModelSpec.model_validate({**spec.model_dump(), "input_format": "float"})
        float_rows = check_parity(
            load_torch_engine(model_dir, float_spec), tmp, spec, images, torch_spec=float_spec
        )
        print(f"{spec.input_format} ONNX against the float PyTorch model:")
        print(format_parity(float_rows))
        rows += float_rows
    worst = max(r.max_abs_diff for r in rows)
    if worst > tolerance:
        raise ExportError(f"ONNX output differs from PyTorch by {worst:.3g} > {tolerance:g}; not installed")
    tmp.replace(onnx_path)  # only a model that passed parity replaces the served one
    spec.save(model_dir)  # input_format as exported: the spec always describes the installed model
    log.info("parity ok (max abs diff %.2e) -> %s", worst, onnx_path)
    return rows


def format_parity(rows: Sequence[ParityRow]) -> str:
    """One line per input: the worst output and its difference."""
    lines = ["| images | batch | worst output | max abs diff |", "|---|---:|---|---:|"]
    for images in dict.fromkeys(r.images for r in rows):
        worst = max((r for r in rows if r.images == images), key=lambda r: r.max_abs_diff)
        lines.append(f"| {images} | {worst.batch} | {worst.output} | {worst.max_abs_diff:.2e} |")
    return "\n".join(lines)


def prepare_user_model(
    *,
    factory: str,
    weights: Path,
    model_dir: Path,
    spec_fields: dict[str, Any],
    factory_kwargs: dict[str, str | int | float | bool],
) -> ModelSpec:
    """Lay out a user's model directory: the .pth copied in and a model.json describing it."""
    model_dir.mkdir(parents=True, exist_ok=True)
    if not weights.is_file():
        raise ExportError(f"weights file {weights} does not exist")
    if weights.resolve() != (model_dir / "model.pth").resolve():
        shutil.copyfile(weights, model_dir / "model.pth")
    source = TorchSource(factory=factory, weights="model.pth", kwargs=factory_kwargs)
    import_factory(factory)  # fail early, before writing a spec that points at nothing
    spec = ModelSpec.model_validate({**spec_fields, "torch_source": source.model_dump()})
    spec.save(model_dir)
    return spec
