"""Typed options per backend, and which precisions each backend offers (no engine library needed for most)."""

from __future__ import annotations

import json
import sys
from inspect import signature
from pathlib import Path

import pytest

from inference.engines import BACKENDS, OPTIONS, create_engine, engine_precisions
from inference.engines.onnxruntime import OnnxRuntimeEngine
from inference.engines.openvino import OpenVinoEngine
from inference.engines.options import (
    BackendOptionsError,
    OnnxRuntimeOptions,
    TensorRTOptions,
    int8_onnx_file,
    validate_options,
)
from inference.engines.tensorrt import TensorRTEngine, engine_file_for
from inference.engines.torch import TorchEngine
from inference.errors import BackendUnavailableError
from inference.spec import ModelSpec, YoloV8DecoderSpec

SPEC = ModelSpec(name="t", input_width=8, input_height=8, class_names=("a",), decoder=YoloV8DecoderSpec())


@pytest.mark.parametrize(
    "engine", [OnnxRuntimeEngine, OpenVinoEngine, TensorRTEngine, TorchEngine], ids=lambda e: e.backend
)
def test_every_option_is_an_engine_keyword(engine: type) -> None:
    # create_engine passes the validated options as keywords: the two must never drift apart.
    keywords = set(signature(engine).parameters) - {"model_dir", "spec"}
    assert set(OPTIONS[engine.backend].model_fields) | {"precision"} <= keywords
    assert set(BACKENDS) == set(OPTIONS)


def test_unknown_and_invalid_options_name_the_backend() -> None:
    with pytest.raises(
        BackendOptionsError, match=r"unknown option\(s\) \['hint'\] for the onnxruntime backend"
    ):
        validate_options("onnxruntime", {"hint": "latency"})
    with pytest.raises(BackendOptionsError, match="invalid options for the tensorrt backend"):
        validate_options("tensorrt", {"device_id": -1})
    with pytest.raises(BackendOptionsError, match="takes OnnxRuntimeOptions"):
        validate_options("onnxruntime", TensorRTOptions())
    with pytest.raises(BackendOptionsError, match="unknown engine backend"):
        validate_options("tflite", {})
    # Comma-separated providers, as operators type them.
    assert validate_options("onnxruntime", {"providers": "A, B"}) == OnnxRuntimeOptions(providers=["A", "B"])


def test_create_engine_merges_keywords_over_options(tmp_path: Path) -> None:
    engine = create_engine(
        "onnxruntime", tmp_path, SPEC, OnnxRuntimeOptions(intra_op_threads=2), allow_spinning=True
    )
    assert isinstance(engine, OnnxRuntimeEngine)
    assert (engine.intra_op_threads, engine.allow_spinning, engine.precision) == (2, True, "fp32")
    with pytest.raises(BackendOptionsError, match="for the torch backend"):
        create_engine("torch", tmp_path, SPEC, providers=["x"])
    with pytest.raises(BackendUnavailableError, match="unknown precision"):
        create_engine("onnxruntime", tmp_path, SPEC, precision="int4")
    with pytest.raises(BackendUnavailableError, match="fp32 or int8, not bf16"):
        create_engine("onnxruntime", tmp_path, SPEC, precision="bf16")
    with pytest.raises(BackendUnavailableError, match="fp32 only"):
        create_engine("torch", tmp_path, SPEC, precision="fp16")


def test_int8_is_the_quantised_file_beside_the_model(tmp_path: Path) -> None:
    assert int8_onnx_file("model.onnx") == "model.int8.onnx"
    assert int8_onnx_file("mine.uint8.onnx") == "mine.uint8.int8.onnx"
    engine = create_engine("onnxruntime", tmp_path, SPEC, precision="int8")
    assert isinstance(engine, OnnxRuntimeEngine) and engine.model_path == tmp_path / "model.int8.onnx"
    assert engine_precisions("onnxruntime", tmp_path, SPEC) == ("fp32",)
    (tmp_path / "model.int8.onnx").write_bytes(b"")
    assert engine_precisions("onnxruntime", tmp_path, SPEC) == ("fp32", "int8")
    assert engine_precisions("torch", tmp_path, SPEC) == ("fp32",)


def test_tensorrt_engine_file_per_precision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert engine_file_for(tmp_path, "fp16") is None
    # `engine_build tensorrt` writes model.engine with a sidecar saying how it was built.
    (tmp_path / "model.engine").write_bytes(b"")
    (tmp_path / "model.engine.json").write_text(json.dumps({"fp16": True}))
    assert engine_file_for(tmp_path, "fp16") == tmp_path / "model.engine"
    assert engine_file_for(tmp_path, "fp32") is None
    (tmp_path / "model.int8.engine").write_bytes(b"")
    assert engine_file_for(tmp_path, "int8") == tmp_path / "model.int8.engine"
    engine = create_engine("tensorrt", tmp_path, SPEC, precision="fp16")
    assert isinstance(engine, TensorRTEngine) and engine.engine_path == tmp_path / "model.engine"
    explicit = create_engine("tensorrt", tmp_path, SPEC, engine_file="other.engine")
    assert isinstance(explicit, TensorRTEngine) and explicit.engine_path == tmp_path / "other.engine"
    # Which precisions: TensorRT itself must be importable first.
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(BackendUnavailableError, match="TensorRT is not installed"):
        engine_precisions("tensorrt", tmp_path, SPEC)
    monkeypatch.setitem(sys.modules, "tensorrt", type(sys)("tensorrt"))
    assert engine_precisions("tensorrt", tmp_path, SPEC) == ("fp16", "int8")
    assert engine_precisions("tensorrt", tmp_path, SPEC, {"engine_file": "model.engine"}) == ("fp16",)
