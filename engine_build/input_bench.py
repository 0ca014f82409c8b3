"""Float vs uint8 model input (`export --input-format`): pre-processing time and bytes per image, the engine
with the normalisation in its graph, and `POST /detect` end to end with each model, side by side.

`python -m engine_build.input_bench --model-dir DIR` exports a uint8-nhwc copy of DIR's model into a
temporary directory (unless --uint8-dir names one) and writes its section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from engine_build.bench import _api_server, _drive_detect, _progress, machine_description, write_section
from inference.engines import Engine, create_engine
from inference.gate import cpu_identity
from inference.preprocess import preprocess_one
from inference.spec import InputFormat, ModelSpec
from tools.servers import LOOPBACK, free_port

SECTION = "input-format"
FORMATS: tuple[InputFormat, ...] = ("float", "uint8-nhwc", "uint8-nchw")
# Both servers on the same engine (the comparison is the input format, not the engine choice); no gRPC port,
# so two servers can run at once.
SERVER_ENV = {"RTDETECT_BACKEND": "onnxruntime", "RTDETECT_GRPC_PORT": "0"}


def machine() -> str:
    """The bench's machine line, plus the CPU flags that matter and the cores this process may use."""
    flags = " ".join(cpu_identity()[1]) or "none that matter"
    usable = len(os.sched_getaffinity(0))
    pinned = f"; pinned to {usable} of them" if usable < (os.cpu_count() or usable) else ""
    return f"{machine_description()}{pinned}; CPU flags: {flags}"


def percentile(samples: list[float], q: float) -> float:
    return float(np.percentile(samples, q))


def time_preprocess(frame: np.ndarray, spec: ModelSpec, iterations: int) -> dict[str, list[float]]:
    """Detector.prepare's work (one image, a fresh tensor) for each input format, interleaved."""
    specs = {f: ModelSpec.model_validate({**spec.model_dump(), "input_format": f}) for f in FORMATS}
    samples: dict[str, list[float]] = {f: [] for f in FORMATS}
    for _ in range(20):  # warm caches and cv2's thread pool
        for s in specs.values():
            preprocess_one(frame, s)
    for _ in range(iterations):
        for f, s in specs.items():
            t0 = time.perf_counter()
            preprocess_one(frame, s)
            samples[f].append((time.perf_counter() - t0) * 1e3)
    return samples


def time_inference(engines: dict[str, Engine], inputs: dict[str, np.ndarray], iterations: int) -> dict[str, list[float]]:  # fmt: skip
    samples: dict[str, list[float]] = {name: [] for name in engines}
    for name, engine in engines.items():
        for _ in range(5):
            engine.infer(inputs[name])
    for _ in range(iterations):
        for name, engine in engines.items():
            t0 = time.perf_counter()
            engine.infer(inputs[name])
            samples[name].append((time.perf_counter() - t0) * 1e3)
    return samples


@contextlib.contextmanager
def uint8_copy(model_dir: Path, uint8_dir: Path | None) -> Iterator[Path]:
    """`uint8_dir`, or a uint8-nhwc export of `model_dir`'s model in a temporary directory."""
    if uint8_dir is not None:
        yield uint8_dir
        return
    from engine_build.export import export

    with tempfile.TemporaryDirectory(prefix="rtdetect-uint8-") as tmp:
        target = Path(tmp)
        for path in model_dir.iterdir():
            if path.is_file() and path.suffix != ".onnx" and not path.name.endswith(".engine"):
                shutil.copy2(path, target / path.name)
        _progress(f"exporting a uint8-nhwc copy of {model_dir} into {target}")
        export(target, input_format="uint8-nhwc")
        yield target


