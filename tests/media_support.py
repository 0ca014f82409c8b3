"""Helpers for the media server tests: a running server on loopback, a small fake detector."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from aiohttp import web

from inference.errors import InferenceError
from inference.types import Detection, DetectionResult, DetectParams, Timings
from media_server.app import STATE, ServerState, create_app
from media_server.detector import DetectorLike
from media_server.http_limits import MediaHttpServer, start_http
from media_server.settings import Settings

LOOPBACK = "127.0.0.1"
_DEFAULT_PARAMS = DetectParams()
CLEANUP_LIMIT_S = 30.0


def loopback_settings(**overrides: Any) -> Settings:
    """Settings for a test server: loopback only, no ICE servers, port chosen by the OS."""
    values: dict[str, Any] = {
        "host": LOOPBACK,
        "port": 0,
        "ice_host_addresses": [LOOPBACK],
        "ice_servers": [],
    }
    values.update(overrides)
    return Settings(**values)


class FakeDetector:
    """Answers every image with one fixed detection after `delay_s` (a sleep on the loop, not a thread)."""

    def __init__(self, detections: tuple[Detection, ...] = (), *, delay_s: float = 0.0) -> None:
        self.detections = detections
        self.delay_s = delay_s
        self.ready = False
        self.calls = 0
        self.fail = False
        self.problem: str | None = None  # what serving_problem says (an engine tier gone after start)

    async def start(self) -> None:
        self.ready = True

    async def serving_problem(self) -> str | None:
        return self.problem

    async def close(self) -> None:
        self.ready = False

    def info(self) -> dict[str, Any]:
        return {"name": "fake", "backend": "fake", "provider": "fake"}

    async def detect(self, image: np.ndarray, params: DetectParams = _DEFAULT_PARAMS) -> DetectionResult:
        self.calls += 1
        started = time.perf_counter()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail:
            raise InferenceError("fake engine failure")
        h, w = image.shape[:2]
        ms = (time.perf_counter() - started) * 1e3
        kept = tuple(d for d in self.detections if d.score >= params.score_threshold)
        return DetectionResult(kept, w, h, 1, Timings(inference=ms, total=ms))


@dataclass
class RunningServer:
    url: str
    app: web.Application
    http: MediaHttpServer

    @property
    def state(self) -> ServerState:
        return self.app[STATE]


@asynccontextmanager
async def running_server(
    settings: Settings, detector: DetectorLike | None = None, **app_options: Any
) -> AsyncIterator[RunningServer]:
    """`app_options`: create_app's keywords (the benchmark's seams: wrap_engine, media_factory)."""
    app = create_app(settings, detector=detector, **app_options)
    if detector is not None and not detector.ready:
        await detector.start()
    # The server's own HTTP limits (read deadlines, connection cap), as `python -m media_server` runs it.
    http = await start_http(app, settings, host=LOOPBACK, port=settings.port)  # 0 unless a test chose one
    try:
        yield RunningServer(f"http://{LOOPBACK}:{http.port}", app, http)
    finally:
        try:
            await asyncio.wait_for(http.close(), CLEANUP_LIMIT_S)
        except TimeoutError:
            # A hung shutdown is a bug: say where every task is stuck instead of hanging the test run.
            stacks = io.StringIO()
            for task in asyncio.all_tasks():
                task.print_stack(limit=8, file=stacks)
            raise AssertionError(
                f"server cleanup took over {CLEANUP_LIMIT_S} s; tasks:\n{stacks.getvalue()}"
            ) from None
