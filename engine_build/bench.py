"""`python -m engine_build bench`: PyTorch eager vs ONNX Runtime, and /detect end to end.

Engines are timed interleaved (one iteration of each in turn) so that noise from this shared machine
hits both alike; the figures are medians and ratios from one run, written to docs/benchmarks.md.
"""

from __future__ import annotations

import asyncio
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from engine_build.export import parity_images
from inference.engines import Engine, create_engine
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _drive_detect(
    url: str, payload: bytes, concurrency: int, requests: int
) -> tuple[float, list[float]]:
    # aiohttp's client costs far less CPU per request than httpx: the load generator shares these cores
    # with the server, so a heavy client would understate the server.
    import aiohttp

    latencies: list[float] = []
    remaining = requests
    # The multipart body is built once: the same bytes every request, and no client CPU spent on them.
    boundary = "rtdetect-bench-boundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="frame.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + payload
        + f"\r\n--{boundary}--\r\n".encode()
    )
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}

    async def post(session: aiohttp.ClientSession) -> None:
        async with session.post(url, data=body, headers=headers) as r:
            r.raise_for_status()
            await r.read()

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            t0 = time.perf_counter()
            await post(session)
            latencies.append((time.perf_counter() - t0) * 1000.0)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        for _ in range(4):  # warm-up
            await post(session)
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    return requests / elapsed, latencies


def bench_detect_api(
    model_dir: Path, threads: int, requests: int, payload: bytes, raw_rate: Callable[[], float]
) -> dict[int, tuple[float, float, float]]:
    """Start the real detect API in a subprocess; returns {concurrency: (images/s, p50 ms, raw images/s)}.

    `raw_rate` times the bare engine just before each level, so each ratio compares two measurements
    taken in the same minute of this shared machine's life.
    """
    port = _free_port()
    env = {**os.environ, "RTDETECT_MODEL_DIR": str(model_dir), "RTDETECT_PORT": str(port),
           "RTDETECT_HOST": "127.0.0.1", "RTDETECT_INTRA_OP_THREADS": str(threads), "RTDETECT_LOG_LEVEL": "warning"}  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "detect_api"], env=env)
    try:
        import httpx

        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("detect API did not become ready")
            time.sleep(0.2)
        results: dict[int, tuple[float, float, float]] = {}
        for concurrency in (1, 4):
            raw = raw_rate()
            _progress(f"/detect at concurrency {concurrency}: {requests} requests")
            rate, lat = asyncio.run(
                _drive_detect(f"http://127.0.0.1:{port}/detect", payload, concurrency, requests)
            )
            results[concurrency] = (rate, statistics.median(lat), raw)
        return results
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def run_bench(model_dir: Path, *, iterations: int, threads: int, requests: int, output: Path) -> None:
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
        return Stat("raw", 1, time_engines({"raw": onnx}, single, iterations)["raw"]).images_per_s

    frame = cv2.resize(photos["astronaut"], (640, 480))
    ok, jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    api = bench_detect_api(model_dir, threads, requests, jpeg.tobytes(), raw_rate)
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
        f"`POST /detect` end to end (640x480 JPEG, uvicorn subprocess, {requests} requests per level, the "
        "HTTP client on the same 2 cores), against the raw engine (ONNX Runtime, batch 1, inference only) "
        "timed just before each level:",
        "",
        "| concurrency | /detect images/s | p50 ms | raw engine images/s | ratio to raw engine |",
        "|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {c} | {rate:.1f} | {p50:.1f} | {raw:.1f} | {rate / raw:.2f} |"
        for c, (rate, p50, raw) in api.items()
    ]
    body = "## Engines and /detect (`python -m engine_build bench`)\n\n" + "\n".join(lines)
    print(body)
    write_section(output, SECTION, body)
    _progress(f"wrote {output}")
