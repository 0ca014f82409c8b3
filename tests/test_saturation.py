"""The saturation guard (engine_build/saturation.py) on hand-built QDQ graphs whose numbers are known, run by
ONNX Runtime's real CPU kernels. What is right depends on the CPU: each test reads its class and asserts that
class's behaviour (AVX2 only: uint8 x int8 pairs saturate; VNNI or AMX: nothing does)."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from engine_build.saturation import guard_saturating_layers, weight_dequantizers, with_uint8_weights
from inference.gate import cpu_identity, u8s8_saturates

C = 16  # input channels: 8 pairs of products per output value


def _model(weights: dict[str, int]) -> Any:
    """x (all ones) -> Q/DQ (1/255: 255) -> Conv 1x1 per name with every int8 weight `w` (scale 1/127, so
    each weight is w/127) -> Q/DQ. Layer `a` feeds layer `b`; every output channel sums C products."""
    inits = [
        numpy_helper.from_array(np.array(1 / 255, np.float32), "x_scale"),
        numpy_helper.from_array(np.array(0, np.uint8), "x_zp"),
        numpy_helper.from_array(np.array(0.1, np.float32), "y_scale"),  # outputs up to 25.5
        numpy_helper.from_array(np.array(0, np.uint8), "y_zp"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["x_q"], name="q_x"),
        helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zp"], ["a_in"], name="dq_x"),
    ]
    names = list(weights)
    for i, name in enumerate(names):
        inits += [
            numpy_helper.from_array(np.full((C, C, 1, 1), weights[name], np.int8), f"{name}_w_q"),
            numpy_helper.from_array(np.full(C, 1 / 127 / (C if i else 1), np.float32), f"{name}_w_scale"),
            numpy_helper.from_array(np.zeros(C, np.int8), f"{name}_w_zp"),
        ]
        out = "out" if i == len(names) - 1 else f"{names[i + 1]}_in"
        nodes += [
            helper.make_node(
                "DequantizeLinear",
                [f"{name}_w_q", f"{name}_w_scale", f"{name}_w_zp"],
                [f"{name}_w"],
                name=f"dq_{name}_w",
                axis=0,
            ),
            helper.make_node("Conv", [f"{name}_in", f"{name}_w"], [f"{name}_y"], name=name),
            helper.make_node(
                "QuantizeLinear", [f"{name}_y", "y_scale", "y_zp"], [f"{name}_q"], name=f"q_{name}"
            ),
            helper.make_node("DequantizeLinear", [f"{name}_q", "y_scale", "y_zp"], [out], name=f"dq_{name}"),
        ]
    graph = helper.make_graph(
        nodes, "toy",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, 4, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        initializer=inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


FEED = {"x": np.ones((1, C, 4, 4), np.float32)}  # every activation 255 after quantisation


def _run(model: Any) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    out: np.ndarray = session.run(None, FEED)[0]
    return out


@pytest.fixture(scope="module")
def saturates() -> bool:
    return u8s8_saturates(cpu_identity()[1])


def test_uint8_weights_are_exact_where_int8_weights_saturate(saturates: bool) -> None:
    # 16 products of 255 x 127 (1.0 x 1.0 each): exactly 16.0. In int16 pairs: 255 x 127 x 2 = 64770 > 32767.
    model = _model({"a": 127})
    assert weight_dequantizers(model).keys() == {"a"}
    exact = _run(with_uint8_weights(model, ["a"]))
    np.testing.assert_allclose(exact, 16.0, atol=0.05)  # U8U8 kernels: exact on every CPU
    plain = _run(model)
    if saturates:
        # Each pair clipped to 32767: about half the true value, on every output.
        assert float(plain.max()) < 9.0, plain.ravel()[:4]
    else:
        np.testing.assert_allclose(plain, 16.0, atol=0.05)


def test_the_guard_keeps_uint8_weights_only_where_saturation_shows(saturates: bool) -> None:
    # Layer a saturates (weights 127); layer b cannot (255 x 30 x 2 = 15300 fits int16).
    model = _model({"a": 127, "b": 30})
    guarded, report = guard_saturating_layers(model, [FEED])
    assert report.layers == 2
    out = _run(guarded)
    want = 16.0 * 30 / 127  # a gives 16.0 exactly; b sums 16 of those times 30/127/16
    np.testing.assert_allclose(out, want, atol=0.15)
    if saturates:
        assert set(report.guarded) == {"a"} and report.damage_all_int8 > 1.0 and report.damage_guarded < 0.05
        dqs = weight_dequantizers(guarded)
        assert set(dqs) == {"b"}  # a's weights are uint8 now, b keeps int8 and the fast kernels
    else:
        # Nothing saturates: nothing to guard, the file is plain int8.
        assert report.guarded == {} and report.damage_all_int8 == 0.0
        assert set(weight_dequantizers(guarded)) == {"a", "b"}
