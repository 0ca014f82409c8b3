"""The load harness: how many live streams a deployment holds, and how /detect scales with concurrency.

    python -m tools.load live --url http://127.0.0.1:8080 --levels 1,2,4,8 --seconds 20
    python -m tools.load live --url https://front/live --metrics http://replica1:8080 --metrics http://replica2:8080
    python -m tools.load detect --url http://127.0.0.1:8000 --concurrency 1,2,4,8
    python -m tools.load triton --url 127.0.0.1:8701 --concurrency 8     # Triton's own throughput, bare client

`live`: synthetic aiortc clients (tools/synthetic.py) send numbered 640x480 frames of a real photo panning
across the frame, at 30 fps, to any media-server URL (one server, or the front of several replicas). Peers are
added level by level and kept; after a warm-up each level is measured over a window: received FPS per peer,
round trip p50/p95/p99 (client encode to client decode, every frame), detection results per second per
peer, the servers' CPU per peer (process_cpu_seconds_total from each server's /metrics: `--metrics`, one per
replica; default the URL itself) and the frames they dropped. The sweep stops at the first level that misses
the quality bar (`--min-fps`, `--max-p95-ms`, `--min-results`) or whose peers cannot all connect.

`detect`: closed-loop clients at each concurrency post a real photo to POST /detect: requests/s and latency.
`triton`: the same model through Triton with no server in between, the reference /detect through Triton
should reach (python -m tools.load detect against a detect API with RTDETECT_BACKEND=triton).

Each writes its table into docs/benchmarks.md (section tools.load:<kind>); `live` also draws
docs/img/load_live.png (peers vs round-trip p95 and results/s). WebRTC stays on loopback only if the URL is
loopback: run it inside `unshare -n` on a shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import itertools
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import cv2
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from engine_build.bench import write_page_section
from inference.gate import cpu_identity
from tools.servers import cpu_seconds
from tools.synthetic import NumberedTrack, SyntheticPeer

ROOT = Path(__file__).resolve().parents[1]
PLOT = ROOT / "docs" / "img" / "load_live.png"


def log(message: str) -> None:
    print(f"[load] {message}", file=sys.stderr, flush=True)


# --- the clients ------------------------------------------------------------------------------------------


def panning_bases(photo_bgr: np.ndarray, width: int, height: int, frames: int = 60) -> list[np.ndarray]:
    """I420 backgrounds of the photo panning left and right: a detector sees a moving subject."""
    wide = cv2.resize(photo_bgr, (int(width * 1.3), height))
    span = wide.shape[1] - width
    bases = []
    for i in range(frames):
        x = round(span * (0.5 - 0.5 * np.cos(2 * np.pi * i / frames)))
        track = NumberedTrack(np.ascontiguousarray(wide[:, x : x + width]), width=width, height=height)
        bases.append(track._base)  # the I420 canvas with the code strip's neutral chroma
        track.stop()
    return bases


class MovingTrack(NumberedTrack):
    """NumberedTrack whose photo pans: each frame starts from the next precomputed background."""

    def __init__(self, bases: list[np.ndarray], *, fps: float, width: int, height: int) -> None:
        super().__init__(np.zeros((height, width, 3), np.uint8), fps=fps, width=width, height=height)
        self._bases = bases

    async def recv(self) -> Any:
        self._base = self._bases[self.sent % len(self._bases)]
        return await super().recv()


def _stamp_results(peer: SyntheticPeer) -> list[float]:
    """Arrival times of the peer's detection results (the data channel's messages), appended as they come."""
    arrivals: list[float] = []

    def on_message(message: str | bytes) -> None:
        parsed = json.loads(message)
        peer.messages.append(parsed)
        if parsed.get("type") == "detections":
            arrivals.append(time.monotonic())

    peer.channel.remove_all_listeners("message")
    peer.channel.on("message", on_message)
    return arrivals


# --- server metrics -----------------------------------------------------------------------------------------


async def scrape(http: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> dict[str, float]:
    """process_cpu_seconds_total and the live drop counters of one server ({} when it does not answer)."""
    wanted = {"process_cpu_seconds": "cpu", "rtdetect_live_frames_dropped": "dropped"}
    out: dict[str, float] = {}
    try:
        async with http.get(f"{url.rstrip('/')}/metrics", headers=headers) as resp:
            if resp.status != 200:
                return {}
            text = await resp.text()
    except (aiohttp.ClientError, OSError):
        return {}
    for family in text_string_to_metric_families(text):
        key = wanted.get(family.name)
        if key is None:
            continue
        for sample in family.samples:
            name = key if key == "cpu" else f"dropped_{sample.labels.get('stage', '')}"
            out[name] = out.get(name, 0.0) + sample.value
    return out


def main_thread_seconds(pids: Sequence[int]) -> dict[int, float]:
    """CPU seconds of each process's main thread (tid = pid); processes gone meanwhile are left out."""
    seconds = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            seconds[pid] = cpu_seconds(pid, pid)
    return seconds


