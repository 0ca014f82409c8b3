"""Shared fixtures: the real default model and real photos shipped inside packages."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from inference.paths import default_model_dir
from inference.spec import SPEC_FILENAME

# Tests never listen on a fixed port: the detect API's gRPC port (default 50051) is off in every app and
# server a test starts, unless the test sets RTDETECT_GRPC_PORT / grpc_port to a free port itself.
os.environ.setdefault("RTDETECT_GRPC_PORT", "0")
# Tests hold the served detections to the FP32 model's. backend=auto (the servers' default) picks the fastest
# engine by timing it, which on a loaded machine can change from run to run, and INT8 finds slightly other
# boxes: every server a test starts runs ONNX Runtime FP32 unless the test asks for the automatic choice.
for _prefix in ("RTDETECT_", "RTDETECT_MEDIA_"):
    os.environ.setdefault(f"{_prefix}BACKEND", "onnxruntime")
    os.environ.setdefault(f"{_prefix}PRECISION", "fp32")


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """The exported default model (`make test` runs `engine_build fetch` + `export` before pytest)."""
    path = Path(os.environ.get("RTDETECT_MODEL_DIR", default_model_dir()))
    if not (path / SPEC_FILENAME).is_file() or not (path / "model.onnx").is_file():
        pytest.fail(f"no exported model in {path}: run `make model` (python -m engine_build fetch && export)")
    return path


def _rgb_to_bgr(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image[:, :, ::-1])


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    """Real photos as HxWx3 uint8 BGR, the layout every rtdetect entry point takes."""
    from skimage import data

    return {
        "astronaut": _rgb_to_bgr(data.astronaut()),
        "coffee": _rgb_to_bgr(data.coffee()),
        "motorcycle": _rgb_to_bgr(data.stereo_motorcycle()[0]),
        "chelsea": _rgb_to_bgr(data.chelsea()),
    }
