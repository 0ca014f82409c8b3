"""`python -m engine_build triton-repo`: a Triton model repository for the model in a model directory.

    <out>/<name>/config.pbtxt
    <out>/<name>/1/model.onnx            platform onnxruntime_onnx (the NGC image's ONNX Runtime backend)
    <out>/<name>/1/model.plan            platform tensorrt_plan (a TensorRT engine built on the serving GPU)
    <out>/<name>/1/model.py + model.onnx python backend running ONNX Runtime (CPU-only hosts, tests)

The inputs and outputs come from the ONNX model itself (names, types, shapes past the batch axis), with
dynamic batching (preferred batch sizes, a bounded queue delay) and an instance group. The written config is
then parsed back with Triton's own protobuf schema and compared with the model's real inputs and outputs.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from inference.errors import ModelLoadError
from inference.spec import ModelSpec

log = logging.getLogger("rtdetect.engine_build")

Platform = Literal["python", "onnxruntime_onnx", "tensorrt_plan"]
PLATFORMS: tuple[str, ...] = ("python", "onnxruntime_onnx", "tensorrt_plan")
_ONNX_TO_TRITON = {
    "tensor(float)": "TYPE_FP32",
    "tensor(float16)": "TYPE_FP16",
    "tensor(uint8)": "TYPE_UINT8",
}
MODEL_TEMPLATE = Path(__file__).with_name("triton_model.py")


@dataclass(frozen=True)
class TensorIO:
    name: str
    data_type: str  # Triton's TYPE_*
    dims: tuple[int, ...]  # past the batch axis; -1 for a dynamic dimension


@dataclass(frozen=True)
class RepoOptions:
    name: str = "rtdetect"
    platform: Platform = "python"
    max_batch_size: int = 8
    preferred_batch_sizes: tuple[int, ...] = (4, 8)
    max_queue_delay_us: int = 2000  # how long Triton holds a request for a fuller batch
    instances: int = 1
    kind: Literal["KIND_CPU", "KIND_GPU"] | None = None  # None: GPU for tensorrt_plan, else CPU
    # python platform: the environment the stub runs in (a venv or an unpacked conda env, which Triton
    # activates before starting the stub: its site-packages must hold numpy and onnxruntime). None: the stub's
    # own interpreter, as in the NGC image where they are installed system-wide.
    python_env: Path | None = None
    intra_op_threads: int = 0  # python platform: ONNX Runtime threads per instance (0: one per core)
    engine_file: str | None = (
        None  # tensorrt_plan: the engine in the model directory (default model.fp16.engine)
    )


def model_io(onnx_path: Path) -> tuple[list[TensorIO], list[TensorIO]]:
    """The model's inputs and outputs as Triton sees them (batch axis dropped)."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises plain Exception subclasses
        raise ModelLoadError(f"cannot read {onnx_path}: {e}") from e

    def convert(node: object) -> TensorIO:
        name, kind, shape = node.name, node.type, node.shape  # type: ignore[attr-defined]
        if kind not in _ONNX_TO_TRITON:
            raise ModelLoadError(
                f"{onnx_path}: {name} has type {kind}, which the repository writer does not map"
            )
        dims = tuple(d if isinstance(d, int) and d > 0 else -1 for d in shape[1:])
        return TensorIO(name, _ONNX_TO_TRITON[kind], dims)

    return [convert(i) for i in session.get_inputs()], [convert(o) for o in session.get_outputs()]


