"""The accuracy gate: its record (inference/gate.py), its scoring, and a real run on real photos."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from engine_build.scoring import ImageDetections, score
from inference.gate import GateRecord, GateResult, Machine, cpu_identity, load_gate, normalize_precision


def _record(sha: str = "abc") -> GateRecord:
    return GateRecord(
        machine=Machine(cpu="Test CPU", flags=("avx512_vnni",), gpu=None),
        threshold=0.9,
        onnx_sha256=sha,
        results=(
            GateResult(backend="onnxruntime", precision="fp32", map=1.0, recall50=1.0, passed=True),
            GateResult(backend="onnxruntime", precision="int8", map=0.93, recall50=0.97, passed=True),
            GateResult(backend="openvino", precision="f16", map=0.5, recall50=0.6, passed=False),
        ),
    )


def test_gate_round_trip_and_lookup(tmp_path: Path) -> None:
    _record().save(tmp_path)
    gate = load_gate(tmp_path)
    assert gate is not None
    assert gate.passed("onnxruntime", "int8") is True
    assert gate.score("onnxruntime", "int8") == 0.93
    # OpenVINO's spelling and the settings' spelling are the same precision.
    assert gate.passed("openvino", "fp16") is False
    assert gate.score("openvino", "F16") == 0.5
    assert gate.passed("openvino", "bf16") is None  # not measured
    assert gate.score("tensorrt", "int8") is None


def test_missing_unreadable_or_other_model_gate_is_none(tmp_path: Path) -> None:
    assert load_gate(tmp_path) is None
    (tmp_path / "gate.json").write_text("{not json")
    assert load_gate(tmp_path) is None
    _record("abc").save(tmp_path)
    assert load_gate(tmp_path, onnx_sha256="abc") is not None
    assert load_gate(tmp_path, onnx_sha256="other") is None


def test_normalize_precision() -> None:
    assert [normalize_precision(p) for p in ("F32", "fp32", "f16", "bf16", "int8")] == [
        "fp32", "fp32", "fp16", "bf16", "int8",
    ]  # fmt: skip


def test_cpu_identity_reads_model_and_relevant_flags(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Test\nflags\t\t: fpu avx2 amx_int8 avx512_vnni sse\n"
        "processor\t: 1\nmodel name\t: Intel(R) Xeon(R) Test\nflags\t\t: fpu avx2 amx_int8 avx512_vnni sse\n"
    )
    assert cpu_identity(info) == ("Intel(R) Xeon(R) Test", ("avx2", "avx512_vnni", "amx_int8"))
    assert cpu_identity(tmp_path / "missing") == ("unknown", ())


# --- scoring (engine_build/scoring.py) ---------------------------------------------------------------


def _image(boxes: list[list[float]], scores: list[float], classes: list[int]) -> ImageDetections:
    return ImageDetections(
        width=640, height=480,
        boxes=np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
        scores=np.asarray(scores, dtype=np.float64),
        classes=np.asarray(classes, dtype=np.int64),
    )  # fmt: skip


REF = [
    _image([[10, 10, 110, 210], [300, 50, 400, 150], [500, 300, 600, 420]], [0.9, 0.6, 0.4], [0, 2, 41]),
    _image([[50, 60, 250, 300]], [0.8], [15]),
]


def test_perfect_predictions_score_one() -> None:
    result = score(REF, REF)
    assert result.map == pytest.approx(1.0)
    assert result.recall50 == 1.0
    assert result.reference_boxes == 4 and result.images == 2


def test_low_score_extras_below_the_truth_cost_nothing() -> None:
    # Boxes under the GT threshold are not truth; as predictions they rank below every match.
    with_extra = [_image([*r.boxes.tolist(), [0, 0, 30, 30]], [*r.scores.tolist(), 0.1],
                         [*r.classes.tolist(), 3]) for r in REF]  # fmt: skip
    assert score(with_extra, with_extra).map == pytest.approx(1.0)


def test_a_shifted_box_lowers_map_but_not_recall50() -> None:
    shifted = [_image([[20, 20, 120, 220], [300, 50, 400, 150], [500, 300, 600, 420]], [0.9, 0.6, 0.4], [0, 2, 41]),
               REF[1]]  # fmt: skip
    result = score(REF, shifted)
    assert 0.5 < result.map < 1.0
    assert result.recall50 == 1.0  # IoU of the shifted box is still about 0.75


def test_missing_and_wrong_class_detections_lower_recall() -> None:
    missing = [_image([[10, 10, 110, 210]], [0.9], [0]), _image([[50, 60, 250, 300]], [0.8], [16])]
    result = score(REF, missing)
    assert result.recall50 == pytest.approx(1 / 4)
    assert result.map < 0.5


def test_slightly_lower_scores_still_match() -> None:
    # A reference box at 0.4 that the candidate scores 0.25 is still found (predictions go down to 0.05).
    lower = [_image(r.boxes.tolist(), [s * 0.6 for s in r.scores], r.classes.tolist()) for r in REF]
    result = score(REF, lower)
    assert result.recall50 == 1.0 and result.map == pytest.approx(1.0)


def test_nothing_predicted_scores_zero_and_no_truth_is_an_error() -> None:
    empty = [_image([], [], []), _image([], [], [])]
    assert score(REF, empty).map == 0.0 and score(REF, empty).recall50 == 0.0
    with pytest.raises(ValueError, match="nothing to score"):
        score(empty, REF)
    with pytest.raises(ValueError):
        score(REF, REF[:1])


# --- the real gate on real photos --------------------------------------------------------------------


def test_real_gate_on_a_few_photos(model_dir: Path, tmp_path: Path) -> None:
    """ONNX Runtime FP32 against itself and INT8 (quantised here on a few photos) on real evaluation photos."""
    from engine_build.evalset import calibration_photos, evaluation_photos
    from engine_build.precision import run_gate
    from engine_build.quantize import quantize
    from inference.gate import file_sha256

    shutil.copy(model_dir / "model.json", tmp_path / "model.json")
    (tmp_path / "model.onnx").symlink_to(model_dir / "model.onnx")
    quantize(tmp_path, photos=calibration_photos()[:4], method="minmax")
    photos = [p for p in evaluation_photos() if p.name.startswith(("skimage/", "vtest/"))][:8]
    record, measured = run_gate(
        tmp_path, photos=photos, combos=[("onnxruntime", "fp32"), ("onnxruntime", "int8")], threshold=0.5
    )
    assert [(m.backend, m.precision) for m in measured] == [("onnxruntime", "fp32"), ("onnxruntime", "int8")]
    assert measured[0].score.map == pytest.approx(1.0) and measured[0].score.recall50 == 1.0
    assert measured[0].score.reference_boxes > 5  # people in the video frames, the astronaut, ...
    int8 = measured[1].score
    assert 0.3 < int8.map <= 1.0 and int8.recall50 > 0.8  # close to FP32, not identical
    gate = load_gate(tmp_path, onnx_sha256=file_sha256(tmp_path / "model.onnx"))
    assert gate is not None and gate == record
    assert gate.passed("onnxruntime", "fp32") is True and gate.score("onnxruntime", "fp32") == 1.0
    assert gate.passed("onnxruntime", "int8") is (int8.map >= 0.5)
    assert gate.passed("openvino", "bf16") is None
    assert gate.threshold == 0.5 and gate.machine.cpu


def test_gate_skips_a_failing_combination_and_needs_its_reference(model_dir: Path, tmp_path: Path) -> None:
    from engine_build.evalset import evaluation_photos
    from engine_build.precision import run_gate

    shutil.copy(model_dir / "model.json", tmp_path / "model.json")
    (tmp_path / "model.onnx").symlink_to(model_dir / "model.onnx")
    photos = [p for p in evaluation_photos() if p.name.startswith("skimage/")][:3]
    # No model.int8.onnx here: that combination fails to load, is logged and left out (None = not measured).
    record, measured = run_gate(
        tmp_path, photos=photos, combos=[("onnxruntime", "fp32"), ("onnxruntime", "int8")]
    )
    assert [m.precision for m in measured] == ["fp32"]
    assert record.passed("onnxruntime", "int8") is None
