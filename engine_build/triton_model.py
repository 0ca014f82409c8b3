"""Triton python-backend model that runs the ONNX model with ONNX Runtime: for CPU-only hosts and tests.

`python -m engine_build triton-repo --platform python` copies this file to `<name>/1/model.py` beside
`model.onnx`. The wheel-installed tritonserver has no onnxruntime backend, and the NGC image's backends need
a GPU host; this model gives the same KServe v2 interface and Triton's dynamic batching everywhere. Triton
hands `execute` every request its scheduler gathered: they run as one ONNX Runtime batch.

It runs inside Triton's python stub, not in rtdetect's processes: it imports nothing from rtdetect.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        import onnxruntime as ort

        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("intra_op_threads", "0"))
        # Busy-waiting workers would take cores from the servers sharing this host.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        self.session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]

    def execute(self, requests: list[Any]) -> list[Any]:
        import triton_python_backend_utils as pb_utils

        arrays = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
        sizes = [a.shape[0] for a in arrays]
        batch = np.concatenate(arrays) if len(arrays) > 1 else arrays[0]
        try:
            outputs = self.session.run(self.output_names, {self.input_name: batch})
        except Exception as e:  # onnxruntime's errors derive from Exception: answer every request with it
            error = pb_utils.TritonError(f"onnxruntime: {e}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        responses = []
        start = 0
        for n in sizes:
            tensors = [
                pb_utils.Tensor(name, np.ascontiguousarray(out[start : start + n]))
                for name, out in zip(self.output_names, outputs, strict=True)
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += n
        return responses
