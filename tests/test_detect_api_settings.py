"""detect_api.Settings: read from RTDETECT_* only when instantiated, validated, turned into engine options."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from detect_api.settings import Settings
from inference.engines.options import OnnxRuntimeOptions, OpenVinoOptions, TensorRTOptions
from inference.paths import default_model_dir
from tests.web_servers import ROOT


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RTDETECT_MODEL_DIR", "RTDETECT_BACKEND", "RTDETECT_PRECISION"):  # conftest pins the engine
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert settings.model_dir == default_model_dir()
    # The engine: chosen at start-up (fastest under the accuracy gate), unless set.
    assert (settings.backend, settings.precision) == ("auto", "auto")
    assert (settings.port, settings.host) == (8000, "127.0.0.1")
    # Batch size and batches in flight: 0 = chosen by the engine's device once it is loaded.
    assert (settings.max_batch_size, settings.inference_workers) == (0, 0)
    assert (settings.max_delay_ms, settings.max_queue) == (2.0, 256)
    assert settings.detector_kwargs() == {
        "max_batch_size": None,
        "max_delay_ms": 2.0,
        "max_queue": 256,
        "workers": None,
    }
    assert settings.max_upload_bytes == 20 * 1024 * 1024
    # onnxruntime's busy-waiting threads are off by default: the cores go to decoding and HTTP.
    assert settings.backend_options("onnxruntime") == OnnxRuntimeOptions(allow_spinning=False)
    assert settings.backend_options("openvino") == OpenVinoOptions()
    assert settings.default_params().max_detections <= settings.max_detections


def test_values_come_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RTDETECT_MODEL_DIR", str(tmp_path))
    monkeypatch.setenv("RTDETECT_PROVIDERS", "CUDAExecutionProvider, CPUExecutionProvider")
    monkeypatch.setenv("RTDETECT_INTRA_OP_THREADS", "2")
    monkeypatch.setenv("RTDETECT_MAX_BATCH_SIZE", "4")
    monkeypatch.setenv("RTDETECT_LOG_LEVEL", "debug")
    monkeypatch.setenv("RTDETECT_MEDIA_PORT", "9999")  # the media server's variables are not ours
    settings = Settings()
    assert settings.model_dir == tmp_path
    # The old flat names still reach the onnxruntime options.
    assert settings.max_batch_size == 4 and settings.log_level == "DEBUG" and settings.port == 8000
    assert settings.detector_kwargs()["max_batch_size"] == 4
    assert settings.backend_options("onnxruntime") == OnnxRuntimeOptions(
        providers=["CUDAExecutionProvider", "CPUExecutionProvider"], intra_op_threads=2, allow_spinning=False
    )
    monkeypatch.setenv("RTDETECT_PROVIDERS", '["CPUExecutionProvider"]')
    assert Settings().onnxruntime.providers == ["CPUExecutionProvider"]
    # The nested names: per backend, and they win over the old flat ones.
    monkeypatch.setenv("RTDETECT_ONNXRUNTIME__PROVIDERS", "CUDAExecutionProvider")
    monkeypatch.setenv("RTDETECT_OPENVINO__HINT", "throughput")
    monkeypatch.setenv("RTDETECT_OPENVINO__NUM_REQUESTS", "3")
    monkeypatch.setenv("RTDETECT_PRECISION", "int8")
    monkeypatch.setenv("RTDETECT_BACKEND", "onnxruntime")
    settings = Settings()
    assert settings.onnxruntime.providers == ["CUDAExecutionProvider"]
    assert settings.onnxruntime.intra_op_threads == 2
    assert settings.backend_options("openvino") == OpenVinoOptions(hint="throughput", num_requests=3)
    assert (settings.backend, settings.precision) == ("onnxruntime", "int8")


def test_other_backends_take_their_own_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTDETECT_BACKEND", "tensorrt")
    monkeypatch.setenv("RTDETECT_ENGINE_OPTIONS", '{"engine_file": "model.fp16.engine", "device_id": 1}')
    assert Settings().backend_options("tensorrt") == TensorRTOptions(
        engine_file="model.fp16.engine", device_id=1
    )


def test_unknown_backend_options_are_refused_naming_the_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTDETECT_OPENVINO__NUM_STREAMS", "2")
    with pytest.raises(ValidationError, match=r"openvino\.num_streams"):
        Settings()
    monkeypatch.delenv("RTDETECT_OPENVINO__NUM_STREAMS")
    monkeypatch.setenv("RTDETECT_BACKEND", "tensorrt")
    monkeypatch.setenv("RTDETECT_ENGINE_OPTIONS", '{"providers": "CPUExecutionProvider"}')
    with pytest.raises(
        ValidationError, match=r"unknown option\(s\) \['providers'\] for the tensorrt backend"
    ):
        Settings()
    monkeypatch.setenv("RTDETECT_BACKEND", "auto")  # engine_options needs an explicit backend
    monkeypatch.setenv("RTDETECT_ENGINE_OPTIONS", '{"hint": "throughput"}')
    with pytest.raises(ValidationError, match="explicit backend"):
        Settings()


@pytest.mark.parametrize(
    "env",
    [
        {"RTDETECT_BACKEND": "tensorrt", "RTDETECT_PROVIDERS": "CPUExecutionProvider"},
        {"RTDETECT_DEFAULT_MAX_DETECTIONS": "500"},
        {"RTDETECT_SCORE_THRESHOLD": "1.5"},
        {"RTDETECT_MAX_BATCH_SIZE": "-1"},
        {"RTDETECT_INFERENCE_WORKERS": "-2"},
        {"RTDETECT_LOG_LEVEL": "chatty"},
        {"RTDETECT_BACKEND": "tensorflow"},
        {"RTDETECT_PRECISION": "int4"},
    ],
)
def test_invalid_settings_are_refused(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for key, val in env.items():
        monkeypatch.setenv(key, val)
    with pytest.raises(ValidationError):
        Settings()


@pytest.mark.parametrize(
    ("module", "variable"),
    [("detect_api", "RTDETECT_MODEL_DIR"), ("media_server", "RTDETECT_MEDIA_MODEL_DIR")],
)
def test_a_server_without_its_model_exits_with_one_clear_line(
    module: str, variable: str, tmp_path: Path
) -> None:
    # Never fetched: the server says what to run and exits 1 before it listens, no traceback.
    env = {
        **os.environ,
        variable: str(tmp_path / "not-fetched"),
        "RTDETECT_PORT": "1",
        "RTDETECT_MEDIA_PORT": "1",
    }
    done = subprocess.run(
        [sys.executable, "-m", module], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert done.returncode == 1, done.stderr
    assert "cannot start: no model spec at" in done.stderr and "engine_build fetch" in done.stderr
    assert "Traceback" not in done.stderr