def render_config(inputs: list[TensorIO], outputs: list[TensorIO], options: RepoOptions) -> str:
    kind = options.kind or ("KIND_GPU" if options.platform == "tensorrt_plan" else "KIND_CPU")
    preferred = sorted({b for b in options.preferred_batch_sizes if 1 <= b <= options.max_batch_size})

    def tensors(items: list[TensorIO]) -> str:
        return ",\n".join(
            f'  {{ name: "{t.name}" data_type: {t.data_type} dims: [ {", ".join(map(str, t.dims))} ] }}'
            for t in items
        )

    lines = [f'name: "{options.name}"']
    if options.platform == "python":
        lines.append('backend: "python"')
    else:
        lines.append(f'platform: "{options.platform}"')
    lines += [
        f"max_batch_size: {options.max_batch_size}",
        f"input [\n{tensors(inputs)}\n]",
        f"output [\n{tensors(outputs)}\n]",
        "dynamic_batching {",
        f"  preferred_batch_size: [ {', '.join(map(str, preferred))} ]" if preferred else "",
        f"  max_queue_delay_microseconds: {options.max_queue_delay_us}",
        "}",
        f"instance_group [ {{ kind: {kind} count: {options.instances} }} ]",
    ]
    params: dict[str, str] = {}
    if options.platform == "python":
        params["intra_op_threads"] = str(options.intra_op_threads)
        if options.python_env is not None:
            params["EXECUTION_ENV_PATH"] = str(options.python_env)
    for key, value in params.items():
        lines.append(f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}')
    return "\n".join(line for line in lines if line) + "\n"


def check_config(config_path: Path, inputs: list[TensorIO], outputs: list[TensorIO]) -> None:
    """Parse the written config with Triton's schema; its tensors must be the model's own."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    config = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(config_path.read_text(), config)
    except text_format.ParseError as e:
        raise ModelLoadError(f"{config_path} is not a valid Triton model config: {e}") from e

    def written(items: object) -> list[TensorIO]:
        return [
            TensorIO(t.name, model_config_pb2.DataType.Name(t.data_type), tuple(t.dims))
            for t in items  # type: ignore[attr-defined]
        ]

    if written(config.input) != inputs or written(config.output) != outputs:
        raise ModelLoadError(
            f"{config_path} does not match the model: config {written(config.input)} -> {written(config.output)}, "
            f"model {inputs} -> {outputs}"
        )
    if config.max_batch_size < 1 or any(
        b > config.max_batch_size for b in config.dynamic_batching.preferred_batch_size
    ):
        raise ModelLoadError(
            f"{config_path}: preferred batch sizes above max_batch_size {config.max_batch_size}"
        )


def write_repository(model_dir: Path, out: Path, options: RepoOptions = RepoOptions()) -> Path:
    """Write (or replace) `<out>/<name>`; returns that directory."""
    spec = ModelSpec.load(model_dir)
    onnx_path = model_dir / spec.onnx_file
    if not onnx_path.is_file():
        raise ModelLoadError(f"no ONNX model at {onnx_path}; run `python -m engine_build export` first")
    inputs, outputs = model_io(onnx_path)
    if [i.name for i in inputs] != [spec.input_name]:
        raise ModelLoadError(
            f"{onnx_path} inputs {[i.name for i in inputs]}, model.json says {spec.input_name!r}"
        )
    missing = [n for n in spec.decoder.output_names if n not in {o.name for o in outputs}]
    if missing:
        raise ModelLoadError(f"{onnx_path} lacks the decoder's outputs {missing}")

    target = out / options.name
    version = target / "1"
    if target.exists():
        shutil.rmtree(target)
    version.mkdir(parents=True)
    if options.platform == "tensorrt_plan":
        engine = model_dir / (options.engine_file or "model.fp16.engine")
        if not engine.is_file():
            raise ModelLoadError(
                f"no TensorRT engine at {engine}; run `python -m engine_build tensorrt` on the GPU host"
            )
        shutil.copyfile(engine, version / "model.plan")
    else:
        shutil.copyfile(onnx_path, version / "model.onnx")
    if options.platform == "python":
        shutil.copyfile(MODEL_TEMPLATE, version / "model.py")
    config_path = target / "config.pbtxt"
    config_path.write_text(render_config(inputs, outputs, options))
    check_config(config_path, inputs, outputs)
    log.info("wrote %s (%s, max batch %d)", target, options.platform, options.max_batch_size)
    return target
