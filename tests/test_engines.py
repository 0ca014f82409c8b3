"""Engines on a tiny generated network (exported to ONNX in a tmp dir), never the real model."""

from __future__ import annotations

import sys
import types
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from inference.engines import create_engine
from inference.engines.onnxruntime import DYNAMIC_MAX_BATCH, OnnxRuntimeEngine
from inference.engines.tensorrt import TensorRTEngine
from inference.errors import BackendUnavailableError, InferenceError, ModelLoadError
from inference.spec import ModelSpec, TorchSource, YoloV8DecoderSpec

torch: Any = pytest.importorskip("torch")
Module: Any = torch.nn.Module

SIZE = 16


class TinyNet(Module):
    """Conv -> two heads, so output naming and ordering are exercised."""

    output_names: tuple[str, ...] = ("second", "first")

    def __init__(self, channels: int = 4, scale: float = 1.0) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, channels, 3, padding=1)
        self.head = torch.nn.Conv2d(channels, 2, 1)
        self.scale = scale

    def forward(self, x: Any) -> tuple[Any, Any]:
        y = torch.relu(self.conv(x)) * self.scale
        return self.head(y).flatten(1), y.mean(dim=(2, 3))


class DictNet(TinyNet):
    def forward(self, x: Any) -> dict[str, Any]:  # type: ignore[override]
        second, first = super().forward(x)
        return {"first": first, "second": second}


class PlainNet(TinyNet):
    output_names: tuple[str, ...] = ()  # falls back to the spec's outputs

    def forward(self, x: Any) -> Any:
        return super().forward(x)[1]


def make_spec(factory: str = f"{__name__}:TinyNet", **kwargs: Any) -> ModelSpec:
    return ModelSpec(
        name="tiny",
        input_width=SIZE,
        input_height=SIZE,
        class_names=("a",),
        decoder=YoloV8DecoderSpec(output="output0"),
        torch_source=TorchSource(factory=factory, kwargs=kwargs),
    )


def save_model(model_dir: Path, spec: ModelSpec, *, dynamic: bool = True, seed: int = 0) -> Any:
    torch.manual_seed(seed)
    model = TinyNet(**spec.torch_source.kwargs).eval()  # type: ignore[union-attr]
    torch.save(model.state_dict(), model_dir / "model.pth")
    example = torch.zeros(2 if dynamic else 3, 3, SIZE, SIZE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter, as engine_build uses
        torch.onnx.export(
            model,
            (example,),
            str(model_dir / spec.onnx_file),
            dynamo=False,
            opset_version=17,
            input_names=[spec.input_name],
            output_names=list(TinyNet.output_names),
            dynamic_axes={n: {0: "N"} for n in (spec.input_name, *TinyNet.output_names)} if dynamic else None,
        )
    spec.save(model_dir)
    return model


def batch(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, SIZE, SIZE)).astype(np.float32)


def torch_reference(model: Any, x: np.ndarray) -> dict[str, np.ndarray]:
    with torch.inference_mode():
        second, first = model(torch.from_numpy(x))
    return {"second": second.numpy(), "first": first.numpy()}


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[Path, ModelSpec, Any]:
    spec = make_spec()
    model = save_model(tmp_path, spec)
    return tmp_path, spec, model


# ------------------------------------------------------------------------------------------ onnxruntime


def test_onnxruntime_matches_torch(tiny: tuple[Path, ModelSpec, Any]) -> None:
    model_dir, spec, model = tiny
    engine = OnnxRuntimeEngine(model_dir, spec)
    engine.load()
    assert engine.provider == "CPUExecutionProvider"  # no GPU providers in this onnxruntime build
    assert engine.max_batch_size == DYNAMIC_MAX_BATCH
    engine.warmup((1, 4))
    for n in (1, 5):
        x = batch(n)
        got = engine.infer(x)
        assert set(got) == {"first", "second"}
        for name, expected in torch_reference(model, x).items():
            assert got[name].shape[0] == n
            np.testing.assert_allclose(got[name], expected, rtol=1e-4, atol=1e-5)
    engine.close()
    with pytest.raises(InferenceError):
        engine.infer(batch(1))


def test_onnxruntime_fixed_batch(tmp_path: Path) -> None:
    spec = make_spec()
    save_model(tmp_path, spec, dynamic=False)
    engine = OnnxRuntimeEngine(tmp_path, spec, providers=["CPUExecutionProvider"], intra_op_threads=1)
    engine.load()
    assert engine.max_batch_size == 3
    assert engine.infer(batch(3))["first"].shape == (3, 4)
    with pytest.raises(InferenceError):
        engine.infer(batch(4))
    with pytest.raises(InferenceError):  # onnxruntime itself refuses a batch the model does not take
        engine.infer(batch(2))


