"""INT8 quantisation (engine_build/quantize.py) on hand-built graphs and on the real model, and the
TensorRT FP16/INT8 build plumbing (engine_build/tensorrt.py) without and (marked gpu) with a GPU."""

from __future__ import annotations

import json
import shutil
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from engine_build import tensorrt as trt_build
from engine_build.evalset import Photo, calibration_photos
from engine_build.quantize import PhotoCalibrationReader, fold_infinite_pads, head_nodes, quantize
from engine_build.saturation import weight_dequantizers
from inference.engines.tensorrt import engine_file_for
from inference.gate import cpu_identity, int8_kernel_class, u8s8_saturates
from inference.preprocess import input_shape, preprocess_one
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
    # The weight format this CPU's integer kernels need, and why (tests/test_cpu_classes.py: every class).
    flags = cpu_identity()[1]
    assert record["int8_kernels"] == int8_kernel_class(flags)
    if u8s8_saturates(flags):
        # AVX2 only: the first convolution sees the full-range image and saturates; it keeps uint8 weights,
        # which brings the file back to (almost) the exact int8 result.
        assert record["scheme"] == "s8-guarded" and "no VNNI or AMX" in record["scheme_reason"]
        assert "/convolution/Conv" in record["guarded_layers"]
        distance = record["saturation_distance"]
        assert distance["guarded"] < 0.2 * distance["all_int8"], distance
        assert "/convolution/Conv" not in weight_dequantizers(onnx.load(str(path)))  # uint8 there now
    else:
        assert record["scheme"] == "s8" and "guarded_layers" not in record
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