def run(model_dir: Path, uint8_dir: Path | None, *, iterations: int, requests: int, rounds: int, threads: int,
        output: Path) -> str:  # fmt: skip
    spec = ModelSpec.load(model_dir)
    if spec.input_format != "float":
        raise SystemExit(f"{model_dir} holds a {spec.input_format} model; give the float one")
    from skimage import data

    frame = cv2.resize(np.ascontiguousarray(data.astronaut()[:, :, ::-1]), (640, 480))
    pre = time_preprocess(frame, spec, iterations)
    nbytes = {
        f: preprocess_one(frame, ModelSpec.model_validate({**spec.model_dump(), "input_format": f}))[0].nbytes
        for f in FORMATS
    }
    ok, jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok

    with uint8_copy(model_dir, uint8_dir) as u8_dir:
        u8_spec = ModelSpec.load(u8_dir)
        dirs: dict[str, tuple[Path, ModelSpec]] = {
            "float": (model_dir, spec),
            u8_spec.input_format: (u8_dir, u8_spec),
        }
        engines: dict[str, Engine] = {
            name: create_engine(
                "onnxruntime", d, s, providers=["CPUExecutionProvider"], intra_op_threads=threads
            )
            for name, (d, s) in dirs.items()
        }
        inputs = {name: preprocess_one(frame, s)[0][None] for name, (_, s) in dirs.items()}
        for engine in engines.values():
            engine.load()
        _progress(f"timing the engines, {iterations} interleaved iterations")
        infer = time_inference(engines, inputs, iterations)
        for engine in engines.values():
            engine.close()

        rates: dict[tuple[str, int], list[float]] = {}
        p50s: dict[tuple[str, int], list[float]] = {}
        logs = Path(tempfile.mkdtemp(prefix="rtdetect-input-bench-"))
        with contextlib.ExitStack() as stack:
            ports = {name: free_port() for name in dirs}
            for name, (d, _) in dirs.items():
                stack.enter_context(_api_server(d, threads, SERVER_ENV, logs, ports[name]))
            _progress(f"detect API servers ready (logs in {logs})")
            for i in range(rounds):
                for concurrency in (1, 4):
                    for name in dirs:
                        _progress(f"round {i + 1}/{rounds}: {name} model, concurrency {concurrency}")
                        url = f"http://{LOOPBACK}:{ports[name]}/detect"
                        rate, lat = asyncio.run(_drive_detect(url, jpeg.tobytes(), concurrency, requests))
                        rates.setdefault((name, concurrency), []).append(rate)
                        p50s.setdefault((name, concurrency), []).append(statistics.median(lat))

    u8 = u8_spec.input_format
    lines = [
        f"Machine: {machine()}. Model: {spec.name} ({spec.input_width}x{spec.input_height}, "
        f"{spec.resize}), one 640x480 photo; ONNX Runtime CPU, intra-op threads: {threads or 'all cores'}.",
        "",
        "Pre-processing one image as `Detector.prepare` does (a fresh tensor), "
        f"{iterations} interleaved runs:",
        "",
        "| input format | p50 ms | p99 ms | bytes per image |",
        "|---|---:|---:|---:|",
    ]
    lines += [
        f"| {f} | {percentile(pre[f], 50):.3f} | {percentile(pre[f], 99):.3f} | {nbytes[f]:,} |"
        for f in FORMATS
    ]
    lines += [
        "",
        "The engine alone, batch 1 (the uint8 model's graph now does the cast and normalisation):",
        "",
        "| model input | p50 ms | p99 ms |",
        "|---|---:|---:|",
    ]
    lines += [f"| {n} | {percentile(s, 50):.2f} | {percentile(s, 99):.2f} |" for n, s in infer.items()]
    lines += [
        "",
        f"`POST /detect` end to end (a 640x480 JPEG, the detect API as it ships, one server per model, "
        f"{rounds} rounds of {requests} requests per level taken in turn; medians):",
        "",
        "| model input | concurrency | /detect images/s | p50 ms | range images/s |",
        "|---|---:|---:|---:|---:|",
    ]
    for concurrency in (1, 4):
        for name in dirs:
            r = rates[(name, concurrency)]
            lines.append(
                f"| {name} | {concurrency} | {statistics.median(r):.1f} | "
                f"{statistics.median(p50s[(name, concurrency)]):.1f} | {min(r):.1f}-{max(r):.1f} |"
            )
    lines += [
        "",
        f"- Pre-processing: {u8} takes {percentile(pre[u8], 50) / percentile(pre['float'], 50):.2f}x the "
        f"float path's time and moves {nbytes['float'] / nbytes[u8]:.0f}x fewer bytes.",
    ]
    for concurrency in (1, 4):
        # Each round's two runs are back to back, so their ratio cancels most of the machine's drift.
        ratios = [u / f for u, f in zip(rates[(u8, concurrency)], rates[("float", concurrency)], strict=True)]
        lines.append(
            f"- /detect at concurrency {concurrency}: {u8} / float images/s = {statistics.median(ratios):.3f} "
            f"(median of {rounds} rounds' ratios, range {min(ratios):.3f}-{max(ratios):.3f})."
        )
    lines += [
        "",
        f"Run: {time.strftime('%Y-%m-%d')}.",
    ]
    body = "## Float vs uint8 model input (`python -m engine_build.input_bench`)\n\n" + "\n".join(lines)
    print(body)
    write_section(output, SECTION, body)
    _progress(f"wrote {output}")
    return body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine_build.input_bench", description=__doc__)
    parser.add_argument(
        "--model-dir", type=Path, required=True, help="the float model (as `make model` builds)"
    )
    parser.add_argument("--uint8-dir", type=Path, help="a uint8-input export of it (default: export one)")
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--requests", type=int, default=200, help="/detect requests per level and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: all cores)")
    parser.add_argument("--output", type=Path, default=Path("docs/benchmarks.md"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run(args.model_dir, args.uint8_dir, iterations=args.iterations, requests=args.requests, rounds=args.rounds,
        threads=args.threads, output=args.output)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
