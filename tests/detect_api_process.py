"""The detect API as a real uvicorn process on loopback, on a fake engine: what `python -m detect_api` runs
(the app factory and `uvicorn_options`), without loading a model, so it starts in about a second."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from tools.servers import LOOPBACK, free_port, server_process

ROOT = Path(__file__).resolve().parents[1]

LAUNCHER = """
import asyncio, logging
import uvicorn
from detect_api.app import create_app
from detect_api.limits import uvicorn_options
from detect_api.settings import Settings
from inference.pipeline import Detector
from tests.detect_api_support import FAKE_SPEC, FakeEngine

logging.basicConfig(level=logging.INFO)

async def main() -> None:
    settings = Settings()
    detector = Detector(FakeEngine(), FAKE_SPEC, max_batch_size=1, max_delay_ms=0.0, max_queue=8)
    await detector.start()
    config = uvicorn.Config(
        create_app(settings, detector=detector), host=settings.host, port=settings.port, log_config=None,
        **uvicorn_options(settings),
    )
    await uvicorn.Server(config).serve()

asyncio.run(main())
"""


@contextmanager
def fake_detect_api(env: Mapping[str, str], log_path: Path) -> Iterator[tuple[str, int]]:
    """Run it with RTDETECT_* `env` (host and port are set here) until the block ends; yields (host, port)."""
    port = free_port()
    full_env = {
        "RTDETECT_HOST": LOOPBACK,
        "RTDETECT_PORT": str(port),
        "RTDETECT_GPU_SAMPLE_INTERVAL_S": "0",
        "RTDETECT_GRPC_PORT": "0",
        "PYTHONPATH": str(ROOT),
        **env,
    }
    with server_process(
        [sys.executable, "-c", LAUNCHER],
        ready_url=f"http://{LOOPBACK}:{port}/readyz",
        log_path=log_path,
        env=full_env,
        cwd=ROOT,
        timeout_s=60,
        stop_timeout_s=10,
    ):
        yield LOOPBACK, port
