"""The subprocess launcher the benchmarks and the UI tests share (tools/servers.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tools.servers import LOOPBACK, free_port, get_json, server_process


def test_waits_for_the_ready_url_and_stops_the_server(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "ready.json").write_text('{"status": "ready"}')
    argv = [sys.executable, "-m", "http.server", str(port), "--bind", LOOPBACK, "--directory", str(tmp_path)]
    url = f"http://{LOOPBACK}:{port}/ready.json"
    with server_process(argv, ready_url=url, log_path=tmp_path / "log" / "server.log") as server:
        assert server.ready == {"status": "ready"}
        assert server.proc.poll() is None
        assert get_json(f"http://{LOOPBACK}:{port}/missing") is None  # a 404 is not ready
    assert server.proc.returncode is not None
    assert get_json(url) is None  # nobody answers any more


def test_a_server_that_exits_fails_with_its_log(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "import sys; print('model file missing'); sys.exit(3)"]
    with (
        pytest.raises(RuntimeError, match=r"exited with 3(.|\n)*model file missing"),
        server_process(argv, ready_url=f"http://{LOOPBACK}:{free_port()}/", log_path=tmp_path / "s.log"),
    ):
        pass


def test_a_server_never_ready_times_out(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "import time; print('still loading', flush=True); time.sleep(60)"]
    with (
        pytest.raises(RuntimeError, match=r"not ready within 1 s(.|\n)*still loading"),
        server_process(
            argv, ready_url=f"http://{LOOPBACK}:{free_port()}/", log_path=tmp_path / "s.log", timeout_s=1
        ),
    ):
        pass