def _delta(before: list[dict[str, float]], after: list[dict[str, float]], key: str) -> float:
    return sum(a.get(key, 0.0) - b.get(key, 0.0) for b, a in zip(before, after, strict=True))


# --- live ---------------------------------------------------------------------------------------------------


@dataclass
class LiveLevel:
    peers: int
    seconds: float
    fps_min: float
    fps_mean: float
    rtt_p50_ms: float
    rtt_p95_ms: float
    rtt_p99_ms: float
    results_per_peer: float  # detection results per second per peer
    drift_pct: float  # worst peer: mean round trip of the window's last tenth vs its first tenth
    cpu_per_peer_pct: float | None  # of one core, all servers together, per peer
    dropped_inference: float
    dropped_output: float
    refused: int
    misses: list[str] = field(default_factory=list)
    # With --pid (servers on this machine): the busiest server's main thread, % of one core. That thread runs
    # the event loop and aiortc's Python (RTP, SRTP, SCTP): the part of a peer that holds the GIL.
    main_thread_pct: float | None = None

    @property
    def passed(self) -> bool:
        return not self.misses


async def live_sweep(args: argparse.Namespace) -> list[LiveLevel]:
    from rtc.ice import HostAddressOverride

    photo = _photo()
    bases = panning_bases(photo, args.width, args.height)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    metrics_urls = args.metrics or [args.url]
    override = HostAddressOverride(args.ice_host or [])
    if args.ice_host:
        override.install()
    peers: list[tuple[SyntheticPeer, list[float]]] = []
    levels: list[LiveLevel] = []
    connector = aiohttp.TCPConnector(ssl=False) if args.insecure else None
    async with aiohttp.ClientSession(
        headers=headers, connector=connector, cookie_jar=aiohttp.CookieJar(unsafe=True)
    ) as http:
        try:
            for target in args.levels:
                refused = 0
                while len(peers) < target:
                    peer = SyntheticPeer(args.url, photo, fps=args.fps)
                    peer.track = MovingTrack(bases, fps=args.fps, width=args.width, height=args.height)
                    arrivals = _stamp_results(peer)
                    try:
                        await peer.connect(http)
                        await peer.wait_for_frames(1, limit_s=30)
                    except (ConnectionError, TimeoutError, aiohttp.ClientError) as e:
                        log(f"peer {len(peers) + 1} not served: {e}")
                        await peer.close()
                        refused = target - len(peers)
                        break
                    peers.append((peer, arrivals))
                await asyncio.sleep(args.warmup)  # encoders ramp their bitrate up after a peer starts
                before = [await scrape(http, u, headers) for u in metrics_urls]
                threads_before = main_thread_seconds(args.pid or [])
                start = time.monotonic()
                await asyncio.sleep(args.seconds)
                end = time.monotonic()
                threads_after = main_thread_seconds(args.pid or [])
                after = [await scrape(http, u, headers) for u in metrics_urls]
                level = _measure(peers, before, after, start, end, refused)
                shares = [
                    (threads_after[pid] - threads_before[pid]) / (end - start) * 100
                    for pid in threads_after
                    if pid in threads_before
                ]
                level.main_thread_pct = max(shares) if shares else None
                level.misses = _misses(level, args, target)
                levels.append(level)
                log(_row_text(level))
                if not level.passed:
                    log(f"stopping: {'; '.join(level.misses)}")
                    break
        finally:
            await asyncio.gather(*(p.close() for p, _ in peers), return_exceptions=True)
            if args.ice_host:
                override.uninstall()
    return levels


