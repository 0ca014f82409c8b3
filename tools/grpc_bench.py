"""gRPC against REST on the same detect API process, side by side in one run; figures for docs/benchmarks.md.

    python -m tools.grpc_bench                      # 5 rounds, 240 requests per level, 20 s streams
    python -m tools.grpc_bench --rounds 3 --requests 120 --stream-seconds 10

One real detect API (`python -m detect_api`, ONNX Runtime FP32, as `python -m engine_build bench` runs it)
serves both protocols on the same Detector. Levels, taken in turn each round so the shared machine's noise
hits all alike: REST `POST /detect` and gRPC `Detect` at concurrency 1 and 4 with the same 640x480 JPEG,
then `DetectStream` fed at 30 frames/s for a while. Just before each level the raw engine is timed
(inference only, batch 1, the better of one stream and the server's runs in flight), and every figure is
reported as a ratio to it: images/s against the raw engine's images/s, latency against its per-image time.

Both load generators cost the client as little CPU as possible (it shares the cores with the server):
REST writes pre-built HTTP/1.1 requests to keep-alive connections (engine_build.bench); gRPC sends the
request serialised once, over one channel per concurrent caller, and checks every answer.
Traffic stays on loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import grpc
import numpy as np

from detect_api.proto import detect_pb2 as pb
from engine_build.bench import (
    _api_server,
    _drive_detect,
    machine_description,
    raw_engine_rate,
    write_section,
)
from engine_build.export import parity_images
from inference.engines import Engine, create_engine
from inference.gate import cpu_identity
from inference.pipeline import CPU_WORKERS
from inference.preprocess import preprocess
from inference.spec import ModelSpec
from tools.servers import LOOPBACK, free_port

SECTION = "tools.grpc_bench"
DETECT = "/rtdetect.v1.DetectService/Detect"
STREAM = "/rtdetect.v1.DetectService/DetectStream"
LEVELS = (("REST /detect", 1), ("gRPC Detect", 1), ("REST /detect", 4), ("gRPC Detect", 4))


def cpu_flags() -> str:
    """The CPU features that change inference speed (docs: ENVIRONMENT's "CPUs differ between machines")."""
    return " ".join(cpu_identity()[1]) or "none that matter"


def _progress(msg: str) -> None:
    print(f"[grpc_bench] {msg}", file=sys.stderr, flush=True)


async def drive_grpc(
    target: str, request: bytes, concurrency: int, requests: int
) -> tuple[float, list[float]]:
    """`Detect` with the pre-serialised `request`, `requests` times from `concurrency` callers, one channel
    each (as REST's one connection each). Every answer must carry detections; anything else stops it."""
    latencies: list[float] = []
    remaining = requests
    channels = [grpc.aio.insecure_channel(target) for _ in range(concurrency)]
    try:
        calls = [
            ch.unary_unary(
                DETECT, request_serializer=None, response_deserializer=pb.DetectResponse.FromString
            )
            for ch in channels
        ]

        async def call(detect: grpc.aio.UnaryUnaryMultiCallable) -> None:
            response = await detect(request, timeout=30)
            if not response.detections:
                raise RuntimeError(f"gRPC Detect found nothing: {response}")

        async def worker(detect: grpc.aio.UnaryUnaryMultiCallable) -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                t0 = time.perf_counter()
                await call(detect)
                latencies.append((time.perf_counter() - t0) * 1000.0)

        for detect in calls:  # warm-up: every channel, and the server's first calls
            for _ in range(2):
                await call(detect)
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(detect) for detect in calls))
        elapsed = time.perf_counter() - t0
    finally:
        for ch in channels:
            await ch.close()
    return requests / elapsed, latencies


@dataclass
class StreamRun:
    sent: int
    results: int
    dropped: int
    seconds: float
    latencies_ms: list[float]

    @property
    def results_per_s(self) -> float:
        return self.results / self.seconds


