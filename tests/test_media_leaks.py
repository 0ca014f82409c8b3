"""50 connect/disconnect cycles with real peers and the real model leave nothing behind."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import os
import threading
import tracemalloc
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from aiortc import RTCPeerConnection

from media_server.peers import PeerSession
from media_server.track import LivePipeline
from tests.media_support import loopback_settings, running_server
from tools.synthetic import SyntheticPeer

CYCLES = 50
# The first connections fill caches and thread pools for good, and the batcher keeps its last batch: the
# baseline is taken after these, under tracemalloc, so only growth per cycle counts.
WARMUP_CYCLES = 20
# Measured after malloc_trim (freed heap pages back to the OS): about +50 MB over the first 25 cycles while
# glibc's per-thread arenas fill (aiortc starts a decoder thread per peer), then flat within a few MB.
RSS_GROWTH_LIMIT = 32 * 1024 * 1024
# Python allocations, numpy included. Noise: the batcher may still hold up to two 2 MB input tensors at
# any moment. A decoded 640x480 frame is 460 kB: one kept per cycle would be 23 MB.
TRACED_GROWTH_LIMIT = 8 * 1024 * 1024


def _rss() -> int:
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # glibc only
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _threads() -> tuple[list[str], int]:
    """Named threads outside thread pools, and the number of pool workers (pools are bounded, reused)."""
    names = [t.name for t in threading.enumerate()]
    pooled = [n for n in names if n.startswith(("ThreadPoolExecutor", "asyncio_", "rtdetect-frames"))]
    return sorted(n for n in names if n not in pooled), len(pooled)


def _live(kind: type) -> int:
    gc.collect()
    # type(o), not isinstance: isinstance also reads `__class__`, which warns on some deprecated torch objects.
    return sum(issubclass(type(o), kind) for o in gc.get_objects())


async def _cycle(url: str, http: aiohttp.ClientSession, photo: np.ndarray) -> None:
    peer = SyntheticPeer(url, photo)
    try:
        await peer.connect(http)
        # Frames back and a detection result: the reader, inference and data channel all ran.
        await peer.wait_until(
            lambda: len(peer.echoes) >= 5 and bool(peer.detections), 20, "frames and a result"
        )
    finally:
        await peer.close()


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_connect_disconnect_cycles_leave_nothing_behind(
    model_dir: Path, photos: dict[str, np.ndarray]
) -> None:
    settings = loopback_settings(model_dir=model_dir)
    photo = photos["astronaut"]
    async with running_server(settings) as server, aiohttp.ClientSession() as http:
        peers = server.state.peers
        tracemalloc.start()
        for _ in range(WARMUP_CYCLES):
            await _cycle(server.url, http, photo)
        await peers.wait_empty(10)
        gc.collect()
        tasks_before = len(asyncio.all_tasks())
        threads_before, _ = _threads()
        rss_before = _rss()
        traced_before = tracemalloc.get_traced_memory()[0]

        for i in range(CYCLES):
            await _cycle(server.url, http, photo)
            await peers.wait_empty(10)
            assert len(peers) == 0, f"cycle {i}: {len(peers)} peers left"

        # A closed peer's last frame may still be in the engine: its batch task ends with the engine call.
        # One that never ends is a leak, and times out here.
        async with asyncio.timeout(10):
            while any(t.get_name() == "rtdetect-batch" for t in asyncio.all_tasks()):  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        gc.collect()
        traced_after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        rss_after = _rss()
        tasks_after = asyncio.all_tasks()
        threads_after, pooled = _threads()

        assert len(tasks_after) <= tasks_before, [t.get_name() for t in tasks_after]
        assert threads_after == threads_before  # aiortc's decoder threads and ours all ended
        assert pooled <= 3 * (os.cpu_count() or 2) + 8  # pools keep a bounded number of workers
        assert _live(RTCPeerConnection) == 0
        assert _live(PeerSession) == 0
        assert _live(LivePipeline) == 0
        assert traced_after - traced_before < TRACED_GROWTH_LIMIT, traced_after - traced_before
        assert rss_after - rss_before < RSS_GROWTH_LIMIT, (rss_before, rss_after)
        closed = server.state.registry.get_sample_value(
            "rtdetect_live_peers_closed_total", {"reason": "client"}
        )
        assert closed == CYCLES + WARMUP_CYCLES
        print(
            f"\n{CYCLES} cycles: tasks {tasks_before}->{len(tasks_after)}, threads {len(threads_before)}, "
            f"pool workers {pooled}, traced +{(traced_after - traced_before) / 1e6:.2f} MB, "
            f"RSS +{(rss_after - rss_before) / 1e6:.1f} MB"
        )
