"""Reliability proofs against real server processes: peer churn and a soak, with figures for docs/reliability.md.

    python -m tools.reliability churn --cycles 500 --sample-every 25
    python -m tools.reliability soak --minutes 60

churn: N cycles of one real aiortc client peer (tools/synthetic.py) that connects to a real media
server process, streams until frames and a detection come back, and closes; every k cycles the server's
RSS, threads, open file descriptors and its `rtdetect_live_active_peers` gauge are sampled from outside
(/proc and /metrics), after the gauge is back to 0. Verdict: fds and threads back to the post-warm-up
baseline, RSS growth after warm-up under 5 %.

soak: 2 live peers on a media server plus a steady /detect load on a detect API process for D minutes; every
window (a minute by default): both servers' RSS, the live round trip p50/p95 and received FPS, /detect
latency p50/p95. Drift = last window against the first. Verdict: latency drift under 10 %.

Both write their table into docs/reliability.md (each replaces its own section) with the machine and date.
WebRTC stays on loopback: as root, the script re-runs itself in a loopback-only network namespace.
Scripts, not CI: `make test` runs short versions (tests/test_reliability.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import cv2
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from engine_build.bench import write_page_section
from inference.gate import cpu_identity
from inference.paths import default_model_dir
from rtc.ice import HostAddressOverride
from tools.servers import LOOPBACK, ServerProcess, free_port, server_process
from tools.synthetic import SyntheticPeer

DOC = Path("docs/reliability.md")
PEERS_GAUGE = "rtdetect_live_active_peers"
CHURN_RSS_LIMIT_PCT = 5.0
SOAK_DRIFT_LIMIT_PCT = 10.0


def log(message: str) -> None:
    print(f"[reliability] {message}", file=sys.stderr, flush=True)


# --- processes ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcStats:
    rss_mb: float
    threads: int
    fds: int


def proc_stats(pid: int) -> ProcStats:
    """A process's resident memory, OS threads and open file descriptors, read from /proc."""
    pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return ProcStats(
        rss_mb=pages * os.sysconf("SC_PAGE_SIZE") / 1e6,
        threads=len(os.listdir(f"/proc/{pid}/task")),
        fds=len(os.listdir(f"/proc/{pid}/fd")),
    )


def _server_env(extra: dict[str, str]) -> dict[str, str]:
    # As the Makefile and the image set it: glibc's per-thread malloc arenas would otherwise grow RSS under churn.
    return {"MALLOC_ARENA_MAX": os.environ.get("MALLOC_ARENA_MAX", "2"), **extra}


@contextlib.contextmanager
def media_server(model_dir: Path, logs: Path, max_peers: int = 4) -> Iterator[tuple[ServerProcess, str]]:
    """`python -m media_server` on a free loopback port, ICE on loopback; yields it and its URL."""
    port = free_port()
    env = _server_env(
        {
            "RTDETECT_MEDIA_HOST": LOOPBACK,
            "RTDETECT_MEDIA_PORT": str(port),
            "RTDETECT_MEDIA_MODEL_DIR": str(model_dir),
            "RTDETECT_MEDIA_ICE_HOST_ADDRESSES": LOOPBACK,
            "RTDETECT_MEDIA_ICE_SERVERS": "[]",
            "RTDETECT_MEDIA_MAX_PEERS": str(max_peers),
            "RTDETECT_MEDIA_GPU_SAMPLE_INTERVAL_S": "0",
        }
    )
    url = f"http://{LOOPBACK}:{port}"
    with server_process(
        [sys.executable, "-m", "media_server"],
        env=env,
        ready_url=f"{url}/readyz",
        log_path=logs / "media_server.log",
        timeout_s=120,
    ) as server:
        yield server, url


