"""The load harness (tools/load.py) against real servers on loopback: a short live ramp with real peers and the
real model, the stop at the first level that misses the bar, the plot, and a /detect concurrency sweep."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.detect_api_process import fake_detect_api
from tests.media_support import loopback_settings, running_server
from tools.load import (
    detect_level,
    live_sweep,
    main_thread_seconds,
    panning_bases,
    parse_args,
    plot_live,
    render_live,
    write_section,
)
from tools.servers import cpu_seconds


def test_panning_bases_move_the_photo(photos: dict[str, np.ndarray]) -> None:
    bases = panning_bases(photos["astronaut"], 320, 240, frames=8)
    assert len(bases) == 8 and bases[0].shape == (240 * 3 // 2, 320)
    assert not np.array_equal(bases[0], bases[4])  # half a period apart: a different view of the photo


@pytest.mark.slow
async def test_live_ramp_measures_and_stops_at_the_first_level_that_misses(
    model_dir: Path, tmp_path: Path
) -> None:
    settings = loopback_settings(model_dir=model_dir, max_peers=4)
    async with running_server(settings) as server:
        args = parse_args(
            ["live", "--url", server.url, "--levels", "1,2,3", "--seconds", "2", "--warmup", "1",
             "--ice-host", "127.0.0.1", "--min-fps", "5", "--max-p95-ms", "5000", "--min-results", "0.5",
             "--output", str(tmp_path / "bench.md"), "--plot", str(tmp_path / "load.png")]
        )  # fmt: skip
        levels = await live_sweep(args)
        assert [lv.peers for lv in levels] == [1, 2, 3]
        first = levels[0]
        assert first.passed, first.misses
        assert first.fps_mean > 5 and 0 < first.rtt_p50_ms <= first.rtt_p95_ms <= first.rtt_p99_ms
        assert first.results_per_peer > 0.5
        assert first.cpu_per_peer_pct is not None and first.cpu_per_peer_pct > 0

        # An unreachable bar: the sweep stops after its first level.
        strict = parse_args(["live", "--url", server.url, "--levels", "1,2", "--seconds", "1", "--warmup", "0.5",
                             "--ice-host", "127.0.0.1", "--min-fps", "1000"])  # fmt: skip
        stopped = await live_sweep(strict)
        assert len(stopped) == 1 and not stopped[0].passed and "FPS" in stopped[0].misses[0]

    plot_live(levels, args.plot)
    image = cv2.imread(str(args.plot))
    assert image is not None and image.shape[:2] == (420, 720)
    page = tmp_path / "bench.md"
    write_section(page, "live", render_live(levels, args, "note"))
    write_section(page, "live", render_live(levels, args, "again"))  # replaced, not appended
    text = page.read_text()
    assert text.count("tools.load:live:start") == 1 and "again" in text and "| 3 |" in text


async def test_detect_sweep_counts_requests_per_second(tmp_path: Path) -> None:
    with fake_detect_api({}, tmp_path / "api.log") as (host, port):
        jpeg = cv2.imencode(".jpg", np.full((64, 64, 3), 128, np.uint8))[1].tobytes()
        level = await detect_level(f"http://{host}:{port}", jpeg, 2, 1.0, {})
    assert level.errors == 0 and level.requests > 5 and level.per_s > 5
    assert 0 < level.p50_ms <= level.p95_ms


def test_main_thread_seconds_counts_the_main_thread_only() -> None:
    """The GIL column (--pid) reads the main thread's own CPU time, not the process's: a process spinning in a
    worker thread shows next to nothing, one spinning in its main thread about the time it spun."""
    spin = "import time\nend = time.process_time() + 0.6\nwhile time.process_time() < end: pass\n"
    programs = {
        "main": spin + "import sys; sys.stdin.read()",
        "worker": "import threading\ndef work():\n" + textwrap.indent(spin, "    ")
        + "threading.Thread(target=work).start()\nimport sys; sys.stdin.read()",
    }  # fmt: skip
    seconds = {}
    for name, program in programs.items():
        proc = subprocess.Popen([sys.executable, "-c", program], stdin=subprocess.PIPE)
        try:
            # Until the spin is over: the process's CPU time (all threads) passes 0.6 s.
            while cpu_seconds(proc.pid) < 0.6:
                time.sleep(0.05)  # polling a child's CPU time until it has spun
            seconds[name] = main_thread_seconds([proc.pid])[proc.pid]
        finally:
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait(timeout=10)
    assert seconds["main"] >= 0.5, seconds
    assert seconds["worker"] < 0.3, seconds
