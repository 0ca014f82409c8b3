"""Every picture of docs/report.md, generated: `make report` (or `.venv/bin/python scripts/report.py`).

It starts the system on loopback with the real model (tritonserver, the detect API on it, the media server,
the Streamlit UI and a real Prometheus loaded with the project's configuration), drives it with real photos
and a real clip of people walking (opencv-doc's vtest.avi as Chromium's fake camera), and writes into
docs/img/report/:

    upload.png          the Streamlit upload page after a detection on real photos of people
    live.png            the media server's live page in Chromium, boxes on the people of the clip
    live.webp           a few seconds of the received, annotated video (animated WebP)
    speed.png           the speed comparison, read from docs/benchmarks.md (engine_build.bench's section)
    panel-<slug>.png    each Grafana panel's queries rendered from Prometheus after a minute of load
    dashboard.png       all the panels on one figure, laid out as the dashboard's grid

Like scripts/screenshots.py (whose helpers it uses) it re-runs itself in a loopback-only network namespace
when it can (root). It takes about 100 s on 2 cores.

    .venv/bin/python scripts/report.py [--model-dir DIR] [--out docs/img/report] [--load-seconds 60] [--no-triton]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import itertools
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests/ (browser helpers) and scripts/ (screenshots) from the repository

import aiohttp  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from skimage import data  # noqa: E402

from inference.paths import default_model_dir  # noqa: E402
from scripts.screenshots import in_loopback_namespace, upload_page  # noqa: E402
from tests.browser import chromium_launch_options, write_y4m  # noqa: E402
from tools import report  # noqa: E402
from tools.report_plots import (  # noqa: E402
    frame_motion,
    optimise_png,
    render_dashboard,
    render_panel,
    render_speed,
    write_webp,
)
from tools.scenes import MESSI, VTEST  # noqa: E402
from tools.servers import LOOPBACK, ServerProcess, free_port, server_process  # noqa: E402

OUT = ROOT / "docs" / "img" / "report"
WIDTH = 1200  # every picture's width at most (pixels)
CLIP_SIZE = (640, 480)  # vtest.avi is 768x576: the same 4:3, at the live page's camera size
CLIP_FIRST, CLIP_FRAMES = 200, 150  # 15 s of the clip where several people cross
CLIP_REPEAT = 3  # vtest.avi is 10 fps; each frame thrice makes the 30 fps a camera sends
ANIMATION = {"frames": 32, "interval_ms": 110, "width": 480}  # about 3.5 s at 9 fps
STEP_S = report.SCRAPE_INTERVAL_S
PERSONS_IN_VIEW = 2  # the live pictures wait until the data channel reports at least this many people

_started = time.monotonic()


def progress(message: str) -> None:
    print(f"[report {time.monotonic() - _started:6.1f} s] {message}", flush=True)


# --- inputs -------------------------------------------------------------------------------------------------


def vtest_frames() -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(VTEST))
    if not capture.isOpened():
        raise FileNotFoundError(f"{VTEST} (Debian package opencv-doc; make setup installs it)")
    try:
        capture.set(cv2.CAP_PROP_POS_FRAMES, CLIP_FIRST)
        frames: list[np.ndarray] = []
        while len(frames) < CLIP_FRAMES:
            ok, frame = capture.read()
            if not ok:
                break
            frames.append(cv2.resize(frame, CLIP_SIZE, interpolation=cv2.INTER_AREA))
    finally:
        capture.release()
    if len(frames) < CLIP_FRAMES // 2:
        raise RuntimeError(f"{VTEST}: only {len(frames)} frames from {CLIP_FIRST}")
    return frames


def camera_clip(path: Path, frames: list[np.ndarray]) -> Path:
    """The fake camera's .y4m: people walking, 30 fps (Chromium loops it)."""
    return write_y4m(path, (f for f in frames for _ in range(CLIP_REPEAT)), fps=10 * CLIP_REPEAT)


