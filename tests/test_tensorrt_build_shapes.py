"""The TensorRT builder's optimisation profile follows the served input (a uint8-nhwc model's input is
NHWC even when its network is NCHW). TensorRT cannot run here: a recording stand-in takes its place."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from engine_build import tensorrt as trt_build
from inference.spec import ModelSpec, YoloV8DecoderSpec


class _Recorder:
    """Every TensorRT object the builder touches: accepts any call, records the profile's shapes."""

    def __init__(self, shapes: dict[str, Any]) -> None:
        self._shapes = shapes

    def __call__(self, *args: Any, **kwargs: Any) -> _Recorder:
        return self

    def __getattr__(self, name: str) -> Any:
        if name == "set_shape":
            return lambda input_name, lo, opt, hi: self._shapes.update({input_name: (lo, opt, hi)})
        if name == "parse":
            return lambda data: True
        if name == "build_serialized_network":
            return lambda network, config: b"engine"
        return self


@pytest.mark.parametrize(
    ("input_format", "expected"),
    [("float", (3, 64, 96)), ("uint8-nhwc", (64, 96, 3)), ("uint8-nchw", (3, 64, 96))],
)
def test_profile_shapes_follow_the_served_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, input_format: str, expected: tuple[int, ...]
) -> None:
    ModelSpec(
        name="t", input_width=96, input_height=64, layout="NCHW", input_format=input_format,  # type: ignore[arg-type]
        class_names=("a",), decoder=YoloV8DecoderSpec(),
    ).save(tmp_path)  # fmt: skip
    (tmp_path / "model.onnx").write_bytes(b"onnx")
    shapes: dict[str, Any] = {}
    fake = _Recorder(shapes)
    monkeypatch.setattr(trt_build, "import_tensorrt", lambda: SimpleNamespace(
        __version__="10.0", Logger=fake, Builder=fake, OnnxParser=fake, MemoryPoolType=fake, BuilderFlag=fake,
        NetworkDefinitionCreationFlag=fake,
    ))  # fmt: skip
    monkeypatch.setattr(trt_build, "gpu_identity", lambda: {"gpu": "stand-in", "compute_capability": "9.0"})
    trt_build.build_engine(tmp_path, fp16=False, max_batch=4, force=True)
    assert shapes["input"] == ((1, *expected), (2, *expected), (4, *expected))
