"""Convert a TF.js graph model into a PyTorch `nn.Module`, without TensorFlow.

A TF.js graph model is a JSON topology plus a flat binary of weights. We compile it into a small
"architecture" (a list of ops with every attribute resolved to plain Python values) and a state dict
of float tensors. `GraphModule` interprets that architecture in PyTorch eager mode; tracing it for
ONNX export flattens the interpreter away, so the ONNX graph holds only tensor ops.

Supported ops are the ones NanoDet-style graphs converted through onnx-tf use. Integer constants and
the SparseToDense/Add chains that compute reshape targets are folded at conversion time; reshape
targets with a hard-coded batch of 1 are made batch-aware so batched inference works.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ARCH_FORMAT = "rtdetect-tfjs-arch/1"

_DTYPES: dict[str, type[np.generic]] = {
    "float32": np.float32, "int32": np.int32, "float16": np.float16, "uint8": np.uint8, "uint16": np.uint16,
}  # fmt: skip
_UNUSED_ATTRS = {"T", "Tpaddings", "Tperm", "Tshape", "Tidx", "Tindices", "Tlen", "dtype", "N", "Tpadding"}


class ConversionError(ValueError):
    """The graph uses something this converter does not support."""


@dataclass
class ConvertedGraph:
    arch: dict[str, Any]
    state_dict: dict[str, torch.Tensor]


def _tensor_name(ref: str) -> str:
    """'node:1' -> 'node:1', 'node' -> 'node:0' (TF's output-index convention)."""
    return ref if ":" in ref else f"{ref}:0"


def _safe(name: str) -> str:
    # nn.ModuleDict keys may not contain dots; keep names readable for the state dict.
    return name.replace("PartitionedCall/", "").replace("/", "__").replace(".", "_").replace(":", "_")


def read_weights(model_json: dict[str, Any], weights_dir: Path) -> dict[str, np.ndarray]:
    """Slice the concatenated weight files into named arrays, as the manifest lists them."""
    arrays: dict[str, np.ndarray] = {}
    for group in model_json["weightsManifest"]:
        blob = b"".join((weights_dir / p).read_bytes() for p in group["paths"])
        offset = 0
        for entry in group["weights"]:
            shape = [int(d) for d in entry["shape"]]
            count = math.prod(shape)
            quant = entry.get("quantization")
            stored = _DTYPES.get(quant["dtype"] if quant else entry["dtype"])
            if stored is None:
                raise ConversionError(f"weight {entry['name']}: dtype {entry['dtype']}/{quant} not supported")
            nbytes = count * np.dtype(stored).itemsize
            if offset + nbytes > len(blob):
                raise ConversionError(f"weights file too short for {entry['name']}")
            raw = np.frombuffer(blob, dtype=stored, count=count, offset=offset)
            offset += nbytes
            if quant and quant["dtype"] in ("uint8", "uint16"):
                # Affine quantisation: value = q * scale + min.
                raw = raw.astype(np.float32) * np.float32(quant["scale"]) + np.float32(quant["min"])
            arrays[entry["name"]] = raw.astype(_DTYPES[entry["dtype"]]).reshape(shape)
        if offset != len(blob):
            raise ConversionError(f"weights file has {len(blob) - offset} unexpected trailing bytes")
    return arrays


def _attr(node: dict[str, Any], key: str) -> Any:
    value = node.get("attr", {}).get(key)
    if value is None:
        return None
    if "s" in value:
        return base64.b64decode(value["s"]).decode()
    if "f" in value:
        return float(value["f"])
    if "b" in value:
        return bool(value["b"])
    if "i" in value:
        return int(value["i"])
    if "list" in value:
        return [int(i) for i in value["list"].get("i", [])]
    return None


def _fold(op: str, args: list[np.ndarray]) -> np.ndarray:
    if op in ("Add", "AddV2"):
        return np.asarray(args[0] + args[1])
    if op == "SparseToDense":
        indices, shape, values, default = args
        dense = np.full(shape.astype(np.int64), default, dtype=values.dtype)
        flat_idx = indices.reshape(-1, max(1, len(shape))).astype(np.int64)
        vals = np.broadcast_to(values, (flat_idx.shape[0],))
        for idx, val in zip(flat_idx, vals, strict=True):
            dense[tuple(idx)] = val
        return dense
    if op == "Identity":
        return args[0]
    raise ConversionError(f"cannot constant-fold {op}")


def convert_graph(model_json: dict[str, Any], weights: dict[str, np.ndarray]) -> ConvertedGraph:
    """Compile a TF.js graph topology plus weights into an architecture and a state dict."""
    nodes: list[dict[str, Any]] = model_json["modelTopology"]["node"]
    consts: dict[str, np.ndarray] = {}
    for node in nodes:
        if node["op"] == "Const":
            if node["name"] not in weights:
                raise ConversionError(f"constant {node['name']} has no weights")
            consts[_tensor_name(node["name"])] = weights[node["name"]]

    # Fold every op whose inputs are all integer constants (shape arithmetic), until nothing changes.
    remaining = [n for n in nodes if n["op"] != "Const"]
    changed = True
    while changed:
        changed = False
        for node in list(remaining):
            refs = [_tensor_name(i) for i in node.get("input", [])]
            if (
                node["op"] in ("SparseToDense", "Add", "AddV2", "Identity")
                and refs
                and all(r in consts and consts[r].dtype.kind == "i" for r in refs)
            ):
                consts[_tensor_name(node["name"])] = _fold(node["op"], [consts[r] for r in refs])
                remaining.remove(node)
                changed = True

    consumers: dict[str, int] = {}
    for node in remaining:
        for ref in node.get("input", []):
            consumers[_tensor_name(ref)] = consumers.get(_tensor_name(ref), 0) + 1

    ops: list[dict[str, Any]] = []
    state: dict[str, torch.Tensor] = {}
    fused_bias: set[str] = set()
    inputs: list[str] = []

    def const(ref: str) -> np.ndarray:
        try:
            return consts[_tensor_name(ref)]
        except KeyError as e:
            raise ConversionError(f"expected a constant for {ref}") from e

    def ints(ref: str) -> list[int]:
        return [int(v) for v in const(ref).reshape(-1)]

    for node in remaining:
        name, op = node["name"], node["op"]
        refs = [_tensor_name(i) for i in node.get("input", [])]
        out = _tensor_name(name)
        if name in fused_bias:
            continue
        if op == "Placeholder":
            inputs.append(out)
            continue
        spec: dict[str, Any] = {"op": op, "out": [out]}
        if op == "Conv2D":
            if _attr(node, "data_format") not in (None, "NHWC"):
                raise ConversionError(f"{name}: only NHWC Conv2D is supported")
            if _attr(node, "padding") != "VALID":
                raise ConversionError(f"{name}: only VALID padding is supported (pads are explicit ops)")
            strides, dilations = _attr(node, "strides"), _attr(node, "dilations") or [1, 1, 1, 1]
            kernel = const(refs[1])  # HWIO
            key = _safe(name)
            state[f"convs.{key}.weight"] = torch.from_numpy(
                np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))
            )
            bias = np.zeros(kernel.shape[3], dtype=np.float32)
            # Fuse the following bias Add when this conv feeds only it.
            followers = [
                n for n in remaining if n["op"] in ("Add", "AddV2") and _tensor_name(n["input"][0]) == out
            ]
            if len(followers) == 1 and consumers.get(out) == 1:
                follower = followers[0]
                b = consts.get(_tensor_name(follower["input"][1]))
                if b is not None and b.dtype == np.float32 and b.size == kernel.shape[3]:
                    bias = b.reshape(-1)
                    fused_bias.add(follower["name"])
                    spec["out"] = [_tensor_name(follower["name"])]
            state[f"convs.{key}.bias"] = torch.from_numpy(bias.copy())
            spec.update(
                inputs=[refs[0]],
                key=key,
                in_channels=int(kernel.shape[2]),
                out_channels=int(kernel.shape[3]),
                kernel=[int(kernel.shape[0]), int(kernel.shape[1])],
                stride=[strides[1], strides[2]],
                dilation=[dilations[1], dilations[2]],
            )
        elif op in ("Add", "AddV2"):
            tensor_refs = [r for r in refs if r not in consts]
            const_refs = [r for r in refs if r in consts]
            spec["inputs"] = tensor_refs
            if const_refs:
                key = _safe(const_refs[0])
                state[f"consts.{key}"] = torch.from_numpy(const(const_refs[0]).astype(np.float32))
                spec["const"] = key
        elif op == "Transpose":
            spec.update(inputs=[refs[0]], perm=ints(refs[1]))
        elif op in ("Pad", "PadV2"):
            pads = const(refs[1]).reshape(-1, 2).astype(int).tolist()
            value = float(const(refs[2]).reshape(-1)[0]) if op == "PadV2" else 0.0
            spec.update(op="Pad", inputs=[refs[0]], pads=pads, value=value)
        elif op == "LeakyRelu":
            spec.update(inputs=[refs[0]], alpha=_attr(node, "alpha"))
        elif op in ("Sigmoid", "Identity"):
            spec["inputs"] = [refs[0]]
        elif op == "ConcatV2":
            spec.update(inputs=refs[:-1], axis=ints(refs[-1])[0])
        elif op == "Reshape":
            spec.update(inputs=[refs[0]], shape=ints(refs[1]))
        elif op == "ResizeBilinear":
            if _attr(node, "align_corners"):
                raise ConversionError(f"{name}: align_corners=True is not supported")
            if not _attr(node, "half_pixel_centers"):
                raise ConversionError(f"{name}: only half_pixel_centers=True is supported")
            spec.update(inputs=[refs[0]], size=ints(refs[1]))
        elif op == "SplitV":
            sizes = ints(refs[1])
            spec.update(
                inputs=[refs[0]],
                sizes=sizes,
                axis=ints(refs[2])[0],
                out=[f"{name}:{i}" for i in range(len(sizes))],
            )
        elif op == "MaxPool":
            if _attr(node, "data_format") not in (None, "NHWC") or _attr(node, "padding") != "VALID":
                raise ConversionError(f"{name}: only NHWC VALID MaxPool is supported")
            ksize, strides = _attr(node, "ksize"), _attr(node, "strides")
            spec.update(inputs=[refs[0]], kernel=[ksize[1], ksize[2]], stride=[strides[1], strides[2]])
        else:
            raise ConversionError(f"op {op} ({name}) is not supported")
        ops.append(spec)

    signature = model_json.get("signature", {})
    outputs = [
        {"name": key.split(":")[0], "tensor": _tensor_name(v["name"]),
         "shape": [int(d.get("size", -1)) for d in v.get("tensorShape", {}).get("dim", [])]}
        for key, v in signature.get("outputs", {}).items()
    ]  # fmt: skip
    if len(inputs) != 1:
        raise ConversionError(f"expected exactly one input, found {inputs}")
    const_shapes = {k.split(".", 1)[1]: list(v.shape) for k, v in state.items() if k.startswith("consts.")}
    arch = {
        "format": ARCH_FORMAT, "input": inputs[0], "ops": ops, "outputs": outputs, "const_shapes": const_shapes,
    }  # fmt: skip
    return ConvertedGraph(arch=arch, state_dict=state)