def test_onnxruntime_through_the_registry(tiny: tuple[Path, ModelSpec, Any]) -> None:
    model_dir, spec, _ = tiny
    engine = create_engine("onnxruntime", model_dir, spec, providers=["CPUExecutionProvider"])
    assert isinstance(engine, OnnxRuntimeEngine)
    engine.load()
    assert engine.backend == "onnxruntime"


def test_onnxruntime_missing_and_corrupt_models(tmp_path: Path) -> None:
    spec = make_spec()
    with pytest.raises(ModelLoadError, match="no ONNX model"):
        OnnxRuntimeEngine(tmp_path, spec).load()
    (tmp_path / spec.onnx_file).write_bytes(b"\x08\x07this is not a protobuf" * 20)
    with pytest.raises(ModelLoadError, match="cannot load"):
        OnnxRuntimeEngine(tmp_path, spec).load()


def test_onnxruntime_input_name_must_match(tiny: tuple[Path, ModelSpec, Any]) -> None:
    model_dir, spec, _ = tiny
    wrong = spec.model_copy(update={"input_name": "pixels"})
    with pytest.raises(ModelLoadError, match="pixels"):
        OnnxRuntimeEngine(model_dir, wrong).load()


def test_onnxruntime_unavailable_providers(tiny: tuple[Path, ModelSpec, Any]) -> None:
    model_dir, spec, _ = tiny
    with pytest.raises(BackendUnavailableError):
        OnnxRuntimeEngine(model_dir, spec, providers=["NoSuchExecutionProvider"]).load()
    # Asking for CUDA first falls back to what is there.
    engine = OnnxRuntimeEngine(model_dir, spec, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    engine.load()
    assert engine.provider == "CPUExecutionProvider"


def test_onnxruntime_wrong_input_shape_is_an_inference_error(tiny: tuple[Path, ModelSpec, Any]) -> None:
    model_dir, spec, _ = tiny
    engine = OnnxRuntimeEngine(model_dir, spec)
    engine.load()
    with pytest.raises(InferenceError, match="onnxruntime failed"):
        engine.infer(np.zeros((1, 3, SIZE + 1, SIZE), np.float32))


# ------------------------------------------------------------------------------------------------ torch


def test_torch_engine_matches_module(tiny: tuple[Path, ModelSpec, Any]) -> None:
    from inference.engines.torch import TorchEngine

    model_dir, spec, model = tiny
    engine = TorchEngine(model_dir, spec, threads=1)
    engine.load()
    assert engine.provider.startswith("torch ") and engine.provider.endswith("cpu")
    engine.warmup((2,))
    x = batch(3)
    got = engine.infer(x)
    for name, expected in torch_reference(model, x).items():
        np.testing.assert_allclose(got[name], expected, rtol=1e-6)
    # And it agrees with the ONNX export of the same weights.
    ort_engine = OnnxRuntimeEngine(model_dir, spec)
    ort_engine.load()
    for name, value in ort_engine.infer(x).items():
        np.testing.assert_allclose(got[name], value, rtol=1e-4, atol=1e-5)


def test_torch_engine_kwargs_path_kwargs_and_output_conventions(tmp_path: Path) -> None:
    from inference.engines.torch import TorchEngine

    (tmp_path / "config.txt").write_text("3")
    source = TorchSource(
        factory=f"{__name__}:build_from_file", kwargs={"config": "config.txt"}, path_kwargs=("config",)
    )
    spec = make_spec().model_copy(update={"torch_source": source})
    torch.manual_seed(0)
    torch.save(TinyNet(channels=3).state_dict(), tmp_path / "model.pth")
    engine = TorchEngine(tmp_path, spec)
    engine.load()
    out = engine.infer(batch(2))
    assert out["first"].shape == (2, 3)  # channels came from the file named by the path kwarg

    for factory, expected in [("DictNet", {"first", "second"}), ("PlainNet", {"output0"})]:
        torch.save(TinyNet().state_dict(), tmp_path / "model.pth")
        engine = TorchEngine(tmp_path, make_spec(f"{__name__}:{factory}"))
        engine.load()
        assert set(engine.infer(batch(1))) == expected


def build_from_file(config: str) -> TinyNet:
    return TinyNet(channels=int(Path(config).read_text()))


def test_torch_engine_load_errors(tmp_path: Path, tiny: tuple[Path, ModelSpec, Any]) -> None:
    from inference.engines.torch import TorchEngine

    model_dir, spec, _ = tiny
    # A state dict for another shape of network: strict loading refuses it.
    torch.save(TinyNet(channels=7).state_dict(), tmp_path / "other.pth")
    assert spec.torch_source is not None
    other = spec.model_copy(
        update={"torch_source": spec.torch_source.model_copy(update={"weights": "other.pth"})}
    )
    with pytest.raises(ModelLoadError, match="cannot build"):
        TorchEngine(tmp_path, other).load()
    with pytest.raises(ModelLoadError, match="no weights"):
        TorchEngine(tmp_path / "nowhere", spec).load()
    with pytest.raises(ModelLoadError, match="cannot import"):
        TorchEngine(model_dir, make_spec("no_such_module_xyz:build")).load()
    with pytest.raises(ModelLoadError, match="torch_source"):
        TorchEngine(model_dir, spec.model_copy(update={"torch_source": None})).load()
    with pytest.raises(InferenceError):
        TorchEngine(model_dir, spec).infer(batch(1))


def test_torch_engine_without_torch(
    monkeypatch: pytest.MonkeyPatch, tiny: tuple[Path, ModelSpec, Any]
) -> None:
    from inference.engines.torch import TorchEngine

    model_dir, spec, _ = tiny
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    with pytest.raises(BackendUnavailableError, match="torch is not installed"):
        TorchEngine(model_dir, spec).load()


# --------------------------------------------------------------------------------------------- tensorrt


def test_tensorrt_missing_library_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tiny: tuple[Path, ModelSpec, Any]
) -> None:
    model_dir, spec, _ = tiny
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    engine = create_engine("tensorrt", model_dir, spec)  # constructing never needs TensorRT
    with pytest.raises(BackendUnavailableError, match="TensorRT is not installed"):
        engine.load()


