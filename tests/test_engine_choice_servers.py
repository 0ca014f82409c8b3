"""Both servers with the default settings (backend=auto, precision=auto) on the real model: they choose an
engine at start-up, log it, and report backend, precision and gate score."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import httpx
import pytest

from detect_api.app import create_app
from detect_api.settings import Settings
from inference.autoselect import CHOICE_FILENAME
from inference.engines import PRECISIONS
from tests.detect_api_support import serve
from tests.media_support import loopback_settings, running_server


def _check(model: dict[str, object], model_dir: Path) -> None:
    assert model["backend"] in {"onnxruntime", "openvino"}  # what a CPU-only machine has
    assert model["precision"] in PRECISIONS
    score = model["gate_score"]
    assert score is None or isinstance(score, float)
    if model["precision"] != "fp32":  # a reduced precision is served only when the gate passed it
        assert isinstance(score, float) and score >= 0.9
    entries = json.loads((model_dir / CHOICE_FILENAME).read_text())["entries"]
    assert any(e["backend"] == model["backend"] for e in entries.values())


async def test_detect_api_chooses_and_reports(model_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(model_dir=model_dir, gpu_sample_interval_s=0, backend="auto", precision="auto")
    assert (settings.backend, settings.precision) == ("auto", "auto")
    with caplog.at_level(logging.INFO):
        async with serve(create_app(settings)) as client:
            model = (await client.get("/model")).json()
    _check(model, model_dir)
    # The start-up log names what was chosen (timed now, or read from the cache).
    assert any(f"auto engine: {model['backend']}/{model['precision']}" in r.getMessage()
               or f"auto engine: chose {model['backend']}/{model['precision']}" in r.getMessage()
               for r in caplog.records)  # fmt: skip
    serving = next(r.getMessage() for r in caplog.records if "detect API serving model" in r.getMessage())
    assert f"with {model['backend']} {model['precision']} (accuracy gate mAP" in serving


async def test_media_server_chooses_and_reports(model_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        settings = loopback_settings(
            model_dir=model_dir, gpu_sample_interval_s=0, backend="auto", precision="auto"
        )
        async with running_server(settings) as server, httpx.AsyncClient() as client:
            ready = (await client.get(f"{server.url}/readyz")).json()
    model = ready["model"]
    _check(model, model_dir)
    line = next(r.getMessage() for r in caplog.records if "media server ready" in r.getMessage())
    assert f"backend {model['backend']}, precision {model['precision']} (accuracy gate mAP" in line