def _measure(
    peers: list[tuple[SyntheticPeer, list[float]]],
    before: list[dict[str, float]],
    after: list[dict[str, float]],
    start: float,
    end: float,
    refused: int,
) -> LiveLevel:
    duration = end - start
    fps, rtts, results, drifts = [], [], [], []
    for peer, arrivals in peers:
        window = [e for e in peer.echoes if start <= e.received < end]
        fps.append(len(window) / duration)
        own = [e.rtt * 1e3 for e in window if e.rtt is not None]
        rtts += own
        if len(own) >= 20:
            tenth = len(own) // 10
            first, last = statistics.fmean(own[:tenth]), statistics.fmean(own[-tenth:])
            drifts.append((last - first) / first * 100)
        results.append(sum(1 for t in arrivals if start <= t < end) / duration)
    cpu = _delta(before, after, "cpu") if all("cpu" in s for s in after) and after else None
    pct = lambda q: float(np.percentile(rtts, q)) if rtts else float("nan")  # noqa: E731
    return LiveLevel(
        peers=len(peers),
        seconds=round(duration, 1),
        fps_min=min(fps) if fps else 0.0,
        fps_mean=statistics.fmean(fps) if fps else 0.0,
        rtt_p50_ms=pct(50),
        rtt_p95_ms=pct(95),
        rtt_p99_ms=pct(99),
        results_per_peer=statistics.fmean(results) if results else 0.0,
        drift_pct=max(drifts) if drifts else float("nan"),
        cpu_per_peer_pct=(cpu / duration * 100 / len(peers)) if cpu is not None and peers else None,
        dropped_inference=_delta(before, after, "dropped_inference"),
        dropped_output=_delta(before, after, "dropped_output"),
        refused=refused,
    )


def _misses(level: LiveLevel, args: argparse.Namespace, target: int) -> list[str]:
    misses = []
    if level.refused or level.peers < target:
        misses.append(f"{target - level.peers} of {target} peers not served")
    if level.fps_min < args.min_fps:
        misses.append(f"a peer received {level.fps_min:.1f} FPS < {args.min_fps:g}")
    if not level.rtt_p95_ms <= args.max_p95_ms:
        misses.append(f"round trip p95 {level.rtt_p95_ms:.0f} ms > {args.max_p95_ms:g}")
    if level.results_per_peer < args.min_results:
        misses.append(f"{level.results_per_peer:.1f} results/s per peer < {args.min_results:g}")
    return misses


def _row_text(level: LiveLevel) -> str:
    cpu = f"{level.cpu_per_peer_pct:.0f} %" if level.cpu_per_peer_pct is not None else "n/a"
    return (
        f"{level.peers} peers: {level.fps_min:.1f}/{level.fps_mean:.1f} FPS (min/mean), RTT p50/p95/p99 "
        f"{level.rtt_p50_ms:.0f}/{level.rtt_p95_ms:.0f}/{level.rtt_p99_ms:.0f} ms (drift {level.drift_pct:+.0f} %), "
        f"{level.results_per_peer:.1f} "
        f"results/s per peer, server CPU {cpu} per peer, dropped {level.dropped_inference:.0f} (inference) "
        f"{level.dropped_output:.0f} (output)"
        + (f", main thread {level.main_thread_pct:.0f} %" if level.main_thread_pct is not None else "")
    )


