"""The default NanoDet-g model exported with a uint8 input (normalisation in the graph) detects exactly what
the float model does on real photos, through the real Detector and ONNX Runtime."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from engine_build.export import export
from inference.engines import create_engine
from inference.pipeline import Detector
from inference.spec import ModelSpec
from inference.types import DetectionResult, DetectParams

pytestmark = pytest.mark.slow  # one export of the real model: about 20-45 s


@pytest.fixture(scope="module")
def uint8_dir(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("nanodet-uint8")
    for path in model_dir.iterdir():  # the spec, the .pth and its architecture file; not the float ONNX
        if path.is_file() and path.suffix != ".onnx" and not path.name.endswith(".engine"):
            shutil.copy2(path, target / path.name)
    export(target, input_format="uint8-nhwc")  # raises unless parity against the float model holds
    return target


def detect_all(model_dir: Path, images: list[np.ndarray], params: DetectParams) -> list[DetectionResult]:
    spec = ModelSpec.load(model_dir)
    engine = create_engine("onnxruntime", model_dir, spec, providers=["CPUExecutionProvider"])
    engine.load()
    try:
        return Detector(engine, spec).detect_batch_sync(images, params)
    finally:
        engine.close()


def test_uint8_nanodet_detects_what_the_float_one_does(
    model_dir: Path, uint8_dir: Path, photos: dict[str, np.ndarray]
) -> None:
    spec = ModelSpec.load(uint8_dir)
    assert spec.input_format == "uint8-nhwc" and ModelSpec.load(model_dir).input_format == "float"
    graph = onnx.load(str(uint8_dir / "model.onnx")).graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8

    images = list(photos.values())
    params = DetectParams(score_threshold=0.2)  # low, so that many boxes are compared
    float_results = detect_all(model_dir, images, params)
    uint8_results = detect_all(uint8_dir, images, params)
    compared = 0
    for name, f, u in zip(photos, float_results, uint8_results, strict=True):
        assert [d.label for d in u.detections] == [d.label for d in f.detections], name
        for du, df in zip(u.detections, f.detections, strict=True):
            assert du.score == pytest.approx(df.score, abs=1e-4)
            np.testing.assert_allclose(du.box, df.box, atol=0.05)
            compared += 1
    assert compared >= 4
    labels = {name: r.detections[0].label for name, r in zip(photos, uint8_results, strict=True)}
    assert labels["astronaut"] == "person" and labels["motorcycle"] == "motorcycle"