async def drive_stream(target: str, jpeg: bytes, fps: float, seconds: float) -> StreamRun:
    """`DetectStream` fed at `fps` for `seconds`: results/s and each result's latency (frame sent to its
    result received)."""
    sent_at: dict[int, float] = {}
    latencies: list[float] = []
    frames = int(fps * seconds)

    async def paced() -> AsyncIterator[bytes]:
        start = time.perf_counter()
        for i in range(frames):
            await asyncio.sleep(max(0.0, start + i / fps - time.perf_counter()))  # the camera's frame clock
            sent_at[i] = time.perf_counter()
            yield pb.Frame(frame_id=i, image=pb.Image(encoded=jpeg)).SerializeToString()

    async with grpc.aio.insecure_channel(target) as channel:
        stream = channel.stream_stream(
            STREAM, request_serializer=None, response_deserializer=pb.Result.FromString
        )
        t0 = time.perf_counter()
        last: pb.Result | None = None
        async for result in stream(paced()):
            latencies.append((time.perf_counter() - sent_at[result.frame_id]) * 1000.0)
            last = result
        elapsed = time.perf_counter() - t0
    if last is None:
        raise RuntimeError("DetectStream returned no result")
    return StreamRun(frames, len(latencies), int(last.frames_dropped), elapsed, latencies)


@dataclass
class Level:
    name: str
    concurrency: int
    rates: list[float] = field(default_factory=list)
    p50s: list[float] = field(default_factory=list)
    raws: list[float] = field(default_factory=list)  # raw engine images/s, timed just before each round

    def ratio(self) -> float:
        return statistics.median(r / raw for r, raw in zip(self.rates, self.raws, strict=True))

    def ratio_range(self) -> tuple[float, float]:
        ratios = [r / raw for r, raw in zip(self.rates, self.raws, strict=True)]
        return min(ratios), max(ratios)


def run(
    model_dir: Path,
    *,
    rounds: int,
    requests: int,
    stream_seconds: float,
    fps: float,
    threads: int,
    iterations: int,
    output: Path | None,
) -> str:
    spec = ModelSpec.load(model_dir)
    photos = parity_images()
    frame = cv2.resize(photos["astronaut"], (640, 480))
    ok, encoded = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    jpeg = encoded.tobytes()
    request = pb.DetectRequest(image=pb.Image(encoded=jpeg)).SerializeToString()

    onnx: Engine = create_engine(
        "onnxruntime", model_dir, spec, providers=["CPUExecutionProvider"], intra_op_threads=threads
    )
    onnx.load()
    single, _ = preprocess([frame], spec)

    def raw_rate() -> float:
        return raw_engine_rate(onnx, single, iterations, streams=CPU_WORKERS)

    http_port, grpc_port = free_port(), free_port()
    logs = Path(tempfile.mkdtemp(prefix="rtdetect-grpc-bench-"))
    levels = [Level(name, c) for name, c in LEVELS]
    streams: list[tuple[StreamRun, float]] = []
    loads: list[float] = []  # the machine's 1-minute load average at each level: other work shows there
    with _api_server(model_dir, threads, {"RTDETECT_GRPC_PORT": str(grpc_port)}, logs, http_port) as server:
        batch, workers = int(server.ready["max_batch_size"]), int(server.ready["workers"])
        _progress(f"detect API ready: HTTP {http_port}, gRPC {grpc_port} (logs in {logs})")
        url, target = f"http://{LOOPBACK}:{http_port}/detect", f"{LOOPBACK}:{grpc_port}"
        for i in range(rounds):
            for level in levels:
                loads.append(os.getloadavg()[0])
                raw = raw_rate()
                _progress(f"round {i + 1}/{rounds}: {level.name} at concurrency {level.concurrency}")
                if level.name.startswith("REST"):
                    rate, lat = asyncio.run(_drive_detect(url, jpeg, level.concurrency, requests))
                else:
                    rate, lat = asyncio.run(drive_grpc(target, request, level.concurrency, requests))
                level.rates.append(rate)
                level.p50s.append(statistics.median(lat))
                level.raws.append(raw)
            raw = raw_rate()
            _progress(f"round {i + 1}/{rounds}: DetectStream at {fps:g} fps for {stream_seconds:g} s")
            streams.append((asyncio.run(drive_stream(target, jpeg, fps, stream_seconds)), raw))
    onnx.close()
    body = report(
        spec, levels, streams, rounds, requests, fps, stream_seconds, threads, batch, workers, loads
    )
    print(body)
    if output is not None:
        write_section(output, SECTION, body)
    return body