@contextlib.contextmanager
def detect_api(model_dir: Path, logs: Path) -> Iterator[tuple[ServerProcess, str]]:
    """`python -m detect_api` on a free loopback port; yields it and its URL."""
    port = free_port()
    env = _server_env(
        {
            "RTDETECT_HOST": LOOPBACK,
            "RTDETECT_PORT": str(port),
            "RTDETECT_MODEL_DIR": str(model_dir),
            "RTDETECT_GPU_SAMPLE_INTERVAL_S": "0",
        }
    )
    url = f"http://{LOOPBACK}:{port}"
    with server_process(
        [sys.executable, "-m", "detect_api"],
        env=env,
        ready_url=f"{url}/readyz",
        log_path=logs / "detect_api.log",
        timeout_s=120,
    ) as server:
        yield server, url


async def gauge(http: aiohttp.ClientSession, url: str, name: str) -> float:
    """One unlabelled sample from a server's /metrics."""
    async with http.get(f"{url}/metrics") as resp:
        resp.raise_for_status()
        text = await resp.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and not sample.labels:
                return float(sample.value)
    raise LookupError(f"{name} not in {url}/metrics")


async def wait_peers(http: aiohttp.ClientSession, url: str, count: int, limit_s: float = 15.0) -> float:
    """Wait until the peers gauge reads `count` (a closed peer is reclaimed asynchronously)."""
    deadline = time.monotonic() + limit_s
    while (value := await gauge(http, url, PEERS_GAUGE)) != count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{PEERS_GAUGE} is {value:g}, not {count}, after {limit_s:g} s")
        await asyncio.sleep(0.05)  # polling another process's gauge until a deadline
    return value


def default_photo() -> np.ndarray:
    """A real photo of a person (BGR), as the tests use."""
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[:, :, ::-1])


# --- churn ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChurnSample:
    cycle: int
    elapsed_s: float
    rss_mb: float
    threads: int
    fds: int
    peers: float


