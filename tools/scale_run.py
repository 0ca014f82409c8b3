"""`python -m tools.scale_run`: the measurements behind docs/scale.md, in one run on one machine.

Starts a real tritonserver (tools/triton.py), then, against it:
  1. Triton's own throughput for the model with a bare client (concurrency 8);
  2. POST /detect at concurrency 8 through a detect API on the triton backend (the ratio to 1 is the
     serving overhead);
  3. live ramps with the load harness (tools/load.py) against one media-server process on the triton
     backend, at 640x480 and 1280x720: the media process then does only decode, draw, encode and aiortc, so
     its CPU per peer is the per-peer cost;
  4. the same ramp (640x480) against two media-server replicas behind the front (docker/Caddyfile on
     Debian's caddy), both on the same Triton;
  5. one peer for `--drift-seconds` through Triton: received FPS and round-trip drift;
  6. one media process ramped past the engine's share (results/s left out of the bar) until FPS or p95 gives,
     with its main thread's CPU share per level: where the GIL binds one process.
Each step writes its section of docs/benchmarks.md (tools.load:scale-*). Run it inside a loopback-only network
namespace (`unshare -n`), as root; it takes about 8 minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2

from tools.load import (
    ROOT,
    _photo,
    detect_level,
    live_sweep,
    log,
    parse_args,
    plot_live,
    render_live,
    render_throughput,
    triton_level,
    write_section,
)
from tools.servers import LOOPBACK, free_port, get_json, server_process, tail
from tools.triton import triton_process, write_repo

CADDYFILE = ROOT / "docker" / "Caddyfile"


@dataclass(frozen=True)
class Local:
    url: str
    pid: int  # for the main thread's CPU share (tools.load --pid)


@contextlib.contextmanager
def media_server(
    model_dir: Path, triton_url: str | None, logs: Path, name: str, max_peers: int
) -> Iterator[Local]:
    """A media-server process on loopback; on Triton when `triton_url` is set, else its own engine (auto)."""
    port = free_port()
    env = {
        "RTDETECT_MEDIA_HOST": LOOPBACK,
        "RTDETECT_MEDIA_PORT": str(port),
        "RTDETECT_MEDIA_MODEL_DIR": str(model_dir),
        "RTDETECT_MEDIA_ICE_HOST_ADDRESSES": LOOPBACK,
        "RTDETECT_MEDIA_ICE_SERVERS": "[]",
        "RTDETECT_MEDIA_GPU_SAMPLE_INTERVAL_S": "0",
        "RTDETECT_MEDIA_MAX_PEERS": str(max_peers),
    }
    if triton_url is not None:
        env |= {
            "RTDETECT_MEDIA_BACKEND": "triton",
            "RTDETECT_MEDIA_TRITON__URL": triton_url,
            "RTDETECT_MEDIA_TRITON__SHARED_MEMORY": "system",
        }
    url = f"http://{LOOPBACK}:{port}"
    with server_process(
        [sys.executable, "-m", "media_server"], ready_url=f"{url}/readyz", log_path=logs / f"{name}.log",
        env=env, cwd=ROOT, timeout_s=120,
    ) as server:  # fmt: skip
        yield Local(url, server.proc.pid)


@contextlib.contextmanager
def detect_api(model_dir: Path, triton_url: str, logs: Path, api_batch: int) -> Iterator[str]:
    port = free_port()
    env = {
        "RTDETECT_HOST": LOOPBACK,
        "RTDETECT_PORT": str(port),
        "RTDETECT_GRPC_PORT": "0",
        "RTDETECT_MODEL_DIR": str(model_dir),
        "RTDETECT_GPU_SAMPLE_INTERVAL_S": "0",
        "RTDETECT_BACKEND": "triton",
        "RTDETECT_TRITON__URL": triton_url,
        "RTDETECT_TRITON__SHARED_MEMORY": "system",
        # The API's own batcher sends up to `api_batch` images per Triton request; Triton batches across
        # requests too. 8 (the repository's max_batch_size) beat single images here (docs/scale.md).
        "RTDETECT_MAX_BATCH_SIZE": str(api_batch),
        "RTDETECT_INFERENCE_WORKERS": "8",
    }
    url = f"http://{LOOPBACK}:{port}"
    with server_process(
        [sys.executable, "-m", "detect_api"], ready_url=f"{url}/readyz", log_path=logs / "detect_api.log",
        env=env, cwd=ROOT, timeout_s=120,
    ):  # fmt: skip
        yield url


@contextlib.contextmanager
def front(upstreams: Sequence[str], logs: Path) -> Iterator[str]:
    """docker/Caddyfile on Debian's caddy, plain loopback ports; yields the live URL (https, internal CA)."""
    https_port, http_port, health_port = free_port(), free_port(), free_port()
    closed = f"{LOOPBACK}:{free_port()}"
    env = {
        "PATH": "/usr/bin:/bin",
        "XDG_DATA_HOME": str(logs / "caddy-data"),
        "XDG_CONFIG_HOME": str(logs / "caddy-config"),
        "FRONT_SITE": LOOPBACK,
        "FRONT_HTTPS_PORT": str(https_port),
        "FRONT_HTTP_PORT": str(http_port),
        "FRONT_HEALTH_PORT": str(health_port),
        "FRONT_MEDIA_UPSTREAMS": " ".join(u.removeprefix("http://") for u in upstreams),
        "FRONT_MEDIA_HEALTH_INTERVAL": "250ms",
        **{f"FRONT_{k}_UPSTREAMS": closed for k in ("API", "UI", "GRAFANA", "GRPC")},
    }
    log_path = logs / "caddy.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            ["caddy", "run", "--config", str(CADDYFILE), "--adapter", "caddyfile"],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while get_json(f"http://{LOOPBACK}:{health_port}/healthz") is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"caddy did not start:\n{tail(log_path)}")
            time.sleep(0.2)  # polling a health URL until a deadline
        time.sleep(1.0)  # the internal CA's certificate for 127.0.0.1 is issued on the first start
        yield f"https://{LOOPBACK}:{https_port}/live"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def live(
    url: str, servers: Sequence[Local], levels: str, seconds: float, section: str, output: Path, title: str,
    note: str, size: tuple[int, int] = (640, 480), plot: Path | None = None, insecure: bool = False,
    max_p95_ms: float = 250.0, min_results: float = 5.0,
) -> None:  # fmt: skip
    argv = ["live", "--url", url, "--levels", levels, "--seconds", str(seconds), "--ice-host", LOOPBACK,
            "--max-p95-ms", str(max_p95_ms), "--min-results", str(min_results),
            "--width", str(size[0]), "--height", str(size[1]), "--section", section, "--title", title,
            "--note", note, "--output", str(output)]  # fmt: skip
    for server in servers:
        argv += ["--metrics", server.url, "--pid", str(server.pid)]
    if insecure:
        argv.append("--insecure")
    args = parse_args(argv)
    args.plot = plot
    levels_run = asyncio.run(live_sweep(args))
    if plot is not None and levels_run:
        plot_live(levels_run, plot)
    write_section(args.output, section, render_live(levels_run, args, note))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.scale_run", description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument("--seconds", type=float, default=15.0, help="measured seconds per live level")
    parser.add_argument("--levels", default="1,2,3,4,6,8")
    parser.add_argument("--drift-seconds", type=float, default=60.0)
    parser.add_argument("--note", default="", help="the machine's state, printed under every table")
    parser.add_argument(
        "--skip", action="append", default=[], help="engine, detect, live, hd, drift, gil, replicas"
    )
    parser.add_argument(
        "--api-batch",
        type=int,
        default=8,
        help="the detect API's max batch size towards Triton (1: single images)",
    )
    parser.add_argument(
        "--gil-levels", default="4,6,8,10,12",
        help="peers for the GIL ramp: one process, results/s left out of the bar, until FPS or p95 gives",
    )  # fmt: skip
    parser.add_argument(
        "--engine", choices=["triton", "local"], default="triton",
        help="local: no Triton, each media process runs its own engine (a GPU host's TensorRT or CUDA)",
    )  # fmt: skip
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--plots", type=Path, default=ROOT / "docs" / "img")
    parser.add_argument(
        "--max-p95-ms", type=float, default=250.0, help="the live quality bar's round trip p95"
    )
    parser.add_argument(
        "--suffix", default="", help="appended to every section name (a second run beside the first)"
    )
    args = parser.parse_args(argv)
    from inference.paths import default_model_dir

    sfx = args.suffix
    model_dir = args.model_dir or default_model_dir()
    logs = Path(tempfile.mkdtemp(prefix="rtdetect-scale-"))
    log(f"logs in {logs}")
    out, note, engine_name = (
        args.output,
        args.note,
        "Triton engine" if args.engine == "triton" else "own engine",
    )
    with contextlib.ExitStack() as stack:
        triton_url: str | None = None
        if args.engine == "triton":
            repo = logs / "repo"
            write_repo(model_dir, repo)
            _, ports = stack.enter_context(triton_process(repo, logs / "tritonserver.log"))
            triton_url = f"{LOOPBACK}:{ports['grpc']}"
            if "engine" not in args.skip:
                engine = triton_level(triton_url, model_dir, 8, 10.0, "system")
                log(f"Triton bare client: {engine.per_s:.1f} images/s")
                write_section(
                    out, "scale-triton" + sfx, render_throughput("triton", [engine], triton_url, note)
                )
            if "detect" not in args.skip:
                jpeg = cv2.imencode(".jpg", _photo())[1].tobytes()
                with detect_api(model_dir, triton_url, logs, args.api_batch) as api:
                    asyncio.run(detect_level(api, jpeg, 8, 3.0, {}))  # warm-up
                    served = asyncio.run(detect_level(api, jpeg, 8, 10.0, {}))
                log(f"/detect through Triton: {served.per_s:.1f} images/s")
                target = f"detect API on Triton, batches of up to {args.api_batch} image(s) per request"
                body = render_throughput("detect", [served], target, note)
                write_section(out, "scale-detect" + sfx, body)
        if {"live", "hd", "drift", "gil"} - set(args.skip):
            with media_server(model_dir, triton_url, logs, "media-1", 32) as one:
                if "live" not in args.skip:
                    live(one.url, [one], args.levels, args.seconds, "scale-one-process" + sfx, out,
                         f"one media process, {engine_name}, 640x480", note, plot=args.plots / f"load_live{sfx}.png", max_p95_ms=args.max_p95_ms)  # fmt: skip
                if "hd" not in args.skip:
                    live(one.url, [one], "1,2,3,4", args.seconds, "scale-one-process-720p" + sfx, out,
                         f"one media process, {engine_name}, 1280x720", note, size=(1280, 720), max_p95_ms=args.max_p95_ms)  # fmt: skip
                if "drift" not in args.skip:
                    live(one.url, [one], "1", args.drift_seconds, "scale-drift" + sfx, out,
                         f"one peer for {args.drift_seconds:g} s, {engine_name}", note, max_p95_ms=args.max_p95_ms)  # fmt: skip
                if "gil" not in args.skip:
                    # Past the engine's share per peer: only FPS and p95 count, so the ramp ends where the
                    # process (or the machine) gives, and the table shows the main thread's share there.
                    live(one.url, [one], args.gil_levels, args.seconds, "scale-gil" + sfx, out,
                         f"one media process ramped until it gives, {engine_name}, 640x480 (results/s not in the bar)",
                         note, max_p95_ms=args.max_p95_ms, min_results=0.0)  # fmt: skip
        if "replicas" not in args.skip:
            with (
                media_server(model_dir, triton_url, logs, "replica-1", 16) as r1,
                media_server(model_dir, triton_url, logs, "replica-2", 16) as r2,
                front([r1.url, r2.url], logs) as url,
            ):
                live(url, [r1, r2], args.levels, args.seconds, "scale-two-replicas" + sfx, out,
                     f"two media replicas behind the front, {engine_name}, 640x480", note,
                     plot=args.plots / f"load_replicas{sfx}.png", insecure=True, max_p95_ms=args.max_p95_ms)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
