"""Small generated ONNX models with known outputs, for decoder tests through the real ONNX Runtime engine.

Each output is a constant table broadcast to the batch; "gated" outputs are multiplied by the input's
centre pixel (channel 0), so with std 255 a white image yields the table exactly and a black one zeros.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

_ONNX_TYPES = {np.dtype(np.float32): onnx.TensorProto.FLOAT, np.dtype(np.int64): onnx.TensorProto.INT64}


def write_const_model(
    path: Path,
    outputs: Mapping[str, np.ndarray],
    *,
    input_name: str = "images",
    size: tuple[int, int] = (320, 320),
    gated: Collection[str] = (),
) -> None:
    """`outputs`: name -> table with a leading batch axis of 1 (float32 or int64). `size` is (W, H)."""
    w, h = size
    init = [
        numpy_helper.from_array(np.array([0], np.int64), "zero_i"),
        numpy_helper.from_array(np.array([1], np.int64), "one_i"),
        numpy_helper.from_array(np.array([0, h // 2, w // 2], np.int64), "c_starts"),
        numpy_helper.from_array(np.array([1, h // 2 + 1, w // 2 + 1], np.int64), "c_ends"),
        numpy_helper.from_array(np.array([1, 2, 3], np.int64), "c_axes"),
    ]
    nodes = [
        helper.make_node("Shape", [input_name], ["in_shape"]),
        helper.make_node("Slice", [input_name, "c_starts", "c_ends", "c_axes"], ["centre"]),  # [N, 1, 1, 1]
        helper.make_node("Slice", ["in_shape", "zero_i", "one_i"], ["batch"]),  # [1] = N
    ]
    infos = []
    for name, table in outputs.items():
        table = np.asarray(table)
        assert table.shape[0] == 1, "tables carry a batch axis of 1"
        rest = np.array(table.shape[1:], np.int64)
        init += [
            numpy_helper.from_array(table, f"{name}_table"),
            numpy_helper.from_array(rest, f"{name}_rest"),
            numpy_helper.from_array(np.array([-1] + [1] * (table.ndim - 1), np.int64), f"{name}_gshape"),
        ]
        nodes += [
            helper.make_node("Concat", ["batch", f"{name}_rest"], [f"{name}_shape"], axis=0),
            helper.make_node("Expand", [f"{name}_table", f"{name}_shape"], [f"{name}_full"]),
        ]
        if name in gated:
            nodes += [
                helper.make_node("Reshape", ["centre", f"{name}_gshape"], [f"{name}_gain"]),
                helper.make_node("Mul", [f"{name}_full", f"{name}_gain"], [name]),
            ]
        else:
            nodes.append(helper.make_node("Identity", [f"{name}_full"], [name]))
        infos.append(helper.make_tensor_value_info(name, _ONNX_TYPES[table.dtype], ["N", *table.shape[1:]]))
    graph = helper.make_graph(
        nodes,
        "const-test",
        [helper.make_tensor_value_info(input_name, onnx.TensorProto.FLOAT, ["N", 3, h, w])],
        infos,
        init,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