def test_a_model_directory_moved_to_another_cpu_class_is_quantised_again(
    int8_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The record names the kernels the file was made for: on a CPU of another class `make model` (quantize
    with its skip check) writes the file that class needs instead of keeping this one."""
    import engine_build.quantize as quantize_module

    for name in ("model.json", "model.int8.onnx", "model.int8.json"):
        shutil.copy(int8_dir / name, tmp_path / name)
    (tmp_path / "model.onnx").symlink_to((int8_dir / "model.onnx").resolve())
    here = cpu_identity()[1]
    other = ("avx2", "avx512_vnni") if u8s8_saturates(here) else ("avx2", "fma")
    monkeypatch.setattr(quantize_module, "cpu_identity", lambda: ("another CPU", other))
    mtime = (tmp_path / "model.int8.onnx").stat().st_mtime_ns
    quantize(tmp_path, photos=calibration_photos()[:4], method="minmax")
    record = json.loads((tmp_path / "model.int8.json").read_text())
    assert (tmp_path / "model.int8.onnx").stat().st_mtime_ns != mtime
    assert record["int8_kernels"] == int8_kernel_class(other) != int8_kernel_class(here)
    assert record["scheme"] == ("s8" if u8s8_saturates(here) else "s8-guarded")


def test_quantize_rejects_unknown_settings(int8_dir: Path) -> None:
    with pytest.raises(ValueError, match="calibration method"):
        quantize(int8_dir, method="magic")
    with pytest.raises(ValueError, match="activations"):
        quantize(int8_dir, activations="int4")
    with pytest.raises(ValueError, match="weight scheme"):
        quantize(int8_dir, scheme="int4")


# --- TensorRT FP16 / INT8 plumbing (engine_build/tensorrt.py) -----------------------------------------


def test_engine_files_per_precision_are_what_the_backend_loads(tmp_path: Path) -> None:
    assert [trt_build.engine_file(p) for p in ("fp32", "fp16", "int8")] == [
        "model.fp32.engine", "model.fp16.engine", "model.int8.engine",
    ]  # fmt: skip
    with pytest.raises(ValueError):
        trt_build.engine_file("bf16")
    gpu = {"gpu": "NVIDIA H200", "compute_capability": "9.0"}
    for precision in ("fp16", "int8"):
        path = tmp_path / trt_build.engine_file(precision)
        path.write_bytes(b"engine")
        meta = trt_build.engine_metadata("abc", "10.9", gpu, precision=precision, max_batch=8)
        trt_build.sidecar_path(path).write_text(json.dumps(meta))
        assert engine_file_for(tmp_path, precision) == path
        assert meta["precision"] == precision and meta["fp16"] is (precision == "fp16")
    assert engine_file_for(tmp_path, "fp32") is None


def test_engine_is_current_compares_every_key(tmp_path: Path) -> None:
    gpu = {"gpu": "NVIDIA H200", "compute_capability": "9.0"}
    calibration = {"method": "entropy2", "names_sha256": "n1"}
    meta = trt_build.engine_metadata(
        "abc", "10.9", gpu, precision="int8", max_batch=8, calibration=calibration
    )
    path = tmp_path / "model.int8.engine"
    assert not trt_build.engine_is_current(path, meta)  # nothing built yet
    path.write_bytes(b"engine")
    trt_build.sidecar_path(path).write_text(json.dumps(meta))
    assert trt_build.engine_is_current(path, meta)
    other_gpu = trt_build.engine_metadata("abc", "10.9", {**gpu, "gpu": "NVIDIA H100"}, precision="int8",
                                          max_batch=8, calibration=calibration)  # fmt: skip
    other_photos = trt_build.engine_metadata("abc", "10.9", gpu, precision="int8", max_batch=8,
                                             calibration={**calibration, "names_sha256": "n2"})  # fmt: skip
    other_model = trt_build.engine_metadata("abd", "10.9", gpu, precision="int8", max_batch=8,
                                            calibration=calibration)  # fmt: skip
    for expected in (other_gpu, other_photos, other_model):
        assert not trt_build.engine_is_current(path, expected)
    trt_build.sidecar_path(path).write_text("{broken")
    assert not trt_build.engine_is_current(path, meta)


def test_calibration_batches_are_serving_tensors(model_dir: Path, photos: dict[str, np.ndarray]) -> None:
    spec = ModelSpec.load(model_dir)
    items = [Photo(name, image) for name, image in photos.items()]  # 4 photos
    batches = list(trt_build.calibration_batches(items, spec, batch_size=3))
    assert len(batches) == 1  # the 4th photo would not fill a batch of 3
    assert batches[0].shape == (3, 3, spec.input_height, spec.input_width) and batches[0].flags.c_contiguous
    np.testing.assert_array_equal(batches[0][1], preprocess_one(items[1].image, spec)[0])
    assert len(list(trt_build.calibration_batches(items, spec))) == 4  # the default batch of 1 uses all
    with pytest.raises(ValueError):
        next(trt_build.calibration_batches(items, spec, batch_size=0))


def test_calibration_cache_is_used_only_for_its_key(tmp_path: Path, model_dir: Path) -> None:
    spec = ModelSpec.load(model_dir)
    items = [Photo("a", np.zeros((8, 8, 3), np.uint8)), Photo("b", np.zeros((8, 8, 3), np.uint8))]
    key = trt_build.calibration_key("abc", items, spec, "10.9")
    assert key["names_sha256"] and key["images"] == 2 and key["input_format"] == spec.input_format
    cache = trt_build.CalibrationCache(tmp_path / trt_build.CALIBRATION_CACHE, key)
    assert cache.read() is None
    cache.write(b"TRT-cache")
    assert cache.read() == b"TRT-cache"
    fewer = trt_build.calibration_key("abc", items[:1], spec, "10.9")
    assert trt_build.CalibrationCache(cache.path, fewer).read() is None
    newer = trt_build.calibration_key("abc", items, spec, "10.10")
    assert trt_build.CalibrationCache(cache.path, newer).read() is None


class _FakeRuntime:
    """cuda-python's runtime API surface the calibrator uses, on host memory."""

    class cudaError_t:  # cuda-python's spellings
        cudaSuccess = 0

    class cudaMemcpyKind:
        cudaMemcpyHostToDevice = 1

    def __init__(self) -> None:
        self.buffers: dict[int, bytearray] = {}
        self.freed: list[int] = []

    def cudaMalloc(self, nbytes: int) -> tuple[int, int]:
        ptr = 0x1000 * (len(self.buffers) + 1)
        self.buffers[ptr] = bytearray(nbytes)
        return 0, ptr

    def cudaMemcpy(self, dst: int, src: int, nbytes: int, kind: int) -> tuple[int]:
        import ctypes

        self.buffers[dst][:] = ctypes.string_at(src, nbytes)
        return (0,)

    def cudaFree(self, ptr: int) -> tuple[int]:
        self.freed.append(ptr)
        return (0,)


def test_entropy_calibrator_feeds_each_batch_once_then_caches(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = _FakeRuntime()
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = runtime  # type: ignore[attr-defined]
    cuda = types.ModuleType("cuda")
    cuda.bindings = bindings  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "cuda", cuda)
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", runtime)

    class _Base:
        def __init__(self) -> None:
            pass

    fake_trt: Any = types.SimpleNamespace(IInt8EntropyCalibrator2=_Base)
    spec = ModelSpec.load(model_dir)
    batches = [np.full((1, *input_shape(spec)), i, np.float32) for i in range(3)]
    cache = trt_build.CalibrationCache(tmp_path / "c.calib", {"k": 1})
    calibrator = trt_build._entropy_calibrator(fake_trt, batches, cache)
    assert calibrator.get_batch_size() == 1
    seen = []
    while (pointers := calibrator.get_batch(["input"])) is not None:
        (ptr,) = pointers
        seen.append(np.frombuffer(bytes(runtime.buffers[ptr]), np.float32)[0])
    assert seen == [0.0, 1.0, 2.0]
    assert calibrator.read_calibration_cache() is None
    calibrator.write_calibration_cache(b"table")
    assert calibrator.read_calibration_cache() == b"table"
    calibrator.free()
    assert runtime.freed == [next(iter(runtime.buffers))]


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
@pytest.mark.slow
def test_tensorrt_fp16_and_int8_engines_pass_the_gate(model_dir: Path, tmp_path: Path) -> None:
    """Real engines on the real model, scored by the real gate against ONNX Runtime FP32."""
    _gpu_tensorrt()
    from engine_build.evalset import evaluation_photos
    from engine_build.precision import run_gate

    shutil.copy(model_dir / "model.json", tmp_path / "model.json")
    (tmp_path / "model.onnx").symlink_to(model_dir / "model.onnx")
    for precision in ("fp16", "int8"):
        path = trt_build.build_engine(tmp_path, precision=precision, max_batch=8)
        assert path.name == f"model.{precision}.engine" and trt_build.sidecar_path(path).is_file()
    assert (tmp_path / trt_build.CALIBRATION_CACHE).is_file() or json.loads(
        trt_build.sidecar_path(tmp_path / "model.int8.engine").read_text()
    )["calibration"]["method"] == "qdq"
    photos = evaluation_photos()[:24]
    _, measured = run_gate(
        tmp_path, photos=photos,
        combos=[("onnxruntime", "fp32"), ("tensorrt", "fp16"), ("tensorrt", "int8")],
    )  # fmt: skip
    scores = {m.precision: m.score for m in measured if m.backend == "tensorrt"}
    assert scores["fp16"].map >= 0.9, scores
    assert scores["int8"].recall50 >= 0.8, scores  # INT8 is gated, not assumed: it must at least find them
    # Rebuilding is skipped while the sidecar matches.
    mtime = (tmp_path / "model.fp16.engine").stat().st_mtime_ns
    trt_build.build_engine(tmp_path, precision="fp16", max_batch=8)
    assert (tmp_path / "model.fp16.engine").stat().st_mtime_ns == mtime


class _FakeBuilderConfig:
    def __init__(self, log: dict[str, Any]) -> None:
        self._log = log

    def set_memory_pool_limit(self, *args: Any) -> None: ...

    def set_flag(self, flag: str) -> None:
        self._log.setdefault("flags", []).append(flag)

    def add_optimization_profile(self, profile: Any) -> None: ...

    def set_calibration_profile(self, profile: Any) -> None:
        self._log["calibration_profile"] = profile.shapes

    @property
    def int8_calibrator(self) -> Any:
        return self._log.get("calibrator")

    @int8_calibrator.setter
    def int8_calibrator(self, calibrator: Any) -> None:
        self._log["calibrator"] = calibrator


class _FakeProfile:
    def __init__(self) -> None:
        self.shapes: dict[str, Any] = {}

    def set_shape(self, name: str, lo: Any, opt: Any, hi: Any) -> None:
        self.shapes[name] = (lo, opt, hi)


def _fake_tensorrt(log: dict[str, Any]) -> Any:
    """Just enough of TensorRT's builder API for build_engine; the build 'calibrates' by pulling every batch."""

    class Builder:
        platform_has_fast_fp16 = True

        def __init__(self, logger: Any) -> None: ...

        def create_network(self, flags: int) -> object:
            return object()

        def create_builder_config(self) -> _FakeBuilderConfig:
            return _FakeBuilderConfig(log)

        def create_optimization_profile(self) -> _FakeProfile:
            return _FakeProfile()

        def build_serialized_network(self, network: Any, config: Any) -> bytes:
            calibrator = log.get("calibrator")
            if calibrator is not None and calibrator.read_calibration_cache() is None:
                batches = 0
                while calibrator.get_batch(["input"]) is not None:
                    batches += 1
                log["calibrated_batches"] = batches
                calibrator.write_calibration_cache(b"calibration-table")
            return b"serialized-engine"

    class OnnxParser:
        num_errors = 0

        def __init__(self, network: Any, logger: Any) -> None: ...

        def parse(self, data: bytes) -> bool:
            return True

    class Logger:
        WARNING = 2

        def __init__(self, level: int) -> None: ...

    class _Calibrator:
        def __init__(self) -> None: ...

    return types.SimpleNamespace(
        __version__="10.9", Builder=Builder, OnnxParser=OnnxParser, Logger=Logger,
        IInt8EntropyCalibrator2=_Calibrator, MemoryPoolType=types.SimpleNamespace(WORKSPACE="ws"),
        BuilderFlag=types.SimpleNamespace(FP16="FP16", INT8="INT8"),
    )  # fmt: skip


def test_int8_build_calibrates_once_on_the_photos_then_reuses_the_cache(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch, photos: dict[str, np.ndarray]
) -> None:
    """build_engine's INT8 path with a stand-in TensorRT and CUDA runtime: flags, calibration profile,
    every photo through the calibrator, the cache and the sidecar; a second build with other photos
    rebuilds, the same photos reuse everything."""
    runtime = _FakeRuntime()
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = runtime  # type: ignore[attr-defined]
    cuda = types.ModuleType("cuda")
    cuda.bindings = bindings  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "cuda", cuda)
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", runtime)
    log: dict[str, Any] = {}
    monkeypatch.setattr(trt_build, "import_tensorrt", lambda: _fake_tensorrt(log))
    monkeypatch.setattr(trt_build, "gpu_identity", lambda: {"gpu": "stand-in", "compute_capability": "9.0"})
    shutil.copy(model_dir / "model.json", tmp_path / "model.json")
    (tmp_path / "model.onnx").symlink_to(model_dir / "model.onnx")
    items = [Photo(f"p/{name}", image) for name, image in photos.items()]

    path = trt_build.build_engine(tmp_path, precision="int8", max_batch=4, photos=items)
    assert path == tmp_path / "model.int8.engine" and path.read_bytes() == b"serialized-engine"
    assert log["flags"] == ["FP16", "INT8"]
    spec = ModelSpec.load(tmp_path)
    one = (1, *input_shape(spec))
    assert log["calibration_profile"] == {spec.input_name: (one, one, one)}
    assert log["calibrated_batches"] == len(items)
    assert (tmp_path / trt_build.CALIBRATION_CACHE).read_bytes() == b"calibration-table"
    meta = json.loads(trt_build.sidecar_path(path).read_text())
    assert meta["precision"] == "int8" and meta["gpu"] == "stand-in" and meta["max_batch"] == 4
    assert meta["calibration"]["images"] == len(items) and meta["calibration"]["method"] == "entropy2"
    assert runtime.freed  # the calibration buffer is released after the build
    assert engine_file_for(tmp_path, "int8") == path

    mtime = path.stat().st_mtime_ns
    trt_build.build_engine(tmp_path, precision="int8", max_batch=4, photos=items)
    assert path.stat().st_mtime_ns == mtime  # current: not rebuilt

    log.clear()
    trt_build.build_engine(tmp_path, precision="int8", max_batch=4, photos=items[:2])
    assert log["calibrated_batches"] == 2  # other photos: the old cache's key does not match
    assert json.loads(trt_build.sidecar_path(path).read_text())["calibration"]["images"] == 2
