"""`python -m engine_build bench`: every engine x precision here, and /detect end to end.

PyTorch eager FP32 (the starting point), ONNX Runtime FP32 and INT8, OpenVINO's precisions and, on a GPU,
TensorRT's, each with its accuracy-gate score (gate.json, `python -m engine_build precision`). Engines are
timed interleaved (one iteration of each in turn) so that noise from this shared machine hits all alike;
then /detect with the automatic engine choice against /detect with ONNX Runtime FP32, in the same run.
The figures are medians and ratios from one run, written to docs/benchmarks.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import cv2
import numpy as np

from engine_build.export import parity_images
from inference.engines import BACKENDS, Engine, create_engine, engine_precisions
from inference.errors import RtdetectError
from inference.gate import GateRecord, Machine, current_machine, int8_kernel_class, load_gate
from inference.pipeline import CPU_WORKERS
from inference.preprocess import preprocess
from inference.spec import ModelSpec
from tools.servers import LOOPBACK, ServerProcess, free_port, server_process

SECTION = "engine_build.bench"
# /detect at concurrency 4, auto against ONNX Runtime FP32, by the CPU's int8 kernels: VNNI and AMX run int8
# dot products in int32; AVX2 alone needs the saturation guard (engine_build/saturation.py) and gains less.
AUTO_TARGETS = {"amx": 2.5, "vnni": 2.5, "avx2": 1.25}
CLASS_NAMES = {"amx": "AMX", "vnni": "VNNI", "avx2": "AVX2 only (no VNNI, no AMX)"}


def section_key(machine: Machine) -> str:
    """One section per CPU class, so the page shows every class measured (the VNNI host's keeps the
    original name, which the report reads)."""
    kernels = int8_kernel_class(machine.flags)
    return SECTION if kernels == "vnni" else f"{SECTION}.{kernels}"


@dataclass
class Stat:
    label: str
    batch: int
    samples_ms: list[float]

    @property
    def p50(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def p99(self) -> float:
        return float(np.percentile(self.samples_ms, 99))

    @property
    def images_per_s(self) -> float:
        return self.batch * 1000.0 / self.p50


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def write_page_section(path: Path, begin: str, end: str, body: str, heading: str = "# Benchmarks\n") -> None:
    """Put `begin`, `body`, `end` into the markdown page at `path` in place of what stood between those
    markers, or append it; everything else on the page is kept. The benchmark and load tools share pages."""
    block = f"{begin}\n{body}\n{end}"
    text = path.read_text() if path.exists() else heading
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip("\n") + f"\n\n{block}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def write_section(path: Path, key: str, body: str) -> None:
    """Replace this script's section of the shared benchmarks page, keeping everyone else's."""
    write_page_section(
        path, f"<!-- {key}:start -->", f"<!-- {key}:end -->", body.rstrip(),
        "# Benchmarks\n\nEach section is written by the script it names.\n",
    )  # fmt: skip


def _progress(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def time_engines(engines: dict[str, Engine], batch: np.ndarray, iterations: int) -> dict[str, list[float]]:
    for engine in engines.values():  # warm-up: first calls allocate and pick kernels
        for _ in range(3):
            engine.infer(batch)
    samples: dict[str, list[float]] = {name: [] for name in engines}
    for i in range(iterations):
        for name, engine in engines.items():
            t0 = time.perf_counter()
            engine.infer(batch)
            samples[name].append((time.perf_counter() - t0) * 1000.0)
        if (i + 1) % max(1, iterations // 5) == 0:
            _progress(f"  batch {len(batch)}: {i + 1}/{iterations}")
    return samples


async def _drive_detect(
    url: str, payload: bytes, concurrency: int, requests: int
) -> tuple[float, list[float]]:
    """POST `payload` to /detect `requests` times from `concurrency` keep-alive connections.

    The load generator shares the cores with the server, so it must cost as little CPU as possible: each
    request is the same pre-built bytes written to a raw HTTP/1.1 connection (0.2 ms of client CPU per
    request, against 0.7-1.4 ms through aiohttp's client and more through httpx). Every answer must be a
    200 with a JSON body naming its detections; anything else stops the benchmark.
    """
    parts = urlsplit(url)
    host, port = parts.hostname or LOOPBACK, parts.port or 80
    boundary = "rtdetect-bench-boundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="frame.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + payload
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = (
        f"POST {parts.path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    latencies: list[float] = []
    remaining = requests

    async def post(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in header_lines if ": " in line)
        answer = await reader.readexactly(int(headers.get("content-length", "0")))
        if status_line.split(" ", 2)[1] != "200" or b'"detections"' not in answer:
            raise RuntimeError(f"/detect answered {status_line!r}: {answer[:300]!r}")
        return answer

    async def worker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            t0 = time.perf_counter()
            await post(reader, writer)
            latencies.append((time.perf_counter() - t0) * 1000.0)

    connections = [await asyncio.open_connection(host, port) for _ in range(concurrency)]
    try:
        for reader, writer in connections:  # warm-up: every connection, and the server's first requests
            for _ in range(2):
                await post(reader, writer)
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(reader, writer) for reader, writer in connections))
        elapsed = time.perf_counter() - t0
    finally:
        for _, writer in connections:
            writer.close()
    return requests / elapsed, latencies


# The detect API as it ships (batch size and runs in flight chosen by the engine's device), and the
# classic micro-batching alternative for comparison.
# *auto* is the shipped default engine choice (backend and precision by the gate and a timing at first start);
# the others run ONNX Runtime FP32.
API_CONFIGS: dict[str, dict[str, str]] = {
    "default": {},
    "batching": {"RTDETECT_MAX_BATCH_SIZE": "8", "RTDETECT_INFERENCE_WORKERS": "1"},
    "auto": {"RTDETECT_BACKEND": "auto", "RTDETECT_PRECISION": "auto"},
}
# (configuration, concurrency) levels, run round-robin so that the machine's noise hits all alike.
API_LEVELS = (("default", 1), ("default", 4), ("batching", 4), ("auto", 1), ("auto", 4))


@dataclass
class ApiLevel:
    config: str
    concurrency: int
    batch: int  # the server's batch limit and runs in flight, from its /model
    workers: int
    engine: str = ""  # backend and precision the server runs, from its /model
    rates: list[float] = field(default_factory=list)  # /detect images/s, one per round
    p50s: list[float] = field(default_factory=list)
    raws: list[float] = field(default_factory=list)  # raw engine images/s timed just before each round

    @property
    def ratio(self) -> float:
        return statistics.median(r / raw for r, raw in zip(self.rates, self.raws, strict=True))

    @property
    def ratio_range(self) -> tuple[float, float]:
        ratios = [r / raw for r, raw in zip(self.rates, self.raws, strict=True)]
        return min(ratios), max(ratios)


def _api_server(
    model_dir: Path, threads: int, extra_env: dict[str, str], logs: Path, port: int
) -> AbstractContextManager[ServerProcess]:
    # onnxruntime fp32, as the raw engine it is compared with (the default backend=auto may choose another).
    env = {"RTDETECT_MODEL_DIR": str(model_dir), "RTDETECT_PORT": str(port), "RTDETECT_HOST": LOOPBACK,
           "RTDETECT_BACKEND": "onnxruntime", "RTDETECT_PRECISION": "fp32",
           "RTDETECT_ONNXRUNTIME__INTRA_OP_THREADS": str(threads), "RTDETECT_LOG_LEVEL": "warning",
           "RTDETECT_GPU_SAMPLE_INTERVAL_S": "0", "RTDETECT_GRPC_PORT": "0", **extra_env}  # fmt: skip
    return server_process(
        [sys.executable, "-m", "detect_api"],
        env=env,
        ready_url=f"http://{LOOPBACK}:{port}/model",
        log_path=logs / f"detect_api-{port}.log",
    )


def bench_detect_api(
    model_dir: Path, threads: int, requests: int, rounds: int, payload: bytes, raw_rate: Callable[[], float]
) -> list[ApiLevel]:
    """Start the real detect API (one subprocess per configuration) and drive every level `rounds` times.

    `raw_rate` times the bare engine just before each round, so each ratio compares two measurements
    taken in the same minute of this shared machine's life; the reported ratio is the median of those.
    """
    logs = Path(tempfile.mkdtemp(prefix="rtdetect-bench-"))
    with contextlib.ExitStack() as stack:
        ports = {name: free_port() for name in API_CONFIGS}
        servers = {
            name: stack.enter_context(_api_server(model_dir, threads, env, logs, ports[name]))
            for name, env in API_CONFIGS.items()
        }
        _progress(f"detect API servers ready (logs in {logs})")
        levels = [
            ApiLevel(
                name,
                c,
                int(servers[name].ready["max_batch_size"]),
                int(servers[name].ready["workers"]),
                _engine_name(servers[name].ready),
            )
            for name, c in API_LEVELS
        ]
        for i in range(rounds):
            for level in levels:
                raw = raw_rate()
                _progress(f"round {i + 1}/{rounds}: /detect ({level.config}) at concurrency "
                          f"{level.concurrency}: {requests} requests")  # fmt: skip
                url = f"http://{LOOPBACK}:{ports[level.config]}/detect"
                rate, lat = asyncio.run(_drive_detect(url, payload, level.concurrency, requests))
                level.rates.append(rate)
                level.p50s.append(statistics.median(lat))
                level.raws.append(raw)
        return levels


def _engine_name(model_info: dict[str, Any]) -> str:
    return f"{model_info.get('backend', '?')} {model_info.get('precision', '')}".strip()


def raw_engine_rate(engine: Engine, single: np.ndarray, iterations: int, streams: int) -> float:
    """The bare engine's best images/s on one image at a time: one stream (1000 / p50), or `streams`
    threads calling it at once (wall clock), whichever is higher: the detect API is held to the best."""
    one = Stat("raw", 1, time_engines({"raw": engine}, single, iterations)["raw"]).images_per_s
    if streams < 2:
        return one

    def run() -> None:
        for _ in range(iterations):
            engine.infer(single)

    pool = [threading.Thread(target=run) for _ in range(streams)]
    start = time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return max(one, streams * iterations / (time.perf_counter() - start))


@dataclass(frozen=True)
class Candidate:
    label: str
    backend: str
    precision: str
    options: dict[str, Any]


_LABELS = {
    "onnxruntime": "ONNX Runtime",
    "openvino": "OpenVINO",
    "tensorrt": "TensorRT",
    "torch": "PyTorch eager",
}
BEST_BATCHES = (1, 2, 4, 8)


def bench_candidates(model_dir: Path, spec: ModelSpec, threads: int) -> list[Candidate]:
    """PyTorch eager FP32 first (the starting point), then every gated engine x precision available here."""
    options: dict[str, dict[str, Any]] = {
        "torch": {"threads": threads or None},
        "onnxruntime": {"intra_op_threads": threads},
        "openvino": {"threads": threads},
        "tensorrt": {},
    }
    found: list[Candidate] = []
    if _torch_cuda():  # the GPU starting point too: PyTorch eager on the GPU
        found.append(Candidate("PyTorch eager FP32 (CUDA)", "torch", "fp32", {"device": "cuda"}))
    for backend in ("torch", "onnxruntime", "openvino", "tensorrt"):
        if backend not in BACKENDS:
            continue
        try:
            precisions = engine_precisions(backend, model_dir, spec, options[backend])
        except (RtdetectError, ImportError, OSError) as e:
            _progress(f"{backend}: not available here, skipped ({e})")
            continue
        for precision in precisions:
            label = f"{_LABELS[backend]} {precision.upper()}"
            found.append(Candidate(label, backend, precision, options[backend]))
    return found


def _torch_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


@dataclass
class EngineRow:
    candidate: Candidate
    provider: str
    b1: Stat
    best: Stat  # the batch with the most images/s
    gate_score: float | None
    gate_passed: bool | None


def bench_engines(
    model_dir: Path, spec: ModelSpec, images: list[np.ndarray], iterations: int, threads: int
) -> list[EngineRow]:
    candidates = bench_candidates(model_dir, spec, threads)
    engines: dict[str, Engine] = {}
    loaded: dict[str, Candidate] = {}
    for c in candidates:
        _progress(f"loading {c.label}")
        engine = create_engine(c.backend, model_dir, spec, c.options, precision=c.precision)
        try:
            engine.load()
        except RtdetectError as e:
            _progress(f"{c.label}: cannot load, skipped ({e})")
            continue
        engines[c.label], loaded[c.label] = engine, c
    stats: dict[str, list[Stat]] = {label: [] for label in engines}
    for batch_size in BEST_BATCHES:
        batch, _ = preprocess([images[i % len(images)] for i in range(batch_size)], spec)
        runs = iterations if batch_size == 1 else max(5, iterations // 4)
        fitting = {k: e for k, e in engines.items() if e.max_batch_size >= batch_size}
        for label, samples in time_engines(fitting, batch, runs).items():
            stats[label].append(Stat(label, batch_size, samples))
    gate: GateRecord | None = load_gate(model_dir, machine=current_machine())
    rows = []
    for label, engine in engines.items():
        c = loaded[label]
        rows.append(EngineRow(
            c, engine.provider, stats[label][0], max(stats[label], key=lambda st: st.images_per_s),
            gate.score(c.backend, c.precision) if gate else None,
            gate.passed(c.backend, c.precision) if gate else None,
        ))  # fmt: skip
        engine.close()
    return rows


def _gate_cell(row: EngineRow) -> str:
    if row.candidate.backend == "torch":
        return "(source)"
    if row.gate_score is None:
        return "not measured"
    return f"{row.gate_score:.3f} {'pass' if row.gate_passed else 'FAIL'}"


def _engine_lines(
    rows: list[EngineRow], machine: Machine, spec: ModelSpec, iterations: int, threads: int
) -> list[str]:
    lines = [
        f"Machine: {machine_description()}; CPU flags that decide reduced precision: "
        f"{' '.join(machine.flags) or 'none'}; GPU: {machine.gpu or 'none'}. "
        f"Model: {spec.name} ({spec.input_width}x{spec.input_height}), {iterations} interleaved iterations "
        f"per engine at batch 1 (a quarter of that at batches {', '.join(map(str, BEST_BATCHES[1:]))}), "
        f"intra-op threads: {threads or 'all cores'}. Gate: mAP@0.5:0.95 against ONNX Runtime FP32 on the "
        "evaluation photos (`python -m engine_build precision`).",
        "",
        "| engine | runs on | p50 ms (batch 1) | p99 ms (batch 1) | images/s at best batch | best batch | gate |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.candidate.label} | {r.provider} | {r.b1.p50:.1f} | {r.b1.p99:.1f} | "
            f"{r.best.images_per_s:.1f} | {r.best.batch} | {_gate_cell(r)} |"
        )
    by_key = {(r.candidate.backend, r.candidate.precision): r for r in rows}
    torch_row, ort_row = by_key.get(("torch", "fp32")), by_key.get(("onnxruntime", "fp32"))
    lines.append("")
    if torch_row and ort_row:
        lines.append(f"- Batch 1: ONNX Runtime FP32 is **{torch_row.b1.p50 / ort_row.b1.p50:.2f}x** faster than "
                     "PyTorch eager (p50).")  # fmt: skip
    passing = [r for r in rows if r.candidate.backend != "torch" and r.gate_passed]
    fastest = max(passing, key=lambda r: r.b1.images_per_s) if passing else None
    if fastest and ort_row:
        lines.append(f"- Fastest gate-passing engine at batch 1: **{fastest.candidate.label}**, "
                     f"{ort_row.b1.p50 / fastest.b1.p50:.2f}x ONNX Runtime FP32 (p50).")  # fmt: skip
    return lines


def run_bench(
    model_dir: Path,
    *,
    iterations: int,
    threads: int,
    requests: int,
    rounds: int,
    output: Path,
    engines_only: bool = False,
) -> None:
    """Both tables into docs/benchmarks.md; `engines_only` (the GPU check) writes the engines table alone."""
    spec = ModelSpec.load(model_dir)
    photos = parity_images()
    images = list(photos.values())
    machine = current_machine()
    load_start = os.getloadavg()[0]
    _progress(f"engines for {spec.name} on {machine.cpu} (threads={threads or 'all'})")
    rows = bench_engines(model_dir, spec, images, iterations, threads)
    for line in _engine_lines(rows, machine, spec, iterations, threads):  # now: /detect takes minutes more
        _progress(line)
    if engines_only:
        body = "## Engines (`python -m engine_build bench --engines-only`)\n\n" + "\n".join(
            [
                *_engine_lines(rows, machine, spec, iterations, threads),
                "",
                f"Run: {time.strftime('%Y-%m-%d')}.",
            ]
        )
        print(body)
        write_section(output, section_key(machine) + ".engines", body)
        _progress(f"wrote {output}")
        return

    onnx = create_engine(
        "onnxruntime", model_dir, spec, providers=["CPUExecutionProvider"], intra_op_threads=threads
    )
    onnx.load()
    single, _ = preprocess([images[0]], spec)

    def raw_rate() -> float:
        return raw_engine_rate(onnx, single, iterations, streams=CPU_WORKERS)

    frame = cv2.resize(photos["astronaut"], (640, 480))
    ok, jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    api = bench_detect_api(model_dir, threads, requests, rounds, jpeg.tobytes(), raw_rate)
    onnx.close()

    lines = _engine_lines(rows, machine, spec, iterations, threads)
    by_key = {(r.candidate.backend, r.candidate.precision): r for r in rows}
    torch_row, ort_row = by_key.get(("torch", "fp32")), by_key.get(("onnxruntime", "fp32"))
    passing = [r for r in rows if r.candidate.backend != "torch" and r.gate_passed]
    fastest = max(passing, key=lambda r: r.b1.images_per_s) if passing else None
    lines += [
        "",
        "`POST /detect` end to end: a 640x480 JPEG, the detect API in a uvicorn subprocess, the client "
        f"(keep-alive connections, one per concurrent request, pre-built requests) on the same "
        f"{os.cpu_count()} cores; {rounds} rounds of {requests} requests per level, the levels "
        "taken in turn. Before each round the raw engine is timed (ONNX Runtime, batch 1, inference only, "
        f"the better of one stream and {CPU_WORKERS} streams at once); the ratio is the median of the rounds' "
        "ratios. The raw engine is timed alone here, so it is faster than the ONNX Runtime row above, "
        "which is timed interleaved with the other engines. "
        "*default* is the detect API with ONNX Runtime FP32 (RTDETECT_BACKEND=onnxruntime, "
        "RTDETECT_PRECISION=fp32); *batching* is the same server with classic micro-batching (batch up to 8, "
        "one batch in the engine at a time); *auto* is the detect API as it ships (backend and precision "
        "chosen at its first start: the fastest the gate lets through).",
        "",
        "| server | engine | batch / in flight | concurrency | /detect images/s | p50 ms | raw engine images/s "
        "| ratio to raw ONNX Runtime FP32 | ratio range |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for level in api:
        low, high = level.ratio_range
        lines.append(
            f"| {level.config} | {level.engine} | {level.batch} / {level.workers} | {level.concurrency} "
            f"| {statistics.median(level.rates):.1f} | {statistics.median(level.p50s):.1f} "
            f"| {statistics.median(level.raws):.1f} | **{level.ratio:.2f}** | {low:.2f}-{high:.2f} |"
        )
    levels = {(level.config, level.concurrency): level for level in api}
    c4, auto4 = levels[("default", 4)], levels[("auto", 4)]
    # Same round, same minute: auto's rate over ONNX Runtime FP32's, per round; the median of those.
    auto_x = statistics.median(a / d for a, d in zip(auto4.rates, c4.rates, strict=True))
    kernels = int8_kernel_class(machine.flags)
    lines += [""]
    if torch_row and ort_row:
        speedup = torch_row.b1.p50 / ort_row.b1.p50
        lines.append(f"- Target: ONNX Runtime >= 1.5x PyTorch eager at batch 1: {speedup:.2f}x, "
                     f"{'met' if speedup >= 1.5 else 'NOT met'}.")  # fmt: skip
    lines += [
        f"- Target: /detect at concurrency 4 >= 0.8 of the raw engine: {c4.ratio:.2f} (median of {rounds} "
        f"rounds), {'met' if c4.ratio >= 0.8 else 'NOT met'}.",
        f"- /detect at concurrency 4, *auto* ({auto4.engine}) against ONNX Runtime FP32: **{auto_x:.2f}x** "
        f"(median of {rounds} rounds' ratios; target on this CPU class ({kernels}): >= {AUTO_TARGETS[kernels]}x): "
        f"{'met' if auto_x >= AUTO_TARGETS[kernels] else 'NOT met'}.",
    ]
    chosen = next((r for r in rows if f"{r.candidate.backend} {r.candidate.precision}" == auto4.engine), None)
    if chosen and fastest:
        gap = fastest.b1.images_per_s / chosen.b1.images_per_s
        lines.append(f"- The auto choice ({chosen.candidate.label}) against the fastest gate-passing engine "
                     f"measured here ({fastest.candidate.label}), batch 1: {gap:.2f}x "
                     f"(target <= 1.15x): {'met' if gap <= 1.15 else 'NOT met'}.")  # fmt: skip
    lines += [
        "",
        f"Run: {time.strftime('%Y-%m-%d')}; the machine's 1-minute load average was {load_start:.1f} at the start "
        f"and {os.getloadavg()[0]:.1f} at the end (other work on a shared machine shows there: above the core "
        "count, absolute figures are noise and only the interleaved ratios mean much).",
    ]
    body = (
        f"## Engines and /detect on a CPU with {CLASS_NAMES[kernels]} "
        "(`python -m engine_build bench`)\n\n" + "\n".join(lines)
    )
    print(body)
    write_section(output, section_key(machine), body)
    _progress(f"wrote {output}")