def render_live(levels: Sequence[LiveLevel], args: argparse.Namespace, note: str) -> str:
    threads = any(lv.main_thread_pct is not None for lv in levels)
    lines = [
        f"## Load: live streams{': ' + args.title if args.title else ''} (`python -m tools.load live`)",
        "",
        f"Target: {args.url} ({len(args.metrics or [args.url])} server(s) measured); {args.width}x{args.height} at "
        f"{args.fps:g} fps per peer, a real photo panning; {args.seconds:g} s per level after {args.warmup:g} s "
        f"of warm-up; peers are added and kept. Quality bar: every peer >= {args.min_fps:g} FPS, round trip "
        f"p95 <= {args.max_p95_ms:g} ms, >= {args.min_results:g} results/s per peer. CPU is % of one core per "
        "peer, all measured servers together (their process_cpu_seconds_total)."
        + (
            " Main thread: the busiest server's event-loop thread, % of one core (/proc; the GIL-bound part)."
            if threads
            else ""
        ),
        "",
        f"Machine: {machine_description()}. {note}".rstrip(),
        "",
        "| peers | FPS min | FPS mean | RTT p50 | p95 | p99 | drift | results/s per peer | server CPU per peer "
        + ("| server CPU | main thread " if threads else "")
        + "| dropped (inference) | dropped (output) | verdict |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        + ("---:|---:|" if threads else "")
        + "---:|---:|---|",
    ]
    for lv in levels:
        cpu = f"{lv.cpu_per_peer_pct:.0f} %" if lv.cpu_per_peer_pct is not None else "n/a"
        verdict = "meets the bar" if lv.passed else "misses: " + "; ".join(lv.misses)
        lines.append(
            f"| {lv.peers} | {lv.fps_min:.1f} | {lv.fps_mean:.1f} | {lv.rtt_p50_ms:.0f} ms | {lv.rtt_p95_ms:.0f} ms "
            f"| {lv.rtt_p99_ms:.0f} ms | {lv.drift_pct:+.0f} % | {lv.results_per_peer:.1f} | {cpu} "
            + (f"| {_pct(lv.cpu_per_peer_pct, lv.peers)} | {_pct(lv.main_thread_pct)} " if threads else "")
            + f"| {lv.dropped_inference:.0f} "
            f"| {lv.dropped_output:.0f} | {verdict} |"
        )
    held = [lv.peers for lv in levels if lv.passed]
    lines += ["", f"Holds {max(held) if held else 0} peer(s) within the bar. Run {datetime.date.today()}."]
    if args.plot:
        lines += [
            "",
            f"![peers vs round trip p95 and results/s]({os.path.relpath(args.plot, args.output.parent)})",
        ]
    data = json.dumps([asdict(lv) for lv in levels], separators=(",", ":"))
    lines += ["", f"<!-- tools.load:live:data {data} -->"]
    return "\n".join(lines)


def _pct(value: float | None, times: int = 1) -> str:
    return f"{value * times:.0f} %" if value is not None else "n/a"