@dataclass
class ChurnResult:
    cycles: int
    warmup: int
    samples: list[ChurnSample]
    seconds: float
    date: str
    machine: str
    load_avg: float

    @property
    def baseline(self) -> ChurnSample:
        return next(s for s in self.samples if s.cycle >= self.warmup)

    @property
    def final(self) -> ChurnSample:
        return self.samples[-1]

    @property
    def rss_growth_pct(self) -> float:
        return (self.final.rss_mb - self.baseline.rss_mb) / self.baseline.rss_mb * 100.0

    @property
    def midpoint(self) -> ChurnSample:
        """The last sample in the first half of the run."""
        return [s for s in self.samples if s.cycle <= self.cycles // 2][-1]

    def verdicts(self) -> list[str]:
        b, m, f = self.baseline, self.midpoint, self.final
        # Threads: the server's pools (asyncio's default executor, frame and inference workers) start workers
        # lazily up to a fixed bound, so one may appear late when the machine is busy; a leak grows with the
        # cycles. So: no thread more in the second half than the first half reached.
        first_half_threads = max(s.threads for s in self.samples if s.cycle <= m.cycle)
        second_half_mb = f.rss_mb - m.rss_mb
        return [
            _verdict(
                f.fds <= b.fds, f"fds after cycle {f.cycle}: {f.fds} (baseline {b.fds} after cycle {b.cycle})"
            ),
            _verdict(
                f.threads <= first_half_threads,
                f"threads after cycle {f.cycle}: {f.threads} (baseline {b.threads} after cycle {b.cycle}, at most "
                f"{first_half_threads} up to cycle {m.cycle}: pool workers started on demand)",
            ),
            _verdict(f.peers == 0, f"peers gauge after the last close: {f.peers:g}"),
            _verdict(
                self.rss_growth_pct < CHURN_RSS_LIMIT_PCT,
                f"RSS after warm-up: {b.rss_mb:.1f} -> {f.rss_mb:.1f} MB ({self.rss_growth_pct:+.1f} %, "
                f"limit {CHURN_RSS_LIMIT_PCT:g} %)",
            ),
            f"RSS over the second half (cycles {m.cycle}-{f.cycle}): {second_half_mb:+.1f} MB "
            f"({second_half_mb / max(1, f.cycle - m.cycle) * 100:+.2f} MB per 100 cycles)",
        ]


def _verdict(ok: bool, text: str) -> str:
    return f"{'PASS' if ok else 'FAIL'}: {text}"


async def churn_cycle(url: str, http: aiohttp.ClientSession, photo: np.ndarray, limit_s: float = 30) -> None:
    """One client peer: connect, frames and a detection back, close, and the server has let it go."""
    peer = SyntheticPeer(url, photo)
    try:
        await peer.connect(http)
        await peer.wait_until(
            lambda: len(peer.echoes) >= 5 and bool(peer.detections), limit_s, "frames and a result"
        )
    finally:
        await peer.close()
    await wait_peers(http, url, 0)


async def run_churn(
    url: str,
    pid: int,
    cycles: int,
    sample_every: int,
    warmup: int,
    photo: np.ndarray,
    api_key: str | None = None,
) -> ChurnResult:
    start = time.monotonic()
    samples: list[ChurnSample] = []
    loads: list[float] = []
    async with aiohttp.ClientSession(headers=_auth(api_key)) as http:

        async def sample(cycle: int) -> None:
            stats = proc_stats(pid)
            peers = await gauge(http, url, PEERS_GAUGE)
            samples.append(
                ChurnSample(cycle, time.monotonic() - start, stats.rss_mb, stats.threads, stats.fds, peers)
            )
            loads.append(os.getloadavg()[0])
            log(
                f"cycle {cycle}: RSS {stats.rss_mb:.1f} MB, threads {stats.threads}, fds {stats.fds}, peers {peers:g}"
            )

        await sample(0)
        for cycle in range(1, cycles + 1):
            await churn_cycle(url, http, photo)
            if cycle % sample_every == 0 or cycle in (warmup, cycles):
                await sample(cycle)
    return ChurnResult(
        cycles=cycles,
        warmup=warmup,
        samples=samples,
        seconds=time.monotonic() - start,
        date=datetime.date.today().isoformat(),
        machine=machine_description(),
        load_avg=float(np.mean(loads)),
    )


def render_churn(result: ChurnResult) -> str:
    lines = [
        f"{result.cycles} cycles in {result.seconds / 60:.1f} min on {result.date}; warm-up {result.warmup} "
        f"cycles; mean load average {result.load_avg:.1f}.",
        f"Machine: {result.machine}.",
        "",
        "| cycle | elapsed (s) | RSS (MB) | threads | fds | peers gauge |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {s.cycle} | {s.elapsed_s:.0f} | {s.rss_mb:.1f} | {s.threads} | {s.fds} | {s.peers:g} |"
        for s in result.samples
    ]
    lines += ["", *(f"- {v}" for v in result.verdicts())]
    return "\n".join(lines)


# --- soak -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SoakWindow:
    minute: float  # end of the window, minutes from the start
    media_rss_mb: float
    api_rss_mb: float
    media_threads: int
    media_fds: int
    live_fps: float  # frames back per second, per peer (mean)
    rtt_p50_ms: float
    rtt_p95_ms: float
    detect_rps: float
    detect_p50_ms: float
    detect_p95_ms: float
    detect_errors: int
    load_avg: float  # the machine's 1-minute load average at the window's end (shared machine)


@dataclass
class SoakResult:
    minutes: float
    window_s: float
    peers: int
    fps: float
    detect_rps: float
    windows: list[SoakWindow]
    date: str
    machine: str
    load_avg: float

    @property
    def edge(self) -> int:
        """Windows at each end that drift compares: a tenth of the run (one window in a short run), so one
        window slowed by something else on a shared machine does not decide the verdict alone."""
        return max(1, len(self.windows) // 10)

    def drift(self, metric: str) -> tuple[float, float, float]:
        """(median of the first windows, median of the last windows, change in %) of a per-window metric."""
        values = [getattr(w, metric) for w in self.windows]
        first, last = float(np.median(values[: self.edge])), float(np.median(values[-self.edge :]))
        return first, last, (last - first) / first * 100.0 if first > 0 else float("nan")

    def verdicts(self) -> list[str]:
        first, last = self.windows[0], self.windows[-1]
        span = f"median of the first and last {self.edge} window(s)"
        lines = []
        for metric, what in (("rtt_p50_ms", "live round trip p50"), ("detect_p50_ms", "/detect p50")):
            a, b, pct = self.drift(metric)
            lines.append(
                _verdict(
                    pct < SOAK_DRIFT_LIMIT_PCT,  # growth: latency that falls is no drift to worry about
                    f"{what} drift ({span}): {a:.0f} -> {b:.0f} ms ({pct:+.1f} %, limit {SOAK_DRIFT_LIMIT_PCT:g} %)",
                )
            )
        return [
            *lines,
            _verdict(
                sum(w.detect_errors for w in self.windows) == 0,
                f"/detect errors: {sum(w.detect_errors for w in self.windows)}",
            ),
            f"RSS media server {first.media_rss_mb:.0f} -> {last.media_rss_mb:.0f} MB, detect API "
            f"{first.api_rss_mb:.0f} -> {last.api_rss_mb:.0f} MB",
        ]


class DetectLoad:
    """POST /detect at a steady rate (open loop: a slow answer does not slow the schedule), bounded in flight."""

    def __init__(self, url: str, jpeg: bytes, rps: float, max_in_flight: int = 8) -> None:
        self.url, self.jpeg, self.rps, self.max_in_flight = url, jpeg, rps, max_in_flight
        self.done: list[tuple[float, float]] = []  # (finished at, latency in s)
        self.errors: list[float] = []  # finished at, for non-200 answers and failures (skips included)
        self._in_flight: set[asyncio.Task[None]] = set()

    async def _one(self, http: aiohttp.ClientSession) -> None:
        started = time.monotonic()
        form = aiohttp.FormData()
        form.add_field("file", self.jpeg, filename="photo.jpg", content_type="image/jpeg")
        try:
            async with http.post(f"{self.url}/detect", data=form) as resp:
                await resp.read()
                ok = resp.status == 200
        except aiohttp.ClientError:
            ok = False
        now = time.monotonic()
        if ok:
            self.done.append((now, now - started))
        else:
            self.errors.append(now)

    async def run(self, http: aiohttp.ClientSession) -> None:
        start = time.monotonic()
        n = 0
        try:
            while True:
                n += 1
                await asyncio.sleep(max(0.0, start + n / self.rps - time.monotonic()))
                if len(self._in_flight) >= self.max_in_flight:
                    self.errors.append(time.monotonic())  # the server fell this far behind: count it
                    continue
                task = asyncio.create_task(self._one(http))
                self._in_flight.add(task)
                task.add_done_callback(self._in_flight.discard)
        finally:
            for task in list(self._in_flight):
                task.cancel()
            await asyncio.gather(*self._in_flight, return_exceptions=True)


def _percentiles(values: Sequence[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    arr = np.asarray(values, dtype=np.float64) * 1e3
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 95))


async def run_soak(
    media_url: str,
    media_pid: int,
    api_url: str,
    api_pid: int,
    *,
    seconds: float,
    window_s: float = 60.0,
    peers: int = 2,
    fps: float = 30.0,
    detect_rps: float = 2.0,
    photo: np.ndarray,
    api_key: str | None = None,
    warmup_s: float = 10.0,
) -> SoakResult:
    ok, encoded = cv2.imencode(".jpg", photo, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    load = DetectLoad(api_url, encoded.tobytes(), detect_rps)
    clients = [SyntheticPeer(media_url, photo, fps=fps) for _ in range(peers)]
    windows: list[SoakWindow] = []
    loads: list[float] = []
    async with aiohttp.ClientSession(headers=_auth(api_key)) as http:
        load_task: asyncio.Task[None] | None = None
        try:
            await asyncio.gather(*(c.connect(http) for c in clients))
            await asyncio.gather(*(c.wait_for_frames(1, limit_s=30) for c in clients))
            load_task = asyncio.create_task(load.run(http), name="detect-load")
            await asyncio.sleep(warmup_s)  # encoders ramp up their bitrate; the first requests warm the API
            start = window_start = time.monotonic()
            for c in clients:
                c.echoes = [e for e in c.echoes if e.received >= window_start]
            load.done.clear()
            load.errors.clear()
            while window_start < start + seconds - 1e-6:
                window_end = min(window_start + window_s, start + seconds)
                await asyncio.sleep(max(0.0, window_end - time.monotonic()))
                if any(c.pc.connectionState in ("failed", "closed") for c in clients):
                    raise RuntimeError("a live peer's connection ended during the soak")
                rtts = [
                    e.rtt
                    for c in clients
                    for e in c.echoes
                    if window_start <= e.received < window_end and e.rtt is not None
                ]
                frames = sum(window_start <= e.received < window_end for c in clients for e in c.echoes)
                detect = [lat for t, lat in load.done if window_start <= t < window_end]
                errors = sum(window_start <= t < window_end for t in load.errors)
                media, api = proc_stats(media_pid), proc_stats(api_pid)
                span = window_end - window_start
                rtt50, rtt95 = _percentiles(rtts)
                det50, det95 = _percentiles(detect)
                window = SoakWindow(
                    minute=(window_end - start) / 60.0,
                    media_rss_mb=media.rss_mb,
                    api_rss_mb=api.rss_mb,
                    media_threads=media.threads,
                    media_fds=media.fds,
                    live_fps=frames / span / peers,
                    rtt_p50_ms=rtt50,
                    rtt_p95_ms=rtt95,
                    detect_rps=len(detect) / span,
                    detect_p50_ms=det50,
                    detect_p95_ms=det95,
                    detect_errors=errors,
                    load_avg=os.getloadavg()[0],
                )
                windows.append(window)
                loads.append(os.getloadavg()[0])
                log(
                    f"{window.minute:.1f} min: RTT p50/p95 {rtt50:.0f}/{rtt95:.0f} ms at {window.live_fps:.1f} FPS, "
                    f"/detect p50/p95 {det50:.0f}/{det95:.0f} ms ({errors} errors), RSS media "
                    f"{media.rss_mb:.0f} MB, API {api.rss_mb:.0f} MB"
                )
                # Keep the client light over an hour: only what later windows need.
                for c in clients:
                    c.echoes = [e for e in c.echoes if e.received >= window_end]
                    c.messages.clear()
                load.done = [d for d in load.done if d[0] >= window_end]
                window_start = window_end
        finally:
            if load_task is not None:
                load_task.cancel()
                await asyncio.gather(load_task, return_exceptions=True)
            await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
    return SoakResult(
        minutes=seconds / 60.0,
        window_s=window_s,
        peers=peers,
        fps=fps,
        detect_rps=detect_rps,
        windows=windows,
        date=datetime.date.today().isoformat(),
        machine=machine_description(),
        load_avg=float(np.mean(loads)) if loads else 0.0,
    )


def render_soak(result: SoakResult) -> str:
    lines = [
        f"{result.minutes:g} min on {result.date}: {result.peers} live peers at {result.fps:g} fps (640x480, "
        f"real model) and /detect at {result.detect_rps:g} requests/s (a 512x512 JPEG); windows of "
        f"{result.window_s:g} s; mean load average {result.load_avg:.1f}.",
        f"Machine: {result.machine}.",
        "",
        "| minute | RSS media (MB) | RSS API (MB) | threads | fds | FPS/peer | RTT p50 (ms) | RTT p95 (ms) "
        "| /detect/s | /detect p50 (ms) | /detect p95 (ms) | errors | load |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {w.minute:.1f} | {w.media_rss_mb:.0f} | {w.api_rss_mb:.0f} | {w.media_threads} | {w.media_fds} "
        f"| {w.live_fps:.1f} | {w.rtt_p50_ms:.0f} | {w.rtt_p95_ms:.0f} | {w.detect_rps:.1f} "
        f"| {w.detect_p50_ms:.0f} | {w.detect_p95_ms:.0f} | {w.detect_errors} | {w.load_avg:.1f} |"
        for w in result.windows
    ]
    lines += ["", *(f"- {v}" for v in result.verdicts())]
    return "\n".join(lines)


# --- report ------------------------------------------------------------------------------------------------------


def machine_description() -> str:
    cpu, flag_list = cpu_identity()
    flags = " ".join(flag_list)
    return f"{cpu} ({flags or 'no avx2'}), {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def write_section(path: Path, name: str, body: str) -> None:
    """Replace the section between this tool's markers for `name` (appended when missing)."""
    begin, end = f"<!-- tools.reliability:{name}:begin -->", f"<!-- tools.reliability:{name}:end -->"
    write_page_section(path, begin, end, body, "# Reliability\n")


def _auth(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


# --- main ----------------------------------------------------------------------------------------------------------


def _isolated() -> bool:
    return sorted(os.listdir("/sys/class/net")) == ["lo"]


def _reexec_isolated(argv: Sequence[str]) -> int | None:
    """Run this command again in a loopback-only network namespace; None when that is not possible."""
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None:
        return None
    inner = shlex.join([sys.executable, "-m", "tools.reliability", *argv, "--no-isolate"])
    return subprocess.call(["unshare", "-n", "sh", "-c", f"ip link set lo up && exec {inner}"])


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.reliability", description=__doc__.split("\n")[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model-dir", type=Path, default=default_model_dir())
    common.add_argument("--output", type=Path, default=DOC)
    common.add_argument("--no-write", action="store_true", help="print the table only")
    common.add_argument("--section", help="the section of --output to replace (default: the command)")
    common.add_argument("--no-isolate", action="store_true", help="do not re-run in a network namespace")
    common.add_argument(
        "--api-key", default=os.environ.get("RTDETECT_TOOLS_API_KEY"), help="Bearer key, if auth is on"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    churn = sub.add_parser("churn", parents=[common], help="peer connect/stream/close cycles")
    churn.add_argument("--cycles", type=int, default=500)
    churn.add_argument("--sample-every", type=int, default=25)
    churn.add_argument("--warmup", type=int, default=50, help="cycles before the baseline sample")
    soak = sub.add_parser("soak", parents=[common], help="live peers plus /detect load for a while")
    soak.add_argument("--minutes", type=float, default=60.0)
    soak.add_argument("--window-s", type=float, default=60.0)
    soak.add_argument("--peers", type=int, default=2)
    soak.add_argument("--fps", type=float, default=30.0)
    soak.add_argument("--detect-rps", type=float, default=2.0)
    return parser.parse_args(argv)


async def amain(args: argparse.Namespace) -> str:
    override = HostAddressOverride([LOOPBACK])  # the client peers' candidates: loopback only
    override.install()
    logs = Path(tempfile.mkdtemp(prefix="rtdetect-reliability-"))
    log(f"server logs in {logs}")
    photo = default_photo()
    try:
        if args.command == "churn":
            with media_server(args.model_dir, logs) as (server, url):
                churn = await run_churn(
                    url, server.proc.pid, args.cycles, args.sample_every, args.warmup, photo, args.api_key
                )
            return render_churn(churn)
        with (
            media_server(args.model_dir, logs, max_peers=max(4, args.peers)) as (media, media_url),
            detect_api(args.model_dir, logs) as (api, api_url),
        ):
            soak = await run_soak(
                media_url,
                media.proc.pid,
                api_url,
                api.proc.pid,
                seconds=args.minutes * 60.0,
                window_s=args.window_s,
                peers=args.peers,
                fps=args.fps,
                detect_rps=args.detect_rps,
                photo=photo,
                api_key=args.api_key,
            )
        return render_soak(soak)
    finally:
        override.uninstall()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if not args.no_isolate and not _isolated():
        code = _reexec_isolated(argv)
        if code is not None:
            return code
        log("cannot create a loopback-only network namespace (needs root, unshare and ip): running as is")
    table = asyncio.run(amain(args))
    print(table)
    if not args.no_write:
        section = args.section or args.command
        write_section(args.output, section, table)
        log(f"wrote the {section} section of {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
