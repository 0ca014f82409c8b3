"""`python -m engine_build bench`: PyTorch eager vs ONNX Runtime, and /detect end to end.

Engines are timed interleaved (one iteration of each in turn) so that noise from this shared machine
hits both alike; the figures are medians and ratios from one run, written to docs/benchmarks.md.
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
from urllib.parse import urlsplit

import cv2
import numpy as np

from engine_build.export import parity_images
from engine_build.servers import LOOPBACK, ServerProcess, free_port, server_process
from inference.engines import Engine, create_engine
from inference.pipeline import CPU_WORKERS
from inference.preprocess import preprocess
from inference.spec import ModelSpec

SECTION = "engine_build.bench"


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


def write_section(path: Path, key: str, body: str) -> None:
    """Replace this script's section of the shared benchmarks page, keeping everyone else's."""
    start, end = f"<!-- {key}:start -->", f"<!-- {key}:end -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    text = (
        path.read_text()
        if path.exists()
        else "# Benchmarks\n\nEach section is written by the script it names.\n"
    )
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


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
API_CONFIGS: dict[str, dict[str, str]] = {
    "default": {},
    "batching": {"RTDETECT_MAX_BATCH_SIZE": "8", "RTDETECT_INFERENCE_WORKERS": "1"},
}
# (configuration, concurrency) levels, run round-robin so that the machine's noise hits all alike.
API_LEVELS = (("default", 1), ("default", 4), ("batching", 4))


@dataclass
class ApiLevel:
    config: str
    concurrency: int
    batch: int  # the server's batch limit and runs in flight, from its /model
    workers: int
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
           "RTDETECT_GPU_SAMPLE_INTERVAL_S": "0", **extra_env}  # fmt: skip
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
            ApiLevel(name, c, int(servers[name].ready["max_batch_size"]), int(servers[name].ready["workers"]))
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


def run_bench(
    model_dir: Path, *, iterations: int, threads: int, requests: int, rounds: int, output: Path
) -> None:
    spec = ModelSpec.load(model_dir)
    photos = parity_images()
    images = list(photos.values())
    _progress(f"loading engines for {spec.name} (threads={threads or 'all'})")
    onnx = create_engine(
        "onnxruntime", model_dir, spec, providers=["CPUExecutionProvider"], intra_op_threads=threads
    )
    torch_engine = create_engine("torch", model_dir, spec, threads=threads or None)
    engines: dict[str, Engine] = {"PyTorch eager FP32": torch_engine, "ONNX Runtime CPU": onnx}
    for engine in engines.values():
        engine.load()
    stats: list[Stat] = []
    for batch_size in (1, 8):
        batch, _ = preprocess([images[i % len(images)] for i in range(batch_size)], spec)
        samples = time_engines(engines, batch, iterations)
        stats += [Stat(name, batch_size, s) for name, s in samples.items()]
    torch_engine.close()
    single, _ = preprocess([images[0]], spec)

    def raw_rate() -> float:
        return raw_engine_rate(onnx, single, iterations, streams=CPU_WORKERS)

    frame = cv2.resize(photos["astronaut"], (640, 480))
    ok, jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    api = bench_detect_api(model_dir, threads, requests, rounds, jpeg.tobytes(), raw_rate)
    onnx.close()

    lines = [
        f"Machine: {machine_description()}. Model: {spec.name} ({spec.input_width}x{spec.input_height}), "
        f"{iterations} interleaved iterations per engine, intra-op threads: {threads or 'all cores'}.",
        "",
        "| engine | batch | p50 ms | p99 ms | images/s |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [f"| {s.label} | {s.batch} | {s.p50:.1f} | {s.p99:.1f} | {s.images_per_s:.1f} |" for s in stats]
    lines.append("")
    for b in (1, 8):
        t = next(s for s in stats if s.label.startswith("PyTorch") and s.batch == b)
        o = next(s for s in stats if s.label.startswith("ONNX") and s.batch == b)
        lines.append(
            f"- Batch {b}: ONNX Runtime is **{t.p50 / o.p50:.2f}x** faster than PyTorch eager (p50)."
        )
    lines += [
        "",
        "`POST /detect` end to end: a 640x480 JPEG, the detect API in a uvicorn subprocess, the client "
        f"(keep-alive connections, one per concurrent request, pre-built requests) on the same "
        f"{os.cpu_count()} cores; {rounds} rounds of {requests} requests per level, the levels "
        "taken in turn. Before each round the raw engine is timed (ONNX Runtime, batch 1, inference only, "
        f"the better of one stream and {CPU_WORKERS} streams at once); the ratio is the median of the rounds' "
        "ratios. The raw engine is timed alone here, so it is faster than the ONNX Runtime row above, "
        "which is timed interleaved with PyTorch. "
        "*default* is the detect API as it ships; *batching* is the same server with classic "
        "micro-batching (batch up to 8, one batch in the engine at a time).",
        "",
        "| server | batch / in flight | concurrency | /detect images/s | p50 ms | raw engine images/s "
        "| ratio to raw engine | ratio range |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for level in api:
        low, high = level.ratio_range
        lines.append(
            f"| {level.config} | {level.batch} / {level.workers} | {level.concurrency} "
            f"| {statistics.median(level.rates):.1f} | {statistics.median(level.p50s):.1f} "
            f"| {statistics.median(level.raws):.1f} | **{level.ratio:.2f}** | {low:.2f}-{high:.2f} |"
        )
    b1 = {s.label: s for s in stats if s.batch == 1}
    speedup = b1["PyTorch eager FP32"].p50 / b1["ONNX Runtime CPU"].p50
    c4 = next(level for level in api if level.config == "default" and level.concurrency == 4)
    lines += [
        "",
        f"- Target: ONNX Runtime >= 1.5x PyTorch eager at batch 1: {speedup:.2f}x, "
        f"{'met' if speedup >= 1.5 else 'NOT met'}.",
        f"- Target: /detect at concurrency 4 >= 0.8 of the raw engine: {c4.ratio:.2f} (median of {rounds} "
        f"rounds), {'met' if c4.ratio >= 0.8 else 'NOT met'}.",
        "",
        f"Run: {time.strftime('%Y-%m-%d')}.",
    ]
    body = "## Engines and /detect (`python -m engine_build bench`)\n\n" + "\n".join(lines)
    print(body)
    write_section(output, SECTION, body)
    _progress(f"wrote {output}")