def jpeg_bytes(image_bgr: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".jpg", image_bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return encoded.tobytes()


def load_photos(frames: list[np.ndarray]) -> dict[str, bytes]:
    """Real photos for POST /detect, people first (the upload page shows the first two)."""
    messi = cv2.imread(str(MESSI))
    if messi is None:
        raise FileNotFoundError(f"{MESSI} (Debian package opencv-doc)")
    pedestrians = frames[len(frames) // 2]  # a frame of the clip with several people
    rgb = {"astronaut": data.astronaut(), "coffee": data.coffee(), "motorcycle": data.stereo_motorcycle()[0]}
    photos = {"messi5.jpg": jpeg_bytes(messi), "pedestrians.jpg": jpeg_bytes(pedestrians)}
    photos.update({f"{k}.jpg": jpeg_bytes(cv2.cvtColor(v, cv2.COLOR_RGB2BGR)) for k, v in rgb.items()})
    return photos


# --- the system ---------------------------------------------------------------------------------------------


@dataclass
class System:
    api_url: str = ""
    grpc_target: str = ""
    media_url: str = ""
    ui_url: str = ""
    prometheus_url: str = ""
    triton: bool = False
    processes: list[ServerProcess] = field(default_factory=list)


def start_system(stack: contextlib.ExitStack, args: argparse.Namespace, tmp: Path) -> System:
    system = System()
    logs = tmp / "logs"
    api_port, grpc_port, media_port, prom_port = (free_port() for _ in range(4))
    api_env = {
        "RTDETECT_HOST": LOOPBACK,
        "RTDETECT_PORT": str(api_port),
        "RTDETECT_GRPC_PORT": str(grpc_port),
        "RTDETECT_MODEL_DIR": str(args.model_dir),
    }
    triton_metrics: str | None = None
    if args.triton:
        from tools.triton import installed, triton_process, write_repo

        if installed() is None:
            progress(
                "!! tritonserver is not installed (python -m tools.triton install): the detect API runs its own engine"
            )
        else:
            progress("starting tritonserver (python backend, ONNX Runtime) for the detect API")
            repo = tmp / "triton-repo"
            write_repo(args.model_dir, repo)
            _, ports = stack.enter_context(triton_process(repo, logs / "tritonserver.log"))
            api_env |= {"RTDETECT_BACKEND": "triton", "RTDETECT_TRITON__URL": f"{LOOPBACK}:{ports['grpc']}"}
            triton_metrics = f"{LOOPBACK}:{ports['metrics']}"
            system.triton = True

    prometheus = shutil.which("prometheus")
    if prometheus is None:
        raise RuntimeError("prometheus not found: make setup installs Debian's prometheus package")
    config_dir = tmp / "prometheus"
    targets_dir = config_dir / "targets"
    targets_dir.mkdir(parents=True)
    for name in ("recording_rules.yml", "alert_rules.yml"):
        shutil.copy(report.PROMETHEUS_DIR / name, config_dir / name)
    shutil.copytree(report.PROMETHEUS_DIR / "secrets", config_dir / "secrets")
    if triton_metrics is not None:  # the compose `scale` profile mounts the same kind of file
        (targets_dir / "triton.yml").write_text(f'- targets: ["{triton_metrics}"]\n')
    config = config_dir / "prometheus.yml"
    config.write_text(
        report.local_prometheus_config(
            (report.PROMETHEUS_DIR / "prometheus.yml").read_text(),
            {
                "detect-api": f"{LOOPBACK}:{api_port}",
                "media-server": f"{LOOPBACK}:{media_port}",
                "dcgm": f"{LOOPBACK}:{free_port()}",  # no dcgm-exporter without a GPU: the target is down
            },
            targets_dir,
        )
    )
    system.prometheus_url = f"http://{LOOPBACK}:{prom_port}"
    progress("starting Prometheus with observability/prometheus/ (targets rewritten to loopback)")
    argv = [prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'tsdb'}",
            f"--web.listen-address={LOOPBACK}:{prom_port}", "--log.level=warn"]  # fmt: skip
    system.processes.append(
        stack.enter_context(
            server_process(
                argv, ready_url=f"{system.prometheus_url}/-/ready", log_path=logs / "prometheus.log"
            )
        )
    )

    progress("starting the detect API and the media server (real model)")
    system.api_url, system.grpc_target = f"http://{LOOPBACK}:{api_port}", f"{LOOPBACK}:{grpc_port}"
    system.media_url = f"http://{LOOPBACK}:{media_port}"
    media_env = {
        "RTDETECT_MEDIA_HOST": LOOPBACK,
        "RTDETECT_MEDIA_PORT": str(media_port),
        "RTDETECT_MEDIA_MODEL_DIR": str(args.model_dir),
        "RTDETECT_MEDIA_ICE_HOST_ADDRESSES": LOOPBACK,
        "RTDETECT_MEDIA_ICE_SERVERS": "[]",
    }
    # Both start at once (each loads its model); then each is waited for.
    api = server_process([sys.executable, "-m", "detect_api"], ready_url=f"{system.api_url}/readyz",
                         log_path=logs / "detect_api.log", env=api_env, cwd=ROOT, timeout_s=180)  # fmt: skip
    media = server_process([sys.executable, "-m", "media_server"], ready_url=f"{system.media_url}/readyz",
                           log_path=logs / "media_server.log", env=media_env, cwd=ROOT, timeout_s=180)  # fmt: skip
    system.processes.append(stack.enter_context(api))
    system.processes.append(stack.enter_context(media))
    progress(f"detect API ready: {system.processes[-2].ready.get('backend', system.processes[-2].ready)}")

    ui_port = free_port()
    system.ui_url = f"http://{LOOPBACK}:{ui_port}"
    ui_env = {
        "RTDETECT_UI_DETECT_API_URL": system.api_url,
        "RTDETECT_UI_MEDIA_SERVER_URL": system.media_url,
        "RTDETECT_UI_ICE_HOST_ADDRESSES": LOOPBACK,
    }
    streamlit = [str(Path(sys.executable).parent / "streamlit"), "run", str(ROOT / "web" / "app.py"),
                 "--server.port", str(ui_port), "--server.address", LOOPBACK, "--server.headless", "true",
                 "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"]  # fmt: skip
    progress("starting the Streamlit UI")
    system.processes.append(
        stack.enter_context(
            server_process(
                streamlit,
                ready_url=f"{system.ui_url}/_stcore/health",
                log_path=logs / "streamlit.log",
                env=ui_env,
                cwd=ROOT,
            )
        )
    )
    return system


# --- the browser pictures -----------------------------------------------------------------------------------

PERSONS = "(window.rtdetect.lastResult ? window.rtdetect.lastResult.detections : []).filter(d => d.label === 'person').length"

# Frames of the received video (and the line drawn over it) drawn into a canvas at a fixed interval, as
# JPEG data URLs with the time each was taken: the browser's own timing, not Playwright round trips.
CAPTURE_JS = """async ({frames, interval_ms, width}) => {
  const video = document.getElementById('remote');
  const overlay = document.getElementById('zones');
  const canvas = document.createElement('canvas');
  const w = video.videoWidth, h = video.videoHeight;
  // Without the bottom strip when the page stamps frame numbers there (app.js's layout): it is the
  // round-trip measurement, not the scene, and flickers.
  const strip = document.getElementById('stamp').checked ? 2 * Math.max(8, (h / 20) & ~1) : 0;
  canvas.width = width;
  canvas.height = Math.round((h - strip) * width / w);
  const ctx = canvas.getContext('2d');
  const out = [];
  for (let i = 0; i < frames; i++) {
    const t = performance.now();
    ctx.drawImage(video, 0, 0, w, h - strip, 0, 0, canvas.width, canvas.height);
    ctx.drawImage(overlay, 0, 0, w, h - strip, 0, 0, canvas.width, canvas.height);
    out.push({t, url: canvas.toDataURL('image/jpeg', 0.92)});
    await new Promise(r => setTimeout(r, Math.max(0, interval_ms - (performance.now() - t))));
  }
  return out;
}"""


def wait_js(page: Any, expression: str, timeout_s: float, what: str) -> None:
    try:
        page.wait_for_function(f"() => {expression}", timeout=timeout_s * 1e3, polling=100)
    except Exception as e:  # Playwright's TimeoutError: say what the page saw
        seen = page.evaluate(
            "() => ({status: window.rtdetect.status, error: window.rtdetect.error, results: window.rtdetect.results,"
            " presented: window.rtdetect.framesPresented, events: window.rtdetect.events.length})"
        )
        raise RuntimeError(f"timed out after {timeout_s:.0f} s waiting for {what}; page state {seen}") from e


def start_live(page: Any, media_url: str) -> None:
    page.goto(media_url + "/")
    page.click("#start")
    wait_js(page, "window.rtdetect.status === 'connected'", 60, "the connection")
    wait_js(page, "document.getElementById('remote').videoWidth > 0", 60, "the returned video")


def live_pictures(page: Any, media_url: str, out: Path) -> None:
    start_live(page, media_url)
    wait_js(page, f"{PERSONS} >= {PERSONS_IN_VIEW}", 60, f"{PERSONS_IN_VIEW} people on the data channel")
    # A counting line down the middle of the walkway, drawn as a user does: two clicks on the video.
    canvas = page.locator("#zones")
    box = canvas.bounding_box()
    page.select_option("#draw-mode", "line")
    canvas.click(position={"x": box["width"] * 0.55, "y": box["height"] * 0.2})
    canvas.click(position={"x": box["width"] * 0.55, "y": box["height"] * 0.85})
    wait_js(page, "window.rtdetect.zonesAccepted !== null", 10, "the server to accept the line")
    try:
        wait_js(page, "window.rtdetect.events.length > 0", 45, "a person crossing the line")
    except RuntimeError as e:  # the picture is still right without an event; say so
        progress(f"!! {e}")
    wait_js(page, "window.rtdetect.rttMs.length >= 30", 30, "round-trip figures")
    wait_js(
        page, "window.rtdetect.fpsSent > 0 && window.rtdetect.fpsReceived > 0", 30, "the page's frame rates"
    )
    wait_js(page, f"{PERSONS} >= {PERSONS_IN_VIEW}", 30, f"{PERSONS_IN_VIEW} people in the latest result")
    optimise_png(Image.open(io.BytesIO(page.screenshot())), out / "live.png", palette=False)
    progress(f"wrote {out / 'live.png'} ({page.evaluate(PERSONS)} people in the latest result)")

    captured = page.evaluate(CAPTURE_JS, ANIMATION)
    frames = [Image.open(io.BytesIO(base64.b64decode(c["url"].split(",", 1)[1]))) for c in captured]
    times = [c["t"] for c in captured]
    durations = [round(b - a) for a, b in itertools.pairwise(times)]
    durations.append(durations[-1])
    motion = frame_motion(frames)
    moving = sum(m > 0.5 for m in motion)
    if moving < len(motion) // 2:
        raise RuntimeError(f"the animation hardly moves: frame differences {motion}")
    path = write_webp(frames, durations, out / "live.webp")
    progress(
        f"wrote {path}: {len(frames)} frames {frames[0].width}x{frames[0].height} over {sum(durations) / 1e3:.1f} s, "
        f"{moving}/{len(motion)} consecutive pairs differ (mean abs diff {np.mean(motion):.1f}), "
        f"{path.stat().st_size / 1024:.0f} KiB"
    )


# --- load ---------------------------------------------------------------------------------------------------


@dataclass
class LoadStats:
    ok: int = 0
    errors: int = 0
    grpc_ok: int = 0
    rejected: int = 0  # the deliberately bad uploads, answered 4xx
    latencies: list[float] = field(default_factory=list)


async def drive_load(system: System, photos: dict[str, bytes], seconds: float, stats: LoadStats) -> None:
    """POST /detect with real photos at concurrency 1, 2 and 4 (a third of the time each), one gRPC Detect
    stream throughout, and now and then a bad upload (so the status panels show 4xx too)."""
    from detect_api.client import AsyncDetectClient, DetectError

    images = list(photos.values())
    deadline = time.monotonic() + seconds
    levels = (1, 2, 4)

    async def rest_worker(http: aiohttp.ClientSession, first: int, until: float) -> None:
        i = first
        while time.monotonic() < until:
            form = aiohttp.FormData()
            form.add_field("file", images[i % len(images)], filename="photo.jpg", content_type="image/jpeg")
            i += 1
            t0 = time.perf_counter()
            async with http.post(f"{system.api_url}/detect", data=form) as resp:
                await resp.read()
                if resp.status == 200:
                    stats.ok += 1
                    stats.latencies.append(time.perf_counter() - t0)
                else:
                    stats.errors += 1

    async def grpc_worker() -> None:
        async with AsyncDetectClient(system.grpc_target) as client:
            i = 0
            while time.monotonic() < deadline:
                try:
                    await client.detect(images[i % len(images)])
                    stats.grpc_ok += 1
                except DetectError:
                    stats.errors += 1
                i += 1

    async def bad_uploads(http: aiohttp.ClientSession) -> None:
        bad = (("notes.txt", b"not an image", "text/plain"), ("cut.jpg", images[0][:2000], "image/jpeg"))
        i = 0
        while time.monotonic() < deadline:
            name, body, kind = bad[i % len(bad)]
            form = aiohttp.FormData()
            form.add_field("file", body, filename=name, content_type=kind)
            async with http.post(f"{system.api_url}/detect", data=form) as resp:
                await resp.read()
                if 400 <= resp.status < 500:
                    stats.rejected += 1
            i += 1
            await asyncio.sleep(2.5)  # pacing: a few bad requests a minute, not a wait for a condition

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=8)) as http:
        background = [asyncio.create_task(grpc_worker()), asyncio.create_task(bad_uploads(http))]
        start = time.monotonic()
        for n, level in enumerate(levels):
            until = start + seconds * (n + 1) / len(levels)
            progress(
                f"load: POST /detect at concurrency {level} (+1 gRPC stream) for {until - time.monotonic():.0f} s"
            )
            await asyncio.gather(*(rest_worker(http, w, until) for w in range(level)))
        await asyncio.gather(*background)


