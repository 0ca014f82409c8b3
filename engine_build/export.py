""".pth -> ONNX: torch.onnx.export with a dynamic batch axis, onnx.checker, and a parity check.

The same path serves the built-in NanoDet-g and a user's own network (an importable factory returning an
`nn.Module` plus a state dict): whatever produces the .pth, the ONNX that comes out is checked against
PyTorch on real photos before anything serves it.
"""

from __future__ import annotations

import importlib
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

from inference.preprocess import preprocess
from inference.spec import ModelSpec, TorchSource

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


def import_factory(target: str) -> Any:
    """'package.module:callable' -> the callable."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ExportError(f"factory must look like 'package.module:callable', got {target!r}")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ExportError(f"cannot import factory {target!r}: {e}") from e


def load_torch_model(source: TorchSource, model_dir: Path) -> nn.Module:
    """Build the module from its factory and load its state dict strictly."""
    kwargs: dict[str, Any] = dict(source.kwargs)
    for key in source.path_kwargs:
        kwargs[key] = str(model_dir / str(kwargs[key]))
    model = import_factory(source.factory)(**kwargs)
    if not isinstance(model, nn.Module):
        raise ExportError(f"factory {source.factory} returned {type(model).__name__}, not an nn.Module")
    state = torch.load(model_dir / source.weights, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]  # common training-checkpoint layout
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ExportError(f"state dict {source.weights} does not fit {source.factory}: {e}") from e
    return model.eval()


def output_names(model: nn.Module, spec: ModelSpec) -> list[str]:
    names = getattr(model, "output_names", None)
    if names:
        return list(names)
    if spec.decoder.type == "nanodet":
        return [*spec.decoder.cls_outputs, *spec.decoder.reg_outputs]
    return [spec.decoder.output]


def _run_torch(model: nn.Module, batch: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
    with torch.inference_mode():
        outs = model(torch.from_numpy(batch))
    if isinstance(outs, torch.Tensor):
        outs = (outs,)
    if isinstance(outs, dict):
        return {k: v.numpy() for k, v in outs.items()}
    return {n: o.numpy() for n, o in zip(names, outs, strict=True)}


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
    model: nn.Module, onnx_path: Path, spec: ModelSpec, images: dict[str, np.ndarray]
) -> list[ParityRow]:
    """Compare PyTorch and ONNX Runtime (CPU) on each photo alone and on all of them as one batch."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = output_names(model, spec)
    rows: list[ParityRow] = []
    cases = [(name, [img]) for name, img in images.items()] + [("all", list(images.values()))]
    for label, imgs in cases:
        batch, _ = preprocess(imgs, spec)
        expected = _run_torch(model, batch, names)
        got = dict(zip(names, session.run(names, {spec.input_name: batch}), strict=True))
        for name in names:
            if got[name].shape != expected[name].shape:
                raise ExportError(f"{name}: ONNX shape {got[name].shape} != PyTorch {expected[name].shape}")
            diff = float(np.max(np.abs(got[name] - expected[name])))
            rows.append(ParityRow(label, len(imgs), name, diff))
    return rows


def export_onnx(model: nn.Module, spec: ModelSpec, path: Path, opset: int = OPSET) -> None:
    names = output_names(model, spec)
    example = torch.zeros(1, 3, spec.input_height, spec.input_width)
    if spec.layout == "NHWC":
        example = example.permute(0, 2, 3, 1).contiguous()
    dynamic = {spec.input_name: {0: "batch"}, **{n: {0: "batch"} for n in names}}
    # The TorchScript exporter needs no extra packages and handles our interpreter modules well;
    # the dynamo exporter would add onnxscript to the build dependencies for no gain here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*legacy TorchScript")
        torch.onnx.export(
            model, (example,), str(path), dynamo=False, opset_version=opset,
            input_names=[spec.input_name], output_names=names, dynamic_axes=dynamic, do_constant_folding=True,
        )  # fmt: skip
    onnx.checker.check_model(str(path), full_check=True)


def export(model_dir: Path, *, opset: int = OPSET, tolerance: float = PARITY_TOLERANCE) -> list[ParityRow]:
    """Export `model_dir`'s PyTorch model (per its model.json) to model.onnx and check parity."""
    spec = ModelSpec.load(model_dir)
    if spec.torch_source is None:
        raise ExportError(f"{model_dir / 'model.json'} names no torch_source (factory + .pth) to export")
    model = load_torch_model(spec.torch_source, model_dir)
    onnx_path = model_dir / spec.onnx_file
    tmp = onnx_path.with_suffix(".onnx.tmp")
    start = time.perf_counter()
    log.info("exporting %s to ONNX (opset %d, dynamic batch)", spec.name, opset)
    export_onnx(model, spec, tmp, opset)
    log.info("exported and checked with onnx.checker in %.1f s", time.perf_counter() - start)
    log.info("checking parity PyTorch vs ONNX Runtime on real photos (tolerance %g)", tolerance)
    rows = check_parity(model, tmp, spec, parity_images())
    worst = max(r.max_abs_diff for r in rows)
    print(format_parity(rows))
    if worst > tolerance:
        raise ExportError(f"ONNX output differs from PyTorch by {worst:.3g} > {tolerance:g}; not installed")
    tmp.replace(onnx_path)  # only a model that passed parity replaces the served one
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