class FakeCudaRuntime(types.ModuleType):
    """Just enough of cuda.bindings.runtime to report how many GPUs there are."""

    class cudaError_t:
        cudaSuccess = 0
        cudaErrorNoDevice = 100

    def __init__(self, devices: int) -> None:
        super().__init__("cuda.bindings.runtime")
        self.devices = devices

    def cudaGetDeviceCount(self) -> tuple[int, int]:
        if self.devices == 0:
            return (self.cudaError_t.cudaErrorNoDevice, 0)
        return (self.cudaError_t.cudaSuccess, self.devices)


def fake_gpu_stack(monkeypatch: pytest.MonkeyPatch, devices: int) -> None:
    runtime = FakeCudaRuntime(devices)
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = runtime  # type: ignore[attr-defined]
    cuda = types.ModuleType("cuda")
    cuda.bindings = bindings  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    monkeypatch.setitem(sys.modules, "cuda", cuda)
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", runtime)


def test_tensorrt_without_a_gpu(monkeypatch: pytest.MonkeyPatch, tiny: tuple[Path, ModelSpec, Any]) -> None:
    model_dir, spec, _ = tiny
    fake_gpu_stack(monkeypatch, devices=0)
    with pytest.raises(BackendUnavailableError, match="GPU"):
        TensorRTEngine(model_dir, spec).load()


def test_tensorrt_missing_engine_file(
    monkeypatch: pytest.MonkeyPatch, tiny: tuple[Path, ModelSpec, Any]
) -> None:
    model_dir, spec, _ = tiny
    fake_gpu_stack(monkeypatch, devices=1)
    with pytest.raises(ModelLoadError, match="no TensorRT engine"):
        TensorRTEngine(model_dir, spec, engine_file="missing.engine").load()
    with pytest.raises(InferenceError):
        TensorRTEngine(model_dir, spec).infer(batch(1))


def _gpu_tensorrt() -> Any:
    trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed")
    try:
        from cuda.bindings import runtime
    except ImportError:
        pytest.skip("cuda-python is not installed")
    err, count = runtime.cudaGetDeviceCount()
    if err != runtime.cudaError_t.cudaSuccess or count == 0:
        pytest.skip("no NVIDIA GPU")
    return trt


@pytest.mark.gpu
def test_tensorrt_matches_onnxruntime(tiny: tuple[Path, ModelSpec, Any]) -> None:
    trt = _gpu_tensorrt()
    model_dir, spec, _ = tiny
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse((model_dir / spec.onnx_file).read_bytes())
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape(spec.input_name, (1, 3, SIZE, SIZE), (4, 3, SIZE, SIZE), (8, 3, SIZE, SIZE))
    config.add_optimization_profile(profile)
    (model_dir / "model.engine").write_bytes(bytes(builder.build_serialized_network(network, config)))

    engine = TensorRTEngine(model_dir, spec)
    engine.load()
    try:
        assert (engine.min_batch_size, engine.max_batch_size) == (1, 8)
        assert engine.provider.startswith("TensorRT ")
        reference = OnnxRuntimeEngine(model_dir, spec)
        reference.load()
        for n in (1, 3, 8):
            x = batch(n)
            got, expected = engine.infer(x), reference.infer(x)
            for name in expected:
                np.testing.assert_allclose(got[name], expected[name], rtol=1e-3, atol=1e-3)
        with pytest.raises(InferenceError):
            engine.infer(batch(9))
    finally:
        engine.close()
