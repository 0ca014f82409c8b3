"""Live-path benchmark: synthetic aiortc clients against the media server, rtdetect's pipeline vs a naive one.

    python -m tools.bench --peers 1 --seconds 300 --fps 30
    python -m tools.bench --peers 2 --seconds 60
    python -m tools.bench --peers 1 --seconds 60 --engine-delay-ms 50

Each run starts the server as a subprocess (`python -m tools.bench_server`, so its CPU is measured apart from the
clients'), twice: with the real pipeline and with the naive baseline (inference inline in the track's recv(),
as aiortc's example server does). The clients send numbered frames (tools/synthetic.py) and time
every frame that comes back. Results print as a table and merge into docs/benchmarks.md, keyed by
(pipeline, peers, fps, engine delay): a run replaces its own rows and keeps the others.

WebRTC traffic must stay on loopback: as root, the script re-executes itself in a network namespace whose
only interface is `lo` (unshare -n), unless it already runs in one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import logging
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from inference.paths import default_model_dir
from rtc.ice import HostAddressOverride
from tools.servers import LOOPBACK, ServerProcess, cpu_seconds, free_port, server_process
from tools.synthetic import SyntheticPeer

SECTION = "tools.bench"
WARMUP_S = 3.0  # after every peer's first frame came back: encoders ramp up their bitrate
DATA_PREFIX = f"<!-- {SECTION}:data "
TARGETS = (
    "Targets (640x480 at 30 fps, CPU inference): 1 peer for 5 minutes: received FPS >= 28, round trip "
    "p95 <= 150 ms, drift <= 10 %; 2 peers: each >= 25 FPS, detection rates within 20 % of each other; the "
    "naive baseline's latency grows over the run, rtdetect's does not."
)


def log(message: str) -> None:
    print(f"[media bench] {message}", file=sys.stderr, flush=True)


# --- measurement -----------------------------------------------------------------------------------------


@dataclass
class PeerResult:
    received_fps: float
    rtt_p50_ms: float
    rtt_p95_ms: float
    rtt_p99_ms: float
    first_tenth_ms: float
    last_tenth_ms: float
    drift_pct: float
    detections_per_s: float
    unreadable: int


@dataclass
class RunResult:
    pipeline: str
    peers: int
    fps: float
    engine_delay_ms: float
    seconds: float
    model: str
    server_cpu_pct: float  # of one core, averaged over the measured window
    server_rss_mb: float  # at the end of the window
    client_cpu_pct: float
    date: str
    # The machine's 1-minute load average, sampled every second over the window: other work on a shared
    # machine shows up here (and in the drift) rather than silently in the figures.
    load_avg: float = 0.0
    per_peer: list[PeerResult] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, int, float, float]:
        return (self.pipeline, self.peers, self.fps, self.engine_delay_ms)


def peer_result(peer: SyntheticPeer, start: float, end: float) -> PeerResult:
    echoes = [e for e in peer.echoes if start <= e.received < end]
    timed = [e for e in echoes if e.rtt is not None]
    rtts = np.array([e.rtt for e in timed], dtype=np.float64) * 1e3
    if len(rtts) < 10:
        raise RuntimeError(f"only {len(rtts)} frames came back in {end - start:.0f} s")
    tenth = max(1, len(rtts) // 10)
    first, last = float(rtts[:tenth].mean()), float(rtts[-tenth:].mean())
    results = [m for m in peer.detections if "t_received" in m and start <= m["t_received"] < end]
    return PeerResult(
        received_fps=len(echoes) / (end - start),
        rtt_p50_ms=float(np.percentile(rtts, 50)),
        rtt_p95_ms=float(np.percentile(rtts, 95)),
        rtt_p99_ms=float(np.percentile(rtts, 99)),
        first_tenth_ms=first,
        last_tenth_ms=last,
        drift_pct=(last - first) / first * 100.0,
        detections_per_s=len(results) / (end - start),
        unreadable=sum(e.number is None for e in echoes),
    )


def _rss_mb(pid: int) -> float:
    pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


@contextlib.contextmanager
def media_server(
    pipeline: str, peers: int, engine_delay_ms: float, model_dir: Path, logs: Path
) -> Iterator[tuple[ServerProcess, str]]:
    """The media server as a ready subprocess, and its URL."""
    port = free_port()
    env = {
        "RTDETECT_MEDIA_HOST": LOOPBACK,
        "RTDETECT_MEDIA_PORT": str(port),
        "RTDETECT_MEDIA_MODEL_DIR": str(model_dir),
        "RTDETECT_MEDIA_ICE_HOST_ADDRESSES": LOOPBACK,
        "RTDETECT_MEDIA_ICE_SERVERS": "[]",
        "RTDETECT_MEDIA_MAX_PEERS": str(max(peers, 4)),
        "RTDETECT_MEDIA_GPU_SAMPLE_INTERVAL_S": "0",
        # The naive pipeline falls behind by design: its peers must not be closed as silent meanwhile.
        "RTDETECT_MEDIA_DISCONNECT_TIMEOUT_S": "120",
    }
    url = f"http://{LOOPBACK}:{port}"
    with server_process(
        [
            sys.executable,
            "-m",
            "tools.bench_server",
            "--pipeline",
            pipeline,
            "--engine-delay-ms",
            str(engine_delay_ms),
        ],
        env=env,
        ready_url=f"{url}/readyz",
        log_path=logs / f"media_server-{pipeline}-{peers}.log",
        timeout_s=90,
    ) as server:
        yield server, url


async def run_once(
    pipeline: str, peers: int, fps: float, seconds: float, engine_delay_ms: float, model_dir: Path, logs: Path
) -> RunResult:
    from skimage import data  # a real photo of a person, as in the tests

    photo = np.ascontiguousarray(data.astronaut()[:, :, ::-1])
    with media_server(pipeline, peers, engine_delay_ms, model_dir, logs) as (server, url):
        proc, info = server.proc, server.ready["model"]
        clients = [SyntheticPeer(url, photo, fps=fps) for _ in range(peers)]
        for client in clients:  # stamp results with their arrival, to count them per window
            client.channel.remove_all_listeners("message")
            client.channel.on("message", _stamped(client))
        try:
            async with aiohttp.ClientSession() as http:
                await asyncio.gather(*(c.connect(http) for c in clients))
            await asyncio.gather(*(c.wait_for_frames(1, limit_s=30) for c in clients))
            await asyncio.sleep(WARMUP_S)
            cpu0, client0, start = cpu_seconds(proc.pid), time.process_time(), time.monotonic()
            next_report = start + 30
            loads: list[float] = []
            while (now := time.monotonic()) < start + seconds:
                await asyncio.sleep(min(1.0, start + seconds - now))
                loads.append(os.getloadavg()[0])
                if time.monotonic() >= next_report:
                    next_report += 30
                    recent = [e.rtt for c in clients for e in c.echoes[-30:] if e.rtt is not None]
                    log(
                        f"  {pipeline}: {time.monotonic() - start:.0f} s, recent RTT p50 {np.median(recent) * 1e3:.0f} ms"
                    )
            end = time.monotonic()
            cpu1, client1 = cpu_seconds(proc.pid), time.process_time()
            rss = _rss_mb(proc.pid)
        finally:
            await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
        return RunResult(
            pipeline=pipeline,
            peers=peers,
            fps=fps,
            engine_delay_ms=engine_delay_ms,
            seconds=round(end - start, 1),
            model=f"{info['name']} ({info['backend']} {info.get('precision', 'fp32')}, {info['provider']})",
            server_cpu_pct=(cpu1 - cpu0) / (end - start) * 100.0,
            server_rss_mb=rss,
            client_cpu_pct=(client1 - client0) / (end - start) * 100.0,
            date=datetime.date.today().isoformat(),
            load_avg=float(np.mean(loads)) if loads else 0.0,
            per_peer=[peer_result(c, start, end) for c in clients],
        )


def _stamped(client: SyntheticPeer) -> Any:
    def on_message(message: str | bytes) -> None:
        parsed = json.loads(message)
        parsed["t_received"] = time.monotonic()
        client.messages.append(parsed)

    return on_message


# --- report ----------------------------------------------------------------------------------------------


def machine_description() -> str:
    cpu = platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = ", ".join(f"{p} {metadata.version(p)}" for p in ("aiortc", "av", "onnxruntime"))
    return (
        f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, {versions}"
    )


def _fmt(value: float, digits: int = 0) -> str:
    return f"{value:.{digits}f}"


def render(results: Sequence[RunResult], machine: str) -> str:
    models = ", ".join(sorted({r.model for r in results}))
    lines = [
        "## Live path (media server)",
        "",
        "`python -m tools.bench`: synthetic aiortc clients send 640x480 VP8 frames at the given rate, each",
        "carrying its number in its pixels, to the media server (a subprocess, real model, CPU inference), which",
        "returns every frame with boxes drawn; the round trip (RTT) is timed per frame, client encode to client",
        "decode. *naive* is the baseline: inference inline in the track's `recv()`, as in aiortc's example",
        "server. Drift compares the mean RTT of the last tenth of the run with the first tenth. CPU is % of one",
        "core; the clients run on the same machine and are not counted in the server's CPU. Load avg is the",
        "machine's 1-minute load average during the run, this benchmark included: on a shared machine, other work",
        "shows there. The engine delay is an artificial sleep added to every engine call (an engine slower than",
        "the frame interval).",
        "",
        "The naive pipeline keeps up only while decoding, inference and drawing fit in the frame interval on the",
        "event loop. Whenever they do not (a second peer, a slower engine, other work on the machine), aiortc's",
        "queue of decoded frames grows and every later frame waits behind it: latency grows for as long as that",
        "lasts and shrinks only if the pipeline later runs faster than the camera. rtdetect's latency does not",
        "depend on inference at all.",
        "",
        f"Machine: {machine}. Model: {models}.",
        "",
        TARGETS,
        "",
        "| pipeline | peers | engine delay | s | peer | recv FPS | RTT p50 | p95 | p99 | first tenth | last tenth "
        "| drift | results/s | server CPU | server RSS | load avg |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(results, key=lambda r: (r.engine_delay_ms, r.peers, r.pipeline != "detect", r.fps)):
        name = "rtdetect" if r.pipeline == "detect" else "naive"
        for i, p in enumerate(r.per_peer):
            head = (
                [name, str(r.peers), f"{r.engine_delay_ms:g} ms", _fmt(r.seconds)]
                if i == 0
                else ["", "", "", ""]
            )
            tail = (
                [
                    f"{r.server_cpu_pct:.0f} %",
                    f"{r.server_rss_mb:.0f} MB",
                    f"{r.load_avg:.1f}" if r.load_avg else "n/a",
                ]
                if i == 0
                else ["", "", ""]
            )
            cells = [
                *head,
                str(i + 1),
                _fmt(p.received_fps, 1),
                f"{p.rtt_p50_ms:.0f} ms",
                f"{p.rtt_p95_ms:.0f} ms",
                f"{p.rtt_p99_ms:.0f} ms",
                f"{p.first_tenth_ms:.0f} ms",
                f"{p.last_tenth_ms:.0f} ms",
                f"{p.drift_pct:+.0f} %",
                _fmt(p.detections_per_s, 1),
                *tail,
            ]
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *verdicts(results)]
    dates = sorted({r.date for r in results})
    lines += ["", f"Runs: {', '.join(dates)}, at {results[0].fps:g} fps." if results else ""]
    return "\n".join(lines)


def verdicts(results: Sequence[RunResult]) -> list[str]:
    out = []
    for r in results:
        if r.pipeline != "detect" or r.engine_delay_ms:
            continue
        if r.peers == 1:
            p = r.per_peer[0]
            ok = p.received_fps >= 28 and p.rtt_p95_ms <= 150 and p.drift_pct <= 10
            out.append(
                f"- 1 peer, {r.seconds:.0f} s: {p.received_fps:.1f} FPS, p95 {p.rtt_p95_ms:.0f} ms, drift "
                f"{p.drift_pct:+.0f} %: {'meets' if ok else 'misses'} the target."
            )
        elif r.peers == 2:
            rates = [p.detections_per_s for p in r.per_peer]
            spread = (max(rates) - min(rates)) / max(max(rates), 1e-9) * 100
            ok = all(p.received_fps >= 25 for p in r.per_peer) and spread <= 20
            out.append(
                f"- 2 peers: {' and '.join(f'{p.received_fps:.1f}' for p in r.per_peer)} FPS, detection rates "
                f"{spread:.0f} % apart: {'meets' if ok else 'misses'} the target."
            )
    by_key = {r.key: r for r in results}
    for r in results:
        if r.pipeline != "detect":
            continue
        naive = by_key.get(("naive", r.peers, r.fps, r.engine_delay_ms))
        if naive is not None:
            out.append(
                f"- {r.peers} peer(s), engine delay {r.engine_delay_ms:g} ms: RTT p99 rtdetect "
                f"{max(p.rtt_p99_ms for p in r.per_peer):.0f} ms, naive {max(p.rtt_p99_ms for p in naive.per_peer):.0f} ms; "
                f"drift rtdetect {max(p.drift_pct for p in r.per_peer):+.0f} %, "
                f"naive {max(p.drift_pct for p in naive.per_peer):+.0f} %."
            )
    return out


def _load(text: str) -> list[RunResult]:
    if DATA_PREFIX not in text:
        return []
    raw = text[text.index(DATA_PREFIX) + len(DATA_PREFIX) :]
    raw = raw[: raw.index(" -->")]
    out = []
    for item in json.loads(raw):
        per_peer = [PeerResult(**p) for p in item.pop("per_peer")]
        out.append(RunResult(**item, per_peer=per_peer))
    return out


def write_results(path: Path, new: Sequence[RunResult], machine: str) -> list[RunResult]:
    """Merge `new` into this script's section of the shared page (keeping everyone else's sections)."""
    start, end = f"<!-- {SECTION}:start -->", f"<!-- {SECTION}:end -->"
    text = (
        path.read_text()
        if path.exists()
        else "# Benchmarks\n\nEach section is written by the script it names.\n"
    )
    section = text[text.index(start) : text.index(end)] if start in text and end in text else ""
    merged = {r.key: r for r in _load(section)}
    merged.update({r.key: r for r in new})
    results = list(merged.values())
    data = json.dumps([asdict(r) for r in results], separators=(",", ":"))
    block = f"{start}\n{render(results, machine)}\n\n{DATA_PREFIX}{data} -->\n{end}"
    if section:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return results


# --- isolation and main ------------------------------------------------------------------------------------


def _isolated() -> bool:
    return sorted(os.listdir("/sys/class/net")) == ["lo"]


def _reexec_isolated(argv: Sequence[str]) -> int | None:
    """Run this command again inside a loopback-only network namespace; None when that is not possible."""
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None:
        return None
    inner = shlex.join([sys.executable, "-m", "tools.bench", *argv, "--no-isolate"])
    command = f"ip link set lo up && exec {inner}"
    return subprocess.call(["unshare", "-n", "sh", "-c", command])


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--peers", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=60.0, help="measured time per pipeline")
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument(
        "--engine-delay-ms", type=float, default=0.0, help="artificial slowdown per engine call"
    )
    parser.add_argument(
        "--baseline-seconds", type=float, default=None, help="naive run length (default: --seconds)"
    )
    parser.add_argument("--no-baseline", action="store_true", help="skip the naive baseline")
    parser.add_argument("--model-dir", type=Path, default=default_model_dir())
    parser.add_argument("--output", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    parser.add_argument("--no-isolate", action="store_true", help="do not re-run inside a network namespace")
    return parser.parse_args(argv)


async def amain(args: argparse.Namespace) -> list[RunResult]:
    override = HostAddressOverride([LOOPBACK])  # the client peers' candidates: loopback only
    override.install()
    logs = Path(tempfile.mkdtemp(prefix="rtdetect-media-bench-"))
    results = []
    try:
        runs = [("detect", args.seconds)]
        if not args.no_baseline:
            runs.append(("naive", args.baseline_seconds or args.seconds))
        for pipeline, seconds in runs:
            log(f"{pipeline}: {args.peers} peer(s) at {args.fps:g} fps for {seconds:g} s (logs in {logs})")
            result = await run_once(
                pipeline, args.peers, args.fps, seconds, args.engine_delay_ms, args.model_dir, logs
            )
            for i, p in enumerate(result.per_peer):
                log(
                    f"  peer {i + 1}: {p.received_fps:.1f} FPS, RTT p50/p95/p99 {p.rtt_p50_ms:.0f}/"
                    f"{p.rtt_p95_ms:.0f}/{p.rtt_p99_ms:.0f} ms, drift {p.drift_pct:+.0f} %, "
                    f"{p.detections_per_s:.1f} results/s"
                )
            log(
                f"  server CPU {result.server_cpu_pct:.0f} % of a core, RSS {result.server_rss_mb:.0f} MB, "
                f"load average {result.load_avg:.1f}"
            )
            results.append(result)
    finally:
        override.uninstall()
    return results


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if not args.no_isolate and not _isolated():
        code = _reexec_isolated(argv)
        if code is not None:
            return code
        log("cannot create a loopback-only network namespace (needs root, unshare and ip): running as is")
    logging.basicConfig(level=logging.WARNING)
    results = asyncio.run(amain(args))
    machine = machine_description()
    if args.no_write:
        print(render(results, machine))
    else:
        merged = write_results(args.output, results, machine)
        print(render(merged, machine))
        log(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
