"""A user's model of every decoder family through `python -m engine_build export`, then served: the ONNX
model in ONNX Runtime and the .pth in PyTorch give the same detections on real photos through the Detector.
And uint8-input exports (normalisation in the graph) against the float export of the same weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from engine_build.__main__ import main
from inference.engines.onnxruntime import OnnxRuntimeEngine
from inference.engines.torch import TorchEngine
from inference.pipeline import Detector
from inference.spec import ModelSpec
from inference.types import DetectionResult, DetectParams
from tests.fixtures.tiny_families import build

LOW = DetectParams(score_threshold=0.05, max_detections=20)  # random weights score low


def export_family(tmp_path: Path, family: str, name: str, *extra: str) -> Path:
    weights = tmp_path / f"{family}.pth"
    if not weights.exists():
        torch.manual_seed(0)
        torch.save(build(family).state_dict(), weights)
        (tmp_path / "classes.txt").write_text("cat\ndog\nbird\n")
    model_dir = tmp_path / name
    rc = main([
        "export", "--model-dir", str(model_dir), "--factory", "tests.fixtures.tiny_families:build",
        "--factory-kwarg", f"family={family}", "--weights", str(weights), "--name", name,
        "--input-size", "64x64", "--decoder", family, "--classes", str(tmp_path / "classes.txt"),
        "--resize", "letterbox", *extra,
    ])  # fmt: skip
    assert rc == 0
    return model_dir


def detect(engine: OnnxRuntimeEngine | TorchEngine, spec: ModelSpec, images: list[np.ndarray]) -> list[DetectionResult]:  # fmt: skip
    detector = Detector(engine, spec)
    engine.load()
    try:
        return detector.detect_batch_sync(images, LOW)
    finally:
        engine.close()


def assert_same_detections(a: list[DetectionResult], b: list[DetectionResult]) -> None:
    for ra, rb in zip(a, b, strict=True):
        assert [d.label for d in ra.detections] == [d.label for d in rb.detections]
        for da, db in zip(ra.detections, rb.detections, strict=True):
            assert da.score == pytest.approx(db.score, abs=1e-4)
            np.testing.assert_allclose(da.box, db.box, atol=0.05)


@pytest.mark.parametrize(
    ("family", "options"),
    [
        ("yolov5", []),
        ("yolox", []),  # raw boxes, YOLOX's default export
        ("end2end", []),
        ("detr", ["--decoder-option", "boxes_output=dets", "--decoder-option", "logits_output=labels"]),
        ("torchvision", []),
    ],
)
def test_family_exports_and_serves_like_pytorch(tmp_path: Path, family: str, options: list[str], photos: dict[str, np.ndarray]) -> None:  # fmt: skip
    model_dir = export_family(tmp_path, family, "mine", *options)
    spec = ModelSpec.load(model_dir)
    assert spec.decoder.type == family and spec.class_names == ("cat", "dog", "bird")
    session = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == list(spec.decoder.output_names)
    images = list(photos.values())
    served = detect(OnnxRuntimeEngine(model_dir, spec, providers=["CPUExecutionProvider"]), spec, images)
    reference = detect(TorchEngine(model_dir, spec), spec, images)
    assert sum(len(r.detections) for r in served) > 0
    assert_same_detections(served, reference)
    for image, result in zip(images, served, strict=True):
        h, w = image.shape[:2]
        for d in result.detections:
            assert 0 <= d.box[0] <= d.box[2] <= w and 0 <= d.box[1] <= d.box[3] <= h


@pytest.mark.parametrize("input_format", ["uint8-nhwc", "uint8-nchw"])
def test_uint8_export_matches_the_float_export(tmp_path: Path, input_format: str, photos: dict[str, np.ndarray]) -> None:  # fmt: skip
    # RGB and uneven mean/std, so a wrong channel order or a missed normalisation would show.
    norm = ["--color", "RGB", "--mean", "10,120,240", "--std", "50,60,70"]
    float_dir = export_family(tmp_path, "yolov5", "float", *norm)
    uint8_dir = export_family(tmp_path, "yolov5", "uint8", *norm, "--input-format", input_format)
    float_spec, uint8_spec = ModelSpec.load(float_dir), ModelSpec.load(uint8_dir)
    assert float_spec.input_format == "float" and uint8_spec.input_format == input_format

    model = onnx.load(str(uint8_dir / "model.onnx"))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    want = [64, 64, 3] if input_format == "uint8-nhwc" else [3, 64, 64]
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim][1:] == want
    first_ops = [n.op_type for n in model.graph.node[:3]]
    assert "Cast" in first_ops

    images = list(photos.values())
    float_results = detect(OnnxRuntimeEngine(float_dir, float_spec), float_spec, images)
    uint8_results = detect(OnnxRuntimeEngine(uint8_dir, uint8_spec), uint8_spec, images)
    assert sum(len(r.detections) for r in float_results) > 0
    assert_same_detections(uint8_results, float_results)
    # The torch backend follows the spec too: uint8 in, the same wrapper as the graph.
    assert_same_detections(detect(TorchEngine(uint8_dir, uint8_spec), uint8_spec, images), float_results)


def test_onnxruntime_refuses_a_model_whose_input_type_the_spec_contradicts(tmp_path: Path) -> None:
    from inference.errors import ModelLoadError

    uint8_dir = export_family(tmp_path, "yolov5", "uint8", "--input-format", "uint8-nhwc")
    spec = ModelSpec.load(uint8_dir)
    wrong = ModelSpec.model_validate({**spec.model_dump(), "input_format": "float"})
    with pytest.raises(ModelLoadError, match=r"tensor\(uint8\)"):
        OnnxRuntimeEngine(uint8_dir, wrong).load()
