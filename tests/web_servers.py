"""The real servers as subprocesses on loopback, for the UI tests: started, waited for, stopped."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from tools.servers import LOOPBACK, free_port
from tools.servers import server_process as launch

ROOT = Path(__file__).resolve().parents[1]

# The media server through its app factory (the contract), independent of any command-line entry point.
MEDIA_SERVER_LAUNCHER = """
import logging, sys
from aiohttp import web
from media_server.app import create_app
from media_server.settings import Settings
logging.basicConfig(level=logging.INFO)
settings = Settings()
web.run_app(create_app(settings), host=settings.host, port=settings.port, print=None)
"""


@contextmanager
def server_process(
    name: str, argv: list[str], env: Mapping[str, str], ready_url: str, log_dir: Path, timeout_s: float = 60
) -> Iterator[subprocess.Popen[bytes]]:
    """Run `argv` from the repository root until the block ends; ready once `ready_url` answers 200."""
    with launch(
        argv, ready_url=ready_url, log_path=log_dir / f"{name}.log", env=env, cwd=ROOT,
        timeout_s=timeout_s, stop_timeout_s=10,
    ) as server:  # fmt: skip
        yield server.proc


@contextmanager
def media_server(model_dir: Path, log_dir: Path, extra_env: Mapping[str, str] | None = None) -> Iterator[str]:
    """The real media server with the real model, ICE host candidates on loopback; yields its URL."""
    port = free_port()
    env = {
        "RTDETECT_MEDIA_HOST": LOOPBACK,
        "RTDETECT_MEDIA_PORT": str(port),
        "RTDETECT_MEDIA_MODEL_DIR": str(model_dir),
        "RTDETECT_MEDIA_ICE_HOST_ADDRESSES": LOOPBACK,
        "RTDETECT_MEDIA_ICE_SERVERS": "[]",
        **(extra_env or {}),
    }
    url = f"http://{LOOPBACK}:{port}"
    argv = [sys.executable, "-c", MEDIA_SERVER_LAUNCHER]
    with server_process("media_server", argv, env, f"{url}/readyz", log_dir):
        yield url


@contextmanager
def detect_api(model_dir: Path, log_dir: Path, extra_env: Mapping[str, str] | None = None) -> Iterator[str]:
    """The real detect API (`python -m detect_api`, as `make run` starts it) with the real model."""
    port = free_port()
    env = {
        "RTDETECT_HOST": LOOPBACK,
        "RTDETECT_PORT": str(port),
        "RTDETECT_MODEL_DIR": str(model_dir),
        "RTDETECT_GPU_SAMPLE_INTERVAL_S": "0",
        **(extra_env or {}),
    }
    url = f"http://{LOOPBACK}:{port}"
    with server_process("detect_api", [sys.executable, "-m", "detect_api"], env, f"{url}/readyz", log_dir):
        yield url


@contextmanager
def streamlit_ui(log_dir: Path, env: Mapping[str, str]) -> Iterator[str]:
    """`streamlit run web/app.py` as `make run` starts it, on a free port; yields its URL."""
    port = free_port()
    argv = [
        str(Path(sys.executable).parent / "streamlit"),
        "run",
        str(ROOT / "web" / "app.py"),
        "--server.port",
        str(port),
        "--server.address",
        LOOPBACK,
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        "--server.fileWatcherType",
        "none",
    ]
    url = f"http://{LOOPBACK}:{port}"
    with server_process("streamlit", argv, env, f"{url}/_stcore/health", log_dir):
        yield url
