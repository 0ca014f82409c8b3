"""INT8 weights that stay exact on CPUs without VNNI: find the layers whose uint8 x int8 products saturate.

Without VNNI or AMX, x86 INT8 kernels multiply uint8 activations by int8 weights with VPMADDUBSW, which adds
each pair of products into a saturating int16: 255 x 127 x 2 overflows it. ONNX Runtime's quantisation
documentation names the remedies: 7-bit weights (`reduce_range`) or uint8 weights (U8U8 kernels, exact but
slower). Both cost every layer; measured on NanoDet-g, the damage sits almost entirely in one layer (the first
convolution, which sees the full-range image), so only the layers that measurably saturate are guarded:

1. the reference is the same quantised model with every weight moved to uint8 (+128, zero point 128): the
   same numbers, computed by ONNX Runtime's exact U8U8 kernels;
2. each layer alone gets its int8 weights back; how far the outputs move from the reference on a few
   calibration photos is that layer's saturation damage on this CPU;
3. layers with a visible share of the total damage keep uint8 weights (exact, U8U8 for that layer only),
   everything else keeps int8 weights and the fast U8S8 kernels.

7-bit weights for the guarded layer were tried and measured worse: the first convolution needs its 8 bits
(7 bits there moved the outputs 0.03 from exact, as far as the whole INT8 model is from FP32; the gate
scored 0.88-0.89 against 0.92 with uint8 weights there).

On a VNNI or AMX CPU nothing saturates and every layer measures zero: the file is plain int8.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger("rtdetect.engine_build")

GUARDED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
# A layer is guarded when its own damage is at least this share of the all-int8 model's damage.
DEFAULT_SHARE = 0.10


@dataclass(frozen=True)
class GuardReport:
    guarded: dict[str, float]  # layer -> its damage (mean abs output change on the probe photos)
    damage_all_int8: float  # the plain int8 model's distance from the exact reference
    damage_guarded: float  # the guarded model's distance from the exact reference
    layers: int  # quantised layers examined
    seconds: float


def weight_dequantizers(model: Any) -> dict[str, Any]:
    """Quantised compute node name -> the DequantizeLinear node that feeds it int8 weights."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    producer = {out: node for node in model.graph.node for out in node.output}
    found: dict[str, Any] = {}
    for node in model.graph.node:
        if node.op_type not in GUARDED_OPS or len(node.input) < 2:
            continue
        dq = producer.get(node.input[1])
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
            continue
        if numpy_helper.to_array(inits[dq.input[0]]).dtype == np.int8:
            found[node.name] = dq
    return found


def _copy(model: Any) -> Any:
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _rewrite(model: Any, layers: Iterable[str], change: Callable[[Any, Any], None]) -> Any:
    out = _copy(model)
    inits = {i.name: i for i in out.graph.initializer}
    dqs = weight_dequantizers(out)
    done: set[str] = set()
    for name in layers:
        dq = dqs[name]
        if dq.input[0] in done:  # a weight shared by two layers is rewritten once
            continue
        done.add(dq.input[0])
        change(dq, inits)
    return out


def with_uint8_weights(model: Any, layers: Iterable[str]) -> Any:
    """The same numbers with uint8 weights (w + 128, zero point 128): ONNX Runtime runs U8U8 kernels."""
    from onnx import numpy_helper

    def change(dq: Any, inits: dict[str, Any]) -> None:
        for name in dq.input[0], dq.input[2]:
            values = numpy_helper.to_array(inits[name]).astype(np.int16) + 128
            inits[name].CopyFrom(numpy_helper.from_array(values.astype(np.uint8), name))

    return _rewrite(model, layers, change)


class _Probe:
    """Runs a model variant on the probe inputs with ONNX Runtime's CPU kernels (the ones that saturate)."""

    def __init__(self, inputs: Sequence[dict[str, np.ndarray]], threads: int) -> None:
        self.inputs, self.threads = inputs, threads

    def outputs(self, model: Any) -> list[np.ndarray]:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        session = ort.InferenceSession(
            model.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"]
        )
        return [
            np.concatenate([o.reshape(o.shape[0], -1) for o in session.run(None, feed)], axis=1)
            for feed in self.inputs
        ]


def _distance(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float:
    return float(np.mean([np.abs(x - y).mean() for x, y in zip(a, b, strict=True)]))


def guard_saturating_layers(
    model: Any,
    inputs: Sequence[dict[str, np.ndarray]],
    *,
    share: float = DEFAULT_SHARE,
    threads: int = 0,
) -> tuple[Any, GuardReport]:
    """The quantised `model` with uint8 weights in the layers whose saturation shows in its outputs on
    this CPU, and what was measured. `inputs` are a few calibration feeds (batch 1 each)."""
    start = time.perf_counter()
    layers = list(weight_dequantizers(model))
    probe = _Probe(inputs, threads)
    exact = with_uint8_weights(model, layers)
    reference = probe.outputs(exact)
    total = _distance(probe.outputs(model), reference)
    damage: dict[str, float] = {}
    for i, name in enumerate(layers, 1):
        # Every other layer exact: what this one layer's int8 kernel changes on its own.
        damage[name] = _distance(
            probe.outputs(with_uint8_weights(model, [n for n in layers if n != name])), reference
        )
        if i == 1 or i % 5 == 0 or i == len(layers):
            log.info("saturation check: layer %d/%d, %.0f s", i, len(layers), time.perf_counter() - start)
    guarded = {n: round(d, 6) for n, d in damage.items() if total > 0 and d >= share * total}
    out = with_uint8_weights(model, guarded) if guarded else model
    after = _distance(probe.outputs(out), reference) if guarded else total
    report = GuardReport(
        guarded, round(total, 6), round(after, 6), len(layers), round(time.perf_counter() - start, 1)
    )
    log.info(
        "saturation check: %d of %d layers saturate visibly on this CPU (%s); output distance from exact "
        "int8 %.4f -> %.4f",
        len(guarded), len(layers), ", ".join(f"{n} {d:.4f}" for n, d in guarded.items()) or "none", total, after,
    )  # fmt: skip
    return out, report
