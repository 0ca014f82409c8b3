"""The live path against aiortc's own floor, and what a viewer sees: one run, side by side.

    python -m tools.live_bench                      # 5 minutes per round trip run, VP8 and H264
    python -m tools.live_bench --rtt-seconds 60 --error-seconds 20 --ids-seconds 30   # a quick look

1. Round trip (1 peer, 640x480 at 30 fps, per codec): the media server (subprocess, real model) against a
   bare aiortc echo server (`tools/echo_server.py`, subprocess), the same synthetic client (stock aiortc)
   timing every numbered frame; drift is the last tenth of the run against the first.
2. Displayed-box centre error: a real photo of a person moving across the frame at about 380 px/s mean
   (`tools/scenes.py`: a smooth back-and-forth, and a constant-speed bounce), through an in-process media
   server, with box prediction (constant acceleration, the default; constant velocity, the earlier model)
   and without, the engine at its own speed ("natural") and slowed so that every inference takes N ms in
   all (`--error-engine-ms`, tools/slow_engine.py padding each call: results older when drawn). For every outgoing frame the box drawn on it (the pipeline's
   `on_drawn` seam) is compared with where the person is in that very frame (ground truth from the frame
   number stamped in it).
3. Id switches: two people crossing (`tools/scenes.py`), for `--ids-seconds`: each result's ids on the true
   people, a switch whenever a person's id changes.
4. Thread round trips per inferred frame, counted on the pipeline's executor and the batcher during 2.

Results print as tables and replace this tool's section of docs/benchmarks.md. WebRTC stays on loopback: as
root the script re-runs itself in a loopback-only network namespace.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import math
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from inference.engines import Engine
from inference.gate import PRECISION_FLAGS, cpu_identity
from inference.paths import default_model_dir
from inference.tracking import iou_matrix
from inference.types import Box
from media_server.app import STATE, create_app
from media_server.frames import i420_array
from media_server.http_limits import start_http
from media_server.settings import Settings
from media_server.track import InFrame, LivePipeline, LiveResult, frame_time
from rtc.ice import HostAddressOverride
from tools.bench import machine_description, media_server, peer_result
from tools.scenes import Scene, SceneTrack, moving_person, swaying_person, two_crossing
from tools.servers import LOOPBACK, free_port, server_process
from tools.slow_engine import SlowEngine
from tools.synthetic import SyntheticPeer, read_number

BEGIN = "<!-- tools.live_bench:begin -->"
END = "<!-- tools.live_bench:end -->"
FPS = 30.0
WARMUP_S = 3.0
SPEED = 380.0


def log(message: str) -> None:
    print(f"[live bench] {message}", file=sys.stderr, flush=True)


# --- 1. round trip ---------------------------------------------------------------------------------------


@dataclass
class RttRow:
    codec: str
    server: str
    seconds: float
    received_fps: float
    p50: float
    p95: float
    p99: float
    first: float
    last: float
    drift_pct: float
    load: float


@contextlib.contextmanager
def echo_server(logs: Path) -> Iterator[str]:
    port = free_port()
    url = f"http://{LOOPBACK}:{port}"
    argv = [sys.executable, "-m", "tools.echo_server", "--port", str(port)]
    with server_process(argv, ready_url=f"{url}/readyz", log_path=logs / "echo_server.log", timeout_s=30):
        yield url


async def _measure_rtt(url: str, codec: str, seconds: float, server: str) -> RttRow:
    from skimage import data

    photo = np.ascontiguousarray(data.astronaut()[:, :, ::-1])
    client = SyntheticPeer(url, photo, fps=FPS, codec=codec)
    loads: list[float] = []
    try:
        async with aiohttp.ClientSession() as http:
            await client.connect(http)
        await client.wait_for_frames(1, limit_s=30)
        await asyncio.sleep(WARMUP_S)
        start = time.monotonic()
        while (now := time.monotonic()) < start + seconds:
            await asyncio.sleep(min(5.0, start + seconds - now))
            loads.append(os.getloadavg()[0])
        end = time.monotonic()
    finally:
        await client.close()
    r = peer_result(client, start, end)
    log(f"{server} {codec}: RTT p50 {r.rtt_p50_ms:.1f} ms, drift {r.drift_pct:+.1f} %")
    return RttRow(
        codec,
        server,
        round(end - start),
        r.received_fps,
        r.rtt_p50_ms,
        r.rtt_p95_ms,
        r.rtt_p99_ms,
        r.first_tenth_ms,
        r.last_tenth_ms,
        r.drift_pct,
        float(np.mean(loads)) if loads else 0.0,
    )


async def round_trips(codecs: Sequence[str], seconds: float, model_dir: Path, logs: Path) -> list[RttRow]:
    rows: list[RttRow] = []
    for codec in codecs:
        with echo_server(logs) as url:
            rows.append(await _measure_rtt(url, codec, seconds, "aiortc echo"))
        with media_server("detect", 1, 0.0, model_dir, logs) as (_, url):
            rows.append(await _measure_rtt(url, codec, seconds, "rtdetect"))
    return rows


# --- 2-4. in-process: what is drawn, ids, thread hops ----------------------------------------------------


def padded(engine_ms: float) -> Callable[[Engine], Engine] | None:
    """An engine wrapper making every inference take `engine_ms` in all (the real call, then a sleep for
    the rest: tools/slow_engine.py); None (0): the engine at its own speed."""
    if engine_ms <= 0:
        return None
    return lambda engine: SlowEngine(engine, engine_ms / 1e3, pad=True)


def engine_label(engine_ms: float) -> str:
    return "natural" if engine_ms <= 0 else f"{engine_ms:g} ms"


@contextlib.asynccontextmanager
async def in_process(
    settings: Settings, scene: Scene, engine_ms: float = 0.0
) -> AsyncIterator[tuple[LivePipeline, SceneTrack, Any]]:
    """The media server in this process, one synthetic peer streaming `scene`; its pipeline and track;
    `engine_ms` > 0: every inference padded to take that long (`padded`)."""
    app = create_app(settings, wrap_engine=padded(engine_ms))
    http = await start_http(app, settings, host=LOOPBACK, port=0)
    url = f"http://{LOOPBACK}:{http.port}"
    client = SyntheticPeer(url, np.zeros((scene.height, scene.width, 3), np.uint8), fps=FPS)
    track = SceneTrack(scene, fps=FPS)
    client.track = track
    try:
        async with aiohttp.ClientSession() as session:
            await client.connect(session)
        await client.wait_for_frames(1, limit_s=60)
        (peer,) = list(app[STATE].peers)
        assert isinstance(peer.media, LivePipeline)
        yield peer.media, track, app[STATE]
    finally:
        await client.close()
        await http.close()


def _settings(model_dir: Path, **overrides: Any) -> Settings:
    return Settings(
        host=LOOPBACK,
        port=0,
        ice_host_addresses=[LOOPBACK],
        ice_servers=[],
        model_dir=model_dir,
        gpu_sample_interval_s=0,
        **overrides,
    )


def _number(item: InFrame) -> int | None:
    # Through the plane buffers: never reformat a frame an encoder thread may be reading.
    return read_number(i420_array(item.frame)[: item.frame.height])


def _centre(box: Box) -> tuple[float, float]:
    return ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)


PREDICTIONS = {"acceleration": "constant acceleration", "velocity": "constant velocity", "off": "off"}


@dataclass
class ErrorRow:
    motion: str
    prediction: str  # a PREDICTIONS key
    engine_ms: float  # each inference padded to this long in all; 0: the engine's own speed
    age_p50: float  # ms from the result's frame to the frame it is drawn on (pts)
    age_p90: float
    frames: int
    with_box_pct: float
    p50: float
    p90: float
    p99: float
    hops_own: float  # pipeline executor calls per inferred frame
    hops_batcher: float
    results_per_s: float


MOTIONS = ("probe", "smooth", "bounce")


def _motion(name: str) -> Scene:
    if name == "probe":
        return swaying_person()
    return moving_person(SPEED, smooth=name == "smooth")


async def centre_error(
    motion: str, prediction: str, seconds: float, model_dir: Path, engine_ms: float = 0.0
) -> ErrorRow:
    errors: list[float] = []
    ages: list[float] = []
    frames = with_box = 0
    recording = False
    settings = _settings(
        model_dir, predict_boxes=prediction != "off", predict_acceleration=prediction == "acceleration"
    )
    async with in_process(settings, _motion(motion), engine_ms) as (pipeline, track, state):
        own_calls = batcher_calls = 0
        submit = state.executor.submit

        def counting_submit(fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
            nonlocal own_calls
            if recording:
                own_calls += 1
            return submit(fn, *args, **kwargs)

        state.executor.submit = counting_submit
        infer = state.detector.infer_prepared

        async def counting_infer(prepared: Any) -> Any:
            nonlocal batcher_calls
            if recording:
                batcher_calls += 1
            return await infer(prepared)

        state.detector.infer_prepared = counting_infer

        def on_drawn(item: InFrame, boxes: Sequence[Box], live: LiveResult | None) -> None:
            nonlocal frames, with_box
            if not recording:
                return
            number = _number(item)
            if number is None:
                return
            truth = track.truth(number)[0]
            frames += 1
            if not boxes:
                return
            ious = iou_matrix([truth], list(boxes))[0]
            best = int(np.argmax(ious))
            if ious[best] < 0.3:
                return
            with_box += 1
            if live is not None and live.tracks:
                ages.append(1e3 * (frame_time(item) - live.tracks[0].time))
            (gx, gy), (bx, by) = _centre(truth), _centre(boxes[best])
            errors.append(math.hypot(bx - gx, by - gy))

        pipeline.on_drawn = on_drawn
        await asyncio.sleep(WARMUP_S)
        inferred0 = pipeline.frames_inferred
        recording = True
        started = time.monotonic()
        await asyncio.sleep(seconds)
        recording = False
        elapsed = time.monotonic() - started
        inferred = max(1, pipeline.frames_inferred - inferred0)
    e = np.array(errors) if errors else np.array([float("nan")])
    a = np.array(ages) if ages else np.array([float("nan")])
    row = ErrorRow(
        motion,
        prediction,
        engine_ms,
        float(np.percentile(a, 50)),
        float(np.percentile(a, 90)),
        frames,
        100.0 * with_box / max(frames, 1),
        float(np.percentile(e, 50)),
        float(np.percentile(e, 90)),
        float(np.percentile(e, 99)),
        own_calls / inferred,
        batcher_calls / inferred,
        inferred / elapsed,
    )
    log(
        f"{motion}, engine {engine_label(engine_ms)}, prediction {PREDICTIONS[prediction]}: centre error "
        f"p50 {row.p50:.1f} p90 {row.p90:.1f} px ({row.results_per_s:.1f} results/s)"
    )
    return row


@dataclass
class IdRow:
    seconds: float
    results: int
    both_matched: int
    switches: int
    ids_seen: list[int] = field(default_factory=list)


async def id_switches(seconds: float, model_dir: Path) -> IdRow:
    owner: list[int | None] = [None, None]
    numbers: dict[int, int] = {}  # seq -> frame number
    counts = {"results": 0, "both": 0, "switches": 0}
    ids: set[int] = set()
    state: dict[str, Any] = {"seq": None, "recording": False}

    async with in_process(_settings(model_dir), two_crossing()) as (pipeline, track, _):

        def on_drawn(item: InFrame, boxes: Sequence[Box], live: LiveResult | None) -> None:
            number = _number(item)
            if number is not None:
                numbers[item.seq] = number
            if not state["recording"] or live is None or live.seq == state["seq"]:
                return
            state["seq"] = live.seq
            at = numbers.get(live.seq)
            if at is None:
                return
            truth = track.truth(at)
            people = [d for d in live.result.detections if d.label == "person" and d.track_id is not None]
            counts["results"] += 1
            if not people:
                return
            ious = iou_matrix(truth, [d.box for d in people])
            seen = 0
            for k in range(2):
                if ious[k].max() < 0.5:
                    continue
                seen += 1
                track_id = people[int(np.argmax(ious[k]))].track_id
                assert track_id is not None
                ids.add(track_id)
                if owner[k] is not None and owner[k] != track_id:
                    counts["switches"] += 1
                owner[k] = track_id
            counts["both"] += seen == 2
            for old in [s for s in numbers if s < item.seq - 300]:
                del numbers[old]

        pipeline.on_drawn = on_drawn
        await asyncio.sleep(WARMUP_S)
        state["recording"] = True
        await asyncio.sleep(seconds)
        state["recording"] = False
    row = IdRow(seconds, counts["results"], counts["both"], counts["switches"], sorted(ids))
    log(f"two people crossing: {row.switches} id switches in {seconds:.0f} s ({row.results} results)")
    return row


# --- report ----------------------------------------------------------------------------------------------


def render(
    rtt: Sequence[RttRow], errors: Sequence[ErrorRow], ids: IdRow | None, machine: str, note: str
) -> str:
    out = [BEGIN, "", "## Live path vs aiortc's floor, box error, ids (`python -m tools.live_bench`)", ""]
    out += [f"{machine}. {note}", ""]
    if rtt:
        out += [
            "Round trip, 1 peer, 640x480 at 30 fps, the same stock-aiortc synthetic client; rtdetect runs the "
            "real model on every frame it can (backpressure `latest`) and draws the boxes, the echo server only "
            "echoes. The difference is the server's receiver: aiortc's jitter buffer holds each frame until the "
            "next one starts (one frame interval, 33 ms); rtdetect's releases it on its RTP marker bit "
            "(rtc/jitter.py). The client's own receiver is stock aiortc in both runs.",
            "",
            "| codec | server | s | received FPS | RTT p50 | p95 | p99 | first tenth | last tenth | drift | load avg |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rtt:
            out.append(
                f"| {r.codec} | {r.server} | {r.seconds:.0f} | {r.received_fps:.1f} | {r.p50:.1f} ms | {r.p95:.1f} ms | "
                f"{r.p99:.1f} ms | {r.first:.1f} ms | {r.last:.1f} ms | {r.drift_pct:+.1f} % | {r.load:.1f} |"
            )
        for codec in dict.fromkeys(r.codec for r in rtt):
            pair = {r.server: r for r in rtt if r.codec == codec}
            if len(pair) == 2:
                gap = pair["aiortc echo"].p50 - pair["rtdetect"].p50
                out.append(f"\n{codec}: rtdetect's p50 is {gap:.1f} ms below the bare aiortc echo's.")
        out.append("")
    if errors:
        out += [
            "Displayed-box centre error, a real photo of a person moving across 640x480 (probe: swaying about "
            "the centre along a sine of period 2 s and amplitude 120 px, peak 377 px/s and 1184 px/s^2, the "
            f"issue's probe; smooth: a sine back and forth across the frame at {SPEED:.0f} px/s mean, period "
            "2.4 s, peak 597 px/s, peak acceleration 1540 px/s^2; bounce: constant speed, reversing at the "
            "edges), on every outgoing frame with a box on the "
            "person. Engine: natural, the model at its own speed; N ms, every inference padded to take N ms in "
            "all (the real call, then a sleep for the rest: tools/slow_engine.py), so results are older when "
            "drawn; result age: from the pts of the result's frame to the pts of the frame its box is drawn on "
            "(the prediction's horizon). Prediction: each track's box moved to the drawn frame's pts with its "
            "velocity and acceleration (the default: white-jerk filter, restarted on a sudden turn), a constant "
            "velocity (the model before, `RTDETECT_MEDIA_PREDICT_ACCELERATION=false`), or not at all:",
            "",
            "| motion | engine | prediction | frames | with a box | result age p50 | p90 "
            "| centre error p50 | p90 | p99 | results/s |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for e in errors:
            out.append(
                f"| {e.motion} | {engine_label(e.engine_ms)} | {PREDICTIONS[e.prediction]} | {e.frames} | "
                f"{e.with_box_pct:.0f} % | {e.age_p50:.0f} ms | {e.age_p90:.0f} ms | "
                f"{e.p50:.1f} px | {e.p90:.1f} px | {e.p99:.1f} px | {e.results_per_s:.1f} |"
            )
        own = np.mean([e.hops_own for e in errors])
        batcher = np.mean([e.hops_batcher for e in errors])
        out += [
            "",
            f"Thread round trips per inferred frame (counted during these runs): {own:.2f} on the pipeline's "
            f"executor + {batcher:.2f} through the batcher = {own + batcher:.2f}; none on the event loop's "
            "default executor (tests/test_live_tracking.py counts that).",
            "",
        ]
    if ids is not None:
        out += [
            f"Two people crossing (`tools.scenes.two_crossing`, 150 px/s each), {ids.seconds:.0f} s: "
            f"{ids.switches} id switches over {ids.results} results ({ids.both_matched} with both people "
            f"matched); ids seen on them: {ids.ids_seen}.",
            "",
        ]
    out.append(END)
    return "\n".join(out)


def write_section(path: Path, section: str) -> None:
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.live_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--rtt-seconds", type=float, default=300.0, help="per server and codec; 0 skips")
    parser.add_argument("--codecs", nargs="+", default=["VP8", "H264"], choices=["VP8", "H264"])
    parser.add_argument("--error-seconds", type=float, default=30.0, help="per motion and setting; 0 skips")
    parser.add_argument(
        "--error-engine-ms",
        type=float,
        nargs="+",
        default=[0.0, 40.0, 80.0],
        help="box error runs with every inference padded to take this long in all (ms; 0: natural speed)",
    )
    parser.add_argument("--error-motions", nargs="+", default=list(MOTIONS), choices=list(MOTIONS))
    parser.add_argument("--ids-seconds", type=float, default=60.0, help="0 skips")
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument("--output", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--note", default="", help="a line for the report (e.g. what else loads the machine)")
    parser.add_argument("--logs", type=Path, default=Path("/tmp/rtdetect-live-bench"))
    return parser.parse_args(argv)


async def amain(args: argparse.Namespace) -> str:
    model_dir = args.model_dir or default_model_dir()
    client_candidates = HostAddressOverride([LOOPBACK])
    client_candidates.install()
    try:
        return await _run_all(args, model_dir)
    finally:
        client_candidates.uninstall()


async def _run_all(args: argparse.Namespace, model_dir: Path) -> str:
    rtt = (
        await round_trips(args.codecs, args.rtt_seconds, model_dir, args.logs) if args.rtt_seconds > 0 else []
    )
    # After the round trips: an in-process media server installs the marker-bit buffer process-wide, which
    # would change the synthetic client's receiver too.
    errors = []
    if args.error_seconds > 0:
        for delay in args.error_engine_ms:
            for motion in args.error_motions:
                # Without prediction only at the engine's own speed: the boxes simply lag further when slowed.
                for prediction in PREDICTIONS if delay == 0 else ("acceleration", "velocity"):
                    errors.append(
                        await centre_error(motion, prediction, args.error_seconds, model_dir, delay)
                    )
    ids = await id_switches(args.ids_seconds, model_dir) if args.ids_seconds > 0 else None
    load = (
        f"Load average over the run: {os.getloadavg()[0]:.1f} (1 min, at the end), {datetime.date.today()}."
    )
    return render(rtt, errors, ids, machine_line(), f"{load} {args.note}".strip())


def machine_line() -> str:
    """tools.bench's machine description with the CPU's precision-relevant flags (inference.gate's)."""
    _, flags = cpu_identity()
    return f"{machine_description()}, CPU flags: {' '.join(flags) or 'none of ' + ' '.join(PRECISION_FLAGS)}"


def _isolated() -> bool:
    """Loopback is this network namespace's only interface (if_nameindex asks the namespace itself;
    /sys/class/net may still show the host's)."""
    return [name for _, name in socket.if_nameindex()] == ["lo"]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not _isolated() and os.geteuid() == 0 and shutil.which("unshare") and shutil.which("ip"):
        inner = shlex.join([sys.executable, "-m", "tools.live_bench", *argv])
        return subprocess.call(["unshare", "-n", "sh", "-c", f"ip link set lo up && exec {inner}"])
    args = parse_args(argv)
    section = asyncio.run(amain(args))
    print(section)
    write_section(args.output, section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
