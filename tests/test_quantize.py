"""INT8 quantisation (engine_build/quantize.py) on hand-built graphs and on the real model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from engine_build.evalset import Photo, calibration_photos
from engine_build.quantize import PhotoCalibrationReader, fold_infinite_pads, head_nodes, quantize
from inference.preprocess import preprocess_one
from inference.spec import ModelSpec


def _pad_pool_model(fill: float) -> onnx.ModelProto:
    pads = numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads")
    value = numpy_helper.from_array(np.array(fill, np.float32), "fill")
    nodes = [
        helper.make_node("Pad", ["x", "pads", "fill"], ["padded"], name="pad", mode="constant"),
        helper.make_node("MaxPool", ["padded"], ["y"], name="pool", kernel_shape=[3, 3], strides=[2, 2]),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])],
        initializer=[pads, value],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    out: np.ndarray = session.run(None, {"x": x})[0]
    return out


def test_fold_infinite_pad_into_maxpool_computes_the_same() -> None:
    x = np.random.default_rng(0).normal(size=(1, 2, 8, 8)).astype(np.float32) - 5.0  # all negative
    model = _pad_pool_model(float("-inf"))
    before = _run(model, x)
    assert fold_infinite_pads(model) == ["pad"]
    onnx.checker.check_model(model)
    assert [n.op_type for n in model.graph.node] == ["MaxPool"]
    assert not model.graph.initializer  # the fill and pad sizes are gone with the Pad
    np.testing.assert_array_equal(_run(model, x), before)


def test_finite_pad_is_left_alone() -> None:
    model = _pad_pool_model(0.0)  # a zero fill changes the max of negative inputs: not foldable
    assert fold_infinite_pads(model) == []
    assert [n.op_type for n in model.graph.node] == ["Pad", "MaxPool"]


def test_head_nodes_stop_at_the_last_convolution() -> None:
    w = numpy_helper.from_array(np.ones((6, 2, 1, 1), np.float32), "w")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="head_conv"),
        helper.make_node("Split", ["c"], ["cls_raw", "reg_raw"], name="split", axis=1, num_outputs=2),
        helper.make_node("Sigmoid", ["cls_raw"], ["cls"], name="sigmoid"),
        helper.make_node("Transpose", ["reg_raw"], ["reg"], name="transpose", perm=[0, 2, 3, 1]),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
        [helper.make_tensor_value_info("cls", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("reg", TensorProto.FLOAT, None)],
        initializer=[w],
    )  # fmt: skip
    model = helper.make_model(graph)
    assert head_nodes(model) == ["sigmoid", "split", "transpose"]
    assert head_nodes(model, include_convs=True) == ["head_conv", "sigmoid", "split", "transpose"]


def test_calibration_reader_feeds_serving_preprocessing(
    model_dir: Path, photos: dict[str, np.ndarray]
) -> None:
    spec = ModelSpec.load(model_dir)
    items = [Photo("a", photos["astronaut"]), Photo("b", photos["coffee"])]
    reader = PhotoCalibrationReader(items, spec)
    first = reader.get_next()
    assert first is not None and set(first) == {spec.input_name}
    np.testing.assert_array_equal(first[spec.input_name][0], preprocess_one(photos["astronaut"], spec)[0])
    assert first[spec.input_name].shape == (1, 3, spec.input_height, spec.input_width)
    assert reader.get_next() is not None and reader.get_next() is None
    reader.rewind()
    assert reader.get_next() is not None


@pytest.fixture(scope="module")
def int8_dir(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the real model, quantised on a few calibration photos (min-max: the quickest)."""
    d = tmp_path_factory.mktemp("int8")
    shutil.copy(model_dir / "model.json", d / "model.json")
    (d / "model.onnx").symlink_to(model_dir / "model.onnx")
    quantize(d, photos=calibration_photos()[:4], method="minmax")
    return d


def test_quantize_writes_a_qdq_model_and_its_record(int8_dir: Path, model_dir: Path) -> None:
    path = int8_dir / "model.int8.onnx"
    model = onnx.load(str(path))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    assert "Pad" not in ops or all(n.name != "/Pad_1" for n in model.graph.node)  # folded into the pool
    record = json.loads((int8_dir / "model.int8.json").read_text())
    assert record["tool"] == "onnxruntime.quantization.quantize_static"
    assert record["onnxruntime"] == ort.__version__
    assert record["calibration_method"] == "minmax" and record["calibration_images"] == 4
    assert len(record["calibration_names_sha256"]) == 64 and record["created"]
    assert record["folded_pads"] == ["/Pad_1"]
    assert record["excluded_nodes"]  # the head's tail stays float
    # It runs, with the FP32 model's outputs, and close to them on a real photo.
    spec = ModelSpec.load(int8_dir)
    from skimage import data

    x = preprocess_one(np.ascontiguousarray(data.astronaut()[:, :, ::-1]), spec)[0][None]
    ref = ort.InferenceSession(str(model_dir / "model.onnx")).run(None, {"input": x})
    q = ort.InferenceSession(str(path)).run(None, {"input": x})
    for a, b in zip(ref, q, strict=True):
        assert a.shape == b.shape
    assert float(np.abs(ref[0] - q[0]).max()) < 0.2  # class scores, 0..1


def test_quantize_is_skipped_when_current_and_redone_when_not(int8_dir: Path) -> None:
    path = int8_dir / "model.int8.onnx"
    mtime = path.stat().st_mtime_ns
    quantize(int8_dir, photos=calibration_photos()[:4], method="minmax")
    assert path.stat().st_mtime_ns == mtime  # same model, settings and photos: nothing to do
    quantize(int8_dir, photos=calibration_photos()[:3], method="minmax")
    assert path.stat().st_mtime_ns != mtime
    assert json.loads((int8_dir / "model.int8.json").read_text())["calibration_images"] == 3


def test_quantize_rejects_unknown_settings(int8_dir: Path) -> None:
    with pytest.raises(ValueError, match="calibration method"):
        quantize(int8_dir, method="magic")
    with pytest.raises(ValueError, match="activations"):
        quantize(int8_dir, activations="int4")