class GraphModule(nn.Module):
    """Interprets a converted graph; outputs come back in `output_names` order."""

    def __init__(self, arch: dict[str, Any], output_order: Iterable[str] | None = None) -> None:
        super().__init__()
        if arch.get("format") != ARCH_FORMAT:
            raise ConversionError(f"unknown architecture format {arch.get('format')!r}")
        self.arch = arch
        self.convs = nn.ModuleDict()
        for op in arch["ops"]:
            if op["op"] == "Conv2D":
                self.convs[op["key"]] = nn.Conv2d(
                    op["in_channels"], op["out_channels"], tuple(op["kernel"]),
                    stride=tuple(op["stride"]), dilation=tuple(op["dilation"]),
                )  # fmt: skip
        self.consts = nn.ParameterDict(
            {
                k: nn.Parameter(torch.zeros(shape), requires_grad=False)
                for k, shape in arch["const_shapes"].items()
            }
        )
        by_name = {o["name"]: o["tensor"] for o in arch["outputs"]}
        names = list(output_order) if output_order is not None else sorted(by_name)
        self.output_names = names
        self._output_tensors = [by_name[n] for n in names]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        env: dict[str, torch.Tensor] = {self.arch["input"]: x}
        for op in self.arch["ops"]:
            kind = op["op"]
            args = [env[i] for i in op["inputs"]]
            if kind == "Conv2D":
                # The graph works in NHWC around convs; permutes are views, so this costs no copies.
                y = self.convs[op["key"]](args[0].permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
            elif kind in ("Add", "AddV2"):
                y = args[0] + (self.consts[op["const"]] if "const" in op else args[1])
            elif kind == "Transpose":
                y = args[0].permute(*op["perm"])
            elif kind == "Pad":
                flat = [p for pair in reversed(op["pads"]) for p in pair]
                y = F.pad(args[0], flat, mode="constant", value=op["value"])
            elif kind == "LeakyRelu":
                y = F.leaky_relu(args[0], op["alpha"])
            elif kind == "Sigmoid":
                y = torch.sigmoid(args[0])
            elif kind == "Identity":
                y = args[0]
            elif kind == "ConcatV2":
                y = torch.cat(args, dim=op["axis"])
            elif kind == "Reshape":
                shape = list(op["shape"])
                # Targets were computed for batch 1; keep the real batch so batched inference works.
                if shape and shape[0] == 1:
                    shape[0] = args[0].shape[0]
                y = args[0].reshape(shape)
            elif kind == "ResizeBilinear":
                nchw = args[0].permute(0, 3, 1, 2)
                y = F.interpolate(nchw, size=tuple(op["size"]), mode="bilinear", align_corners=False)
                y = y.permute(0, 2, 3, 1)
            elif kind == "SplitV":
                for ref, part in zip(
                    op["out"], torch.split(args[0], op["sizes"], dim=op["axis"]), strict=True
                ):
                    env[ref] = part
                continue
            elif kind == "MaxPool":
                nchw = args[0].permute(0, 3, 1, 2)
                y = F.max_pool2d(nchw, tuple(op["kernel"]), tuple(op["stride"])).permute(0, 2, 3, 1)
            else:  # pragma: no cover - convert_graph rejects unknown ops
                raise ConversionError(f"op {kind} is not supported")
            env[op["out"][0]] = y
        return tuple(env[t].contiguous() for t in self._output_tensors)


def build_module(arch: dict[str, Any], state_dict: dict[str, torch.Tensor] | None = None,
                 output_order: Iterable[str] | None = None) -> GraphModule:  # fmt: skip
    """A GraphModule with constant parameters shaped after `state_dict` (or zeros from the arch)."""
    module = GraphModule(arch, output_order)
    if state_dict is not None:
        module.load_state_dict(state_dict, strict=True)
    return module.eval()


def load_graph_module(graph: str | Path, output_order: str = "") -> GraphModule:
    """Factory for `engine_build export --factory`: an untrained module from an architecture file.

    `output_order` is a comma-separated list of output names (default: sorted names).
    """
    arch = json.loads(Path(graph).read_text())
    order = [o for o in output_order.split(",") if o] or None
    return build_module(arch, None, order)