def report(
    spec: ModelSpec,
    levels: list[Level],
    streams: list[tuple[StreamRun, float]],
    rounds: int,
    requests: int,
    fps: float,
    stream_seconds: float,
    threads: int,
    batch: int,
    workers: int,
    loads: list[float],
) -> str:
    lines = [
        "## gRPC and REST side by side (`python -m tools.grpc_bench`)",
        "",
        f"Machine: {machine_description()}, CPU flags: {cpu_flags()}, inference on the CPU. Model: {spec.name} ({spec.input_width}x{spec.input_height}), "
        f"ONNX Runtime FP32, intra-op threads: {threads or 'all cores'}; the server as it ships (batch "
        f"{batch}, {workers} in flight). One detect API process serves both protocols on one Detector; "
        f"the client runs on the same cores. {rounds} rounds of {requests} requests per level, levels in "
        "turn, the same 640x480 JPEG everywhere. Before each level the raw engine is timed (inference "
        f"only, batch 1, the better of one and {CPU_WORKERS} streams); ratios are medians of the rounds' "
        f"ratios. Load average (1 min) while it ran: {min(loads):.1f}-{max(loads):.1f} on "
        f"{os.cpu_count()} cores (a shared machine: other work shows there and in the ratio ranges).",
        "",
        "| protocol | concurrency | images/s | p50 ms | raw engine images/s | ratio to raw engine | ratio range |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for level in levels:
        low, high = level.ratio_range()
        lines.append(
            f"| {level.name} | {level.concurrency} | {statistics.median(level.rates):.1f} "
            f"| {statistics.median(level.p50s):.1f} | {statistics.median(level.raws):.1f} "
            f"| **{level.ratio():.2f}** | {low:.2f}-{high:.2f} |"
        )
    lines += [
        "",
        f"`DetectStream` fed at {fps:g} frames/s (the JPEG as encoded frames) for {stream_seconds:g} s per "
        "round; latency is from a frame leaving the client to its result arriving. Results/s is also shown "
        "against the raw engine's images/s, and p50 latency against the raw engine's time per image.",
        "",
        "| round | frames sent | results/s | dropped | p50 ms | p95 ms | first tenth p50 | last tenth p50 "
        "| results/s / raw engine | p50 / raw engine time |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i, (s, raw) in enumerate(streams, start=1):
        lat = s.latencies_ms
        tenth = max(1, len(lat) // 10)
        lines.append(
            f"| {i} | {s.sent} | {s.results_per_s:.1f} | {s.dropped} | {statistics.median(lat):.1f} "
            f"| {float(np.percentile(lat, 95)):.1f} | {statistics.median(lat[:tenth]):.1f} "
            f"| {statistics.median(lat[-tenth:]):.1f} | {s.results_per_s / raw:.2f} "
            f"| {statistics.median(lat) / (1000.0 / raw):.2f} |"
        )
    rest4 = next(lv for lv in levels if lv.name.startswith("REST") and lv.concurrency == 4)
    grpc4 = next(lv for lv in levels if lv.name.startswith("gRPC") and lv.concurrency == 4)
    wins = sum(g >= r for g, r in zip(grpc4.rates, rest4.rates, strict=True))
    verdict = statistics.median(grpc4.rates) >= statistics.median(rest4.rates)
    lines += [
        "",
        f"- Target: gRPC Detect at concurrency 4 >= REST /detect in the same run: "
        f"{statistics.median(grpc4.rates):.1f} vs {statistics.median(rest4.rates):.1f} images/s (median), "
        f"gRPC ahead in {wins} of {rounds} rounds: {'met' if verdict else 'NOT met'}.",
        f"- DetectStream at {fps:g} frames/s: {statistics.median(s.results_per_s for s, _ in streams):.1f} "
        "results/s (median of rounds); latest frame wins, so latency stays flat instead of queueing.",
        "",
        f"Run: {time.strftime('%Y-%m-%d')}.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from detect_api.settings import Settings

    parser = argparse.ArgumentParser(prog="python -m tools.grpc_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=None, help="default: RTDETECT_MODEL_DIR's")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=240, help="requests per level and round")
    parser.add_argument("--stream-seconds", type=float, default=20.0)
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: all cores)")
    parser.add_argument("--iterations", type=int, default=50, help="raw engine iterations per timing")
    parser.add_argument("--output", type=Path, default=Path("docs/benchmarks.md"))
    args = parser.parse_args(argv)
    model_dir = args.model_dir or Settings().model_dir
    run(
        model_dir,
        rounds=args.rounds,
        requests=args.requests,
        stream_seconds=args.stream_seconds,
        fps=args.fps,
        threads=args.threads,
        iterations=args.iterations,
        output=args.output,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