def run_load(system: System, photos: dict[str, bytes], seconds: float) -> LoadStats:
    """The load in a thread with its own event loop (Playwright's sync API owns this thread's)."""
    stats = LoadStats()
    failure: list[BaseException] = []

    def main() -> None:
        try:
            asyncio.run(drive_load(system, photos, seconds, stats))
        except BaseException as e:  # re-raised in the caller's thread
            failure.append(e)

    thread = threading.Thread(target=main, name="report-load")
    thread.start()
    thread.join()
    if failure:
        raise RuntimeError("the load generator failed") from failure[0]
    return stats


# --- the dashboard ------------------------------------------------------------------------------------------


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.5)  # polling Prometheus's API with a deadline


def _api(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())["data"]


def scraped_after(prometheus_url: str, t: float) -> bool:
    """Every target that is up has been scraped, and every rule group evaluated, after Unix time `t`."""
    targets = _api(f"{prometheus_url}/api/v1/targets")["activeTargets"]
    groups = _api(f"{prometheus_url}/api/v1/rules")["groups"]

    def after(stamp: str) -> bool:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() > t

    return all(after(x["lastScrape"]) for x in targets if x["health"] == "up") and all(
        after(g["lastEvaluation"]) for g in groups
    )


def dashboard_pictures(system: System, start: float, end: float, out: Path) -> None:
    dashboard = report.load_dashboard()
    panels = report.dashboard_panels(dashboard)
    variables = dict(report.GRAFANA_VARIABLES)
    results: dict[int, list[list[report.Series]]] = {}
    no_data: dict[int, str | None] = {}
    empty = []
    for panel in panels:
        exprs = [report.substitute(t.expr, variables) for t in panel.targets]
        series = [report.query_range(system.prometheus_url, e, start, end, STEP_S) for e in exprs]
        results[panel.id] = series
        reason = (
            None
            if any(report.has_values(s) for s in series)
            else report.no_data_reason(panel, triton_running=system.triton)
        )
        no_data[panel.id] = reason
        if reason is not None:
            empty.append(f"{panel.title!r} ({reason})")
        render_panel(
            panel, exprs, series, reason, out / f"panel-{panel.slug}.png", (start, end), variables, STEP_S
        )
    stale = {p.name for p in out.glob("panel-*.png")} - {f"panel-{p.slug}.png" for p in panels}
    for name in stale:  # a panel renamed or removed since the last run
        (out / name).unlink()
    progress(f"wrote {len(panels)} panel pictures; without data: {', '.join(empty) or 'none'}")
    minutes = (end - start) / 60
    subtitle = (
        f"{minutes:.1f} minutes of the running system on this machine (no GPU): a live peer in Chromium playing people "
        f"walking, then POST /detect with real photos at concurrency 1, 2, 4, gRPC Detect and a second live peer; "
        f"the detect API on {'tritonserver' if system.triton else 'its own engine'}."
    )
    render_dashboard(dashboard.get("title", "rtdetect"), panels, results, no_data, out / "dashboard.png",
                     (start, end), variables, STEP_S, subtitle)  # fmt: skip
    progress(f"wrote {out / 'dashboard.png'}")


