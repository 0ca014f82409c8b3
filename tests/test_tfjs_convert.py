"""The TF.js -> PyTorch converter on small generated graphs whose answer is computed independently."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine_build.tfjs import ConversionError, build_module, convert_graph, read_weights


def _node(name: str, op: str, inputs: list[str] | None = None, **attr: Any) -> dict[str, Any]:
    return {"name": name, "op": op, "input": inputs or [], "attr": attr}


def _s(text: str) -> dict[str, str]:
    return {"s": base64.b64encode(text.encode()).decode()}


def _tiny_graph(weights: dict[str, np.ndarray], quantise: set[str]) -> tuple[dict[str, Any], bytes]:
    """Input NCHW -> NHWC -> pad -> conv(+bias) -> leaky relu -> NCHW -> reshape [1, C, -1] -> sigmoid.

    The reshape target is computed in-graph by SparseToDense + AddV2 of int32 constants, and its
    batch of 1 is hard-coded, as in the real NanoDet-g graph.
    """
    nodes = [
        _node("input_1", "Placeholder"),
        _node("perm_nhwc", "Const"),
        _node("perm_nchw", "Const"),
        _node("paddings", "Const"),
        _node("kernel", "Const"),
        _node("bias", "Const"),
        _node("sp_idx", "Const"),
        _node("sp_shape", "Const"),
        _node("sp_val", "Const"),
        _node("sp_default", "Const"),
        _node("base_shape", "Const"),
        _node("to_nhwc", "Transpose", ["input_1", "perm_nhwc"]),
        _node("pad", "Pad", ["to_nhwc", "paddings"]),
        _node(
            "conv",
            "Conv2D",
            ["pad", "kernel"],
            padding=_s("VALID"),
            data_format=_s("NHWC"),
            strides={"list": {"i": ["1", "2", "2", "1"]}},
        ),
        _node("conv_bias", "Add", ["conv", "bias"]),
        _node("act", "LeakyRelu", ["conv_bias"], alpha={"f": 0.1}),
        _node("to_nchw", "Transpose", ["act", "perm_nchw"]),
        _node("std", "SparseToDense", ["sp_idx", "sp_shape", "sp_val", "sp_default"]),
        _node("target", "AddV2", ["base_shape", "std"]),
        _node("flat", "Reshape", ["to_nchw", "target"]),
        _node("out", "Sigmoid", ["flat"]),
        _node("Identity", "Identity", ["out"]),
    ]
    manifest, blobs = [], []
    for name, array in weights.items():
        entry: dict[str, Any] = {"name": name, "shape": list(array.shape), "dtype": str(array.dtype)}
        if name in quantise:
            entry["quantization"] = {"dtype": "float16", "original_dtype": "float32"}
            blobs.append(array.astype(np.float16).tobytes())
        else:
            blobs.append(array.tobytes())
        manifest.append(entry)
    model = {
        "format": "graph-model",
        "modelTopology": {"node": nodes},
        "signature": {
            "outputs": {"Identity:0": {"name": "Identity:0", "tensorShape": {"dim": [{"size": "1"}]}}}
        },
        "weightsManifest": [{"paths": ["w.bin"], "weights": manifest}],
    }
    return model, b"".join(blobs)


def _weights(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "perm_nhwc": np.array([0, 2, 3, 1], np.int32),
        "perm_nchw": np.array([0, 3, 1, 2], np.int32),
        "paddings": np.array([[0, 0], [1, 1], [1, 1], [0, 0]], np.int32),
        "kernel": rng.standard_normal((3, 3, 3, 5)).astype(np.float32),  # HWIO
        "bias": rng.standard_normal(5).astype(np.float32),
        # SparseToDense([[1]], [3], [5], 0) = [0, 5, 0]; + [1, 0, -1] = [1, 5, -1]
        "sp_idx": np.array([[1]], np.int32),
        "sp_shape": np.array([3], np.int32),
        "sp_val": np.array([5], np.int32),
        "sp_default": np.array(0, np.int32),
        "base_shape": np.array([1, 0, -1], np.int32),
    }


def _reference(x: np.ndarray, w: dict[str, np.ndarray]) -> np.ndarray:
    kernel = torch.from_numpy(w["kernel"].transpose(3, 2, 0, 1).copy())
    y = F.conv2d(torch.from_numpy(x), kernel, torch.from_numpy(w["bias"]), stride=2, padding=1)
    y = F.leaky_relu(y, 0.1)
    return torch.sigmoid(y.reshape(x.shape[0], 5, -1)).numpy()


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    w = _weights(np.random.default_rng(0))
    model, blob = _tiny_graph(w, quantise=set())
    (tmp_path / "w.bin").write_bytes(blob)
    return model, w


def test_converted_module_matches_reference_and_batches(tiny: tuple[dict[str, Any], dict[str, np.ndarray]], tmp_path: Path) -> None:  # fmt: skip
    model, w = tiny
    converted = convert_graph(model, read_weights(model, tmp_path))
    # Conv + bias fused into one nn.Conv2d; shape arithmetic folded away entirely.
    ops = [op["op"] for op in converted.arch["ops"]]
    assert "SparseToDense" not in ops and "AddV2" not in ops
    assert ops.count("Conv2D") == 1 and "Add" not in ops
    assert set(converted.state_dict) == {"convs.conv.weight", "convs.conv.bias"}
    module = build_module(converted.arch, converted.state_dict)
    x = np.random.default_rng(1).standard_normal((3, 3, 8, 8)).astype(np.float32)
    with torch.inference_mode():
        (out,) = module(torch.from_numpy(x))
    # Batch 3 works although the graph hard-codes batch 1 in its reshape target.
    assert out.shape == (3, 5, 16)
    np.testing.assert_allclose(out.numpy(), _reference(x, w), atol=1e-5)


def test_float16_quantised_weights_are_dequantised(tmp_path: Path) -> None:
    w = _weights(np.random.default_rng(2))
    model, blob = _tiny_graph(w, quantise={"kernel", "bias"})
    (tmp_path / "w.bin").write_bytes(blob)
    arrays = read_weights(model, tmp_path)
    assert arrays["kernel"].dtype == np.float32
    np.testing.assert_array_equal(arrays["kernel"], w["kernel"].astype(np.float16).astype(np.float32))
    assert not np.array_equal(arrays["kernel"], w["kernel"])  # really went through float16


def test_short_weights_file_is_rejected(tiny: tuple[dict[str, Any], dict[str, np.ndarray]], tmp_path: Path) -> None:  # fmt: skip
    model, _ = tiny
    blob = (tmp_path / "w.bin").read_bytes()
    (tmp_path / "w.bin").write_bytes(blob[:-8])
    with pytest.raises(ConversionError, match="too short"):
        read_weights(model, tmp_path)


def test_unsupported_op_is_named(tiny: tuple[dict[str, Any], dict[str, np.ndarray]], tmp_path: Path) -> None:
    model, _ = tiny
    model = json.loads(json.dumps(model))
    model["modelTopology"]["node"][-2]["op"] = "Erf"
    with pytest.raises(ConversionError, match="Erf"):
        convert_graph(model, read_weights(model, tmp_path))