def plot_live(levels: Sequence[LiveLevel], path: Path) -> None:
    """Peers vs round-trip p95 (left axis, red) and results/s per peer (right axis, blue), drawn with OpenCV."""
    w, h, m = 720, 420, 70
    img = np.full((h, w, 3), 255, np.uint8)
    xs = [lv.peers for lv in levels] or [1]
    p95 = [lv.rtt_p95_ms for lv in levels]
    res = [lv.results_per_peer for lv in levels]
    x_max, p_max, r_max = max(xs), max([*p95, 1.0]) * 1.15, max([*res, 1.0]) * 1.15

    def px(x: float, y: float, y_max: float) -> tuple[int, int]:
        return (m + round((x / x_max) * (w - 2 * m)), h - m - round((y / y_max) * (h - 2 * m)))

    black, red, blue = (0, 0, 0), (40, 40, 220), (200, 90, 20)
    cv2.rectangle(img, (m, m), (w - m, h - m), black, 1)
    for x in xs:
        cv2.putText(img, str(x), (px(x, 0, 1)[0] - 6, h - m + 20), cv2.FONT_HERSHEY_SIMPLEX, 0.45, black, 1)
    for frac in (0.0, 0.5, 1.0):
        y = px(0, frac * p_max, p_max)[1]
        cv2.putText(img, f"{frac * p_max:.0f}", (8, y + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.45, red, 1)
        cv2.putText(img, f"{frac * r_max:.1f}", (w - m + 6, y + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.45, blue, 1)
    for series, y_max, color in ((p95, p_max, red), (res, r_max, blue)):
        points = [px(x, y, y_max) for x, y in zip(xs, series, strict=False) if np.isfinite(y)]
        for a, b in itertools.pairwise(points):
            cv2.line(img, a, b, color, 2, cv2.LINE_AA)
        for p in points:
            cv2.circle(img, p, 4, color, -1, cv2.LINE_AA)
    cv2.putText(img, "peers", (w // 2 - 20, h - 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, black, 1)
    cv2.putText(img, "round trip p95 (ms)", (m, m - 30), cv2.FONT_HERSHEY_SIMPLEX, 0.55, red, 1)
    cv2.putText(img, "results/s per peer", (w - m - 170, m - 30), cv2.FONT_HERSHEY_SIMPLEX, 0.55, blue, 1)
    cv2.putText(
        img, "live load: peers vs p95 and results/s", (m, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.6, black, 1
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), img)


# --- /detect and Triton ---------------------------------------------------------------------------------------


@dataclass
class ThroughputLevel:
    concurrency: int
    requests: int
    seconds: float
    per_s: float
    p50_ms: float
    p95_ms: float
    errors: int


def _summary(concurrency: int, latencies: list[float], errors: int, seconds: float) -> ThroughputLevel:
    ms = np.array(latencies) * 1e3 if latencies else np.array([np.nan])
    return ThroughputLevel(
        concurrency, len(latencies), round(seconds, 2), len(latencies) / seconds,
        float(np.percentile(ms, 50)), float(np.percentile(ms, 95)), errors,
    )  # fmt: skip


async def detect_level(
    url: str, jpeg: bytes, concurrency: int, seconds: float, headers: dict[str, str]
) -> ThroughputLevel:
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds

    async def worker(http: aiohttp.ClientSession) -> None:
        nonlocal errors
        while time.monotonic() < deadline:
            form = aiohttp.FormData()
            form.add_field("file", jpeg, filename="photo.jpg", content_type="image/jpeg")
            t0 = time.perf_counter()
            try:
                async with http.post(f"{url.rstrip('/')}/detect", data=form, headers=headers) as resp:
                    await resp.read()
                    ok = resp.status == 200
            except (aiohttp.ClientError, OSError):
                ok = False
            if ok:
                latencies.append(time.perf_counter() - t0)
            else:
                errors += 1

    start = time.monotonic()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as http:
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
    return _summary(concurrency, latencies, errors, time.monotonic() - start)


def triton_level(
    url: str, model_dir: Path, concurrency: int, seconds: float, shared_memory: str
) -> ThroughputLevel:
    """Triton's own throughput for the model: a bare client (the triton engine, no server around it) keeping
    `concurrency` single-image requests in flight, each a real photo preprocessed as the servers do."""
    from inference.engines import create_engine
    from inference.preprocess import preprocess
    from inference.spec import ModelSpec

    spec = ModelSpec.load(model_dir)
    engine = create_engine(
        "triton", model_dir, spec, url=url, max_in_flight=concurrency, shared_memory=shared_memory
    )
    engine.load()
    tensor = preprocess([_photo()], spec)[0]
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds

    def worker() -> None:
        nonlocal errors
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            try:
                engine.infer(tensor)
                latencies.append(time.perf_counter() - t0)
            except Exception:  # an engine error: counted, the sweep goes on
                errors += 1

    try:
        start = time.monotonic()
        with ThreadPoolExecutor(concurrency) as pool:
            for f in [pool.submit(worker) for _ in range(concurrency)]:
                f.result()
        return _summary(concurrency, latencies, errors, time.monotonic() - start)
    finally:
        engine.close()


def render_throughput(kind: str, levels: Sequence[ThroughputLevel], target: str, note: str) -> str:
    what = {"detect": "POST /detect", "triton": "Triton, bare client (no server between)"}[kind]
    lines = [
        f"## Load: {what} (`python -m tools.load {kind}`)",
        "",
        f"Target: {target}; closed-loop clients, one real photo (skimage astronaut) per request.",
        "",
        f"Machine: {machine_description()}. {note}".rstrip(),
        "",
        "| concurrency | requests | images/s | p50 | p95 | errors |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for lv in levels:
        lines.append(
            f"| {lv.concurrency} | {lv.requests} | {lv.per_s:.1f} | {lv.p50_ms:.0f} ms | {lv.p95_ms:.0f} ms | {lv.errors} |"
        )
    lines += ["", f"Run {datetime.date.today()}."]
    return "\n".join(lines)


# --- report -------------------------------------------------------------------------------------------------


def machine_description() -> str:
    cpu, flag_list = cpu_identity()
    flags = " ".join(flag_list)
    load = os.getloadavg()[0]
    return f"{cpu} ({flags or 'no avx2'}), {os.cpu_count()} cores, load average {load:.1f} at the end"


def write_section(path: Path, name: str, body: str) -> None:
    """Replace this tool's section `name` in the shared page (appended when missing)."""
    write_page_section(path, f"<!-- tools.load:{name}:start -->", f"<!-- tools.load:{name}:end -->", body)


def _photo() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[:, :, ::-1])


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.load", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="kind", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    common.add_argument("--no-write", action="store_true", help="print the table only")
    common.add_argument("--note", default="", help="a sentence printed under the table (the machine's state)")
    common.add_argument("--api-key", default=os.environ.get("RTDETECT_LOAD_API_KEY"))

    p = sub.add_parser("live", parents=[common], help="ramp live peers against a media server or the front")
    p.add_argument("--url", required=True, help="the media server (or the front's /live)")
    p.add_argument("--metrics", action="append", help="a server's base URL for /metrics (repeat per replica)")
    p.add_argument("--levels", type=_ints, default=[1, 2, 4, 8])
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--fps", type=float, default=30.0)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--min-fps", type=float, default=25.0)
    p.add_argument("--max-p95-ms", type=float, default=250.0)
    p.add_argument("--min-results", type=float, default=5.0)
    p.add_argument(
        "--ice-host", action="append", help="the clients' own host candidates (loopback in a namespace)"
    )
    p.add_argument("--insecure", action="store_true", help="do not verify the front's certificate")
    p.add_argument(
        "--pid",
        type=int,
        action="append",
        help="a server process on this machine: report its main thread's CPU",
    )
    p.add_argument("--plot", type=Path, default=PLOT)
    p.add_argument("--section", default="live", help="section name in the page (several runs side by side)")
    p.add_argument("--title", default="", help="what this run measures, in the section's heading")

    p = sub.add_parser("detect", parents=[common], help="sweep POST /detect concurrency")
    p.add_argument("--url", required=True)
    p.add_argument("--concurrency", type=_ints, default=[1, 2, 4, 8])
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--section", default="detect")

    p = sub.add_parser("triton", parents=[common], help="Triton's own throughput with a bare client")
    p.add_argument("--url", required=True, help="Triton's gRPC host:port")
    p.add_argument("--model-dir", type=Path, default=None)
    p.add_argument("--concurrency", type=_ints, default=[8])
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--shared-memory", choices=["none", "system"], default="none")
    p.add_argument("--section", default="triton")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.kind == "live":
        levels = asyncio.run(live_sweep(args))
        if args.plot and levels:
            plot_live(levels, args.plot)
        body = render_live(levels, args, args.note)
    elif args.kind == "detect":
        jpeg = cv2.imencode(".jpg", _photo())[1].tobytes()
        headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
        results = []
        for c in args.concurrency:
            results.append(asyncio.run(detect_level(args.url, jpeg, c, args.seconds, headers)))
            log(f"/detect concurrency {c}: {results[-1].per_s:.1f}/s, p95 {results[-1].p95_ms:.0f} ms")
        body = render_throughput("detect", results, args.url, args.note)
    else:
        from inference.paths import default_model_dir

        results = []
        for c in args.concurrency:
            results.append(
                triton_level(
                    args.url, args.model_dir or default_model_dir(), c, args.seconds, args.shared_memory
                )
            )
            log(f"Triton concurrency {c}: {results[-1].per_s:.1f}/s, p95 {results[-1].p95_ms:.0f} ms")
        body = render_throughput("triton", results, args.url, args.note)
    print(body)
    if not args.no_write:
        write_section(args.output, args.section, body)
        log(f"wrote section tools.load:{args.section} of {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