# --- main ---------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model-dir", type=Path, default=Path(os.environ.get("RTDETECT_MODEL_DIR", default_model_dir()))
    )
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--load-seconds", type=float, default=60.0)
    parser.add_argument("--no-triton", dest="triton", action="store_false",
                        help="the detect API runs its own engine; the Triton panels say they have no data")  # fmt: skip
    args = parser.parse_args()
    in_loopback_namespace()
    from playwright.sync_api import sync_playwright

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    progress("speed chart from docs/benchmarks.md")
    speed = report.speed_data(report.BENCHMARKS.read_text())
    render_speed(speed, out / "speed.png", f"docs/benchmarks.md, section {report.ENGINE_SECTION}")
    progress(f"wrote {out / 'speed.png'} ({len(speed.engines)} engines, {len(speed.detect)} /detect rows)")

    with tempfile.TemporaryDirectory(prefix="rtdetect-report-") as tmp_name, contextlib.ExitStack() as stack:
        tmp = Path(tmp_name)
        frames = vtest_frames()
        clip = camera_clip(tmp / "people.y4m", frames)
        photos = load_photos(frames)
        progress(
            f"fake camera: {len(frames)} frames of {VTEST.name} at {CLIP_SIZE[0]}x{CLIP_SIZE[1]}, 30 fps"
        )
        system = start_system(stack, args, tmp)
        pw = stack.enter_context(sync_playwright())
        browser = pw.chromium.launch(**chromium_launch_options(fake_camera=clip))
        stack.callback(browser.close)

        progress("upload page")
        page = browser.new_page(viewport={"width": WIDTH, "height": 900})
        upload_photos = []
        for name in list(photos)[:2]:
            (tmp / name).write_bytes(photos[name])
            upload_photos.append(tmp / name)
        png = upload_page(page, system.ui_url, upload_photos, height=1720)
        optimise_png(Image.open(io.BytesIO(png)), out / "upload.png", palette=False)
        progress(f"wrote {out / 'upload.png'}")
        page.close()

        window_start = time.time()
        progress("live page: Chromium's camera plays the clip to the media server")
        live = browser.new_page(viewport={"width": WIDTH, "height": 1000})
        live_pictures(live, system.media_url, out)

        progress("second live peer (another Chromium page)")
        second = browser.new_page(viewport={"width": WIDTH, "height": 860})
        start_live(second, system.media_url)
        stats = run_load(system, photos, args.load_seconds)
        load_end = time.time()
        p50 = np.percentile(stats.latencies, 50) * 1e3 if stats.latencies else float("nan")
        progress(
            f"load done: {stats.ok} /detect answers (p50 {p50:.0f} ms), {stats.grpc_ok} gRPC, {stats.rejected} "
            f"bad uploads rejected, {stats.errors} errors; live results on the first page: "
            f"{live.evaluate('window.rtdetect.results')}"
        )
        wait_for(
            lambda: scraped_after(system.prometheus_url, load_end),
            60,
            "a scrape and rule evaluation after the load",
        )
        dashboard_pictures(system, window_start, time.time(), out)

    sizes = {p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.is_file()}
    progress(f"done: {len(sizes)} files, {sum(sizes.values()) / 1e6:.2f} MB in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
