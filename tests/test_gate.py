"""The accuracy gate: its record (inference/gate.py), its scoring, and a real run on real photos."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine_build.scoring import ImageDetections, score
from inference.autoselect import GateRefusedError, RegistrySource, SelectedEngine
from inference.gate import (
    GateRecord,
    GateResult,
    Machine,
    cpu_identity,
    current_machine,
    file_sha256,
    load_gate,
    normalize_precision,
)
from inference.spec import ModelSpec


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


def _model_copy(model_dir: Path, tmp_path: Path) -> None:
    shutil.copy(model_dir / "model.json", tmp_path / "model.json")
    (tmp_path / "model.onnx").symlink_to(model_dir / "model.onnx")


def _few_photos() -> list[Any]:
    from engine_build.evalset import evaluation_photos

    return [p for p in evaluation_photos() if p.name.startswith(("skimage/", "vtest/"))][:8]


class _CountingSource(RegistrySource):
    """The registry, remembering every engine the choice creates."""

    created: list[str]

    def create(self, backend: str, precision: str) -> Any:
        self.created.append(f"{backend}/{precision}")
        return super().create(backend, precision)


def _serve(model_dir: Path, **kwargs: Any) -> tuple[SelectedEngine, list[str]]:
    spec = ModelSpec.load(model_dir)
    source = _CountingSource(model_dir, spec, {})
    source.created = []
    engine = SelectedEngine(model_dir, spec, source=source, time_per_candidate_s=0.06, **kwargs)
    engine.load()
    return engine, source.created


def test_real_gate_refuses_int8_above_its_score_and_serving_never_loads_it(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """ONNX Runtime FP32 against itself and INT8 (quantised here on a few photos, in the format this CPU
    needs) on real evaluation photos, with a threshold above what INT8 can keep: refused, and never served."""
    from engine_build.evalset import calibration_photos
    from engine_build.precision import run_gate
    from engine_build.quantize import quantize

    _model_copy(model_dir, tmp_path)
    quantize(tmp_path, photos=calibration_photos()[:4], method="minmax")
    record, measured = run_gate(
        tmp_path,
        photos=_few_photos(),
        combos=[("onnxruntime", "fp32"), ("onnxruntime", "int8")],
        threshold=0.995,
    )
    assert [(m.backend, m.precision) for m in measured] == [("onnxruntime", "fp32"), ("onnxruntime", "int8")]
    assert measured[0].score.map == pytest.approx(1.0) and measured[0].score.recall50 == 1.0
    assert measured[0].score.reference_boxes > 5  # people in the video frames, the astronaut, ...
    int8 = measured[1].score
    assert 0.3 < int8.map < 0.995 and int8.recall50 > 0.8  # close to FP32, not identical
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| onnxruntime |")]
    assert [line.split("|")[5].strip() for line in table] == ["pass", "FAIL"], table
    gate = load_gate(tmp_path, onnx_sha256=file_sha256(tmp_path / "model.onnx"), machine=current_machine())
    assert gate is not None and gate == record
    assert gate.passed("onnxruntime", "fp32") is True and gate.passed("onnxruntime", "int8") is False
    assert gate.int8_sha256 == file_sha256(tmp_path / "model.int8.onnx")
    assert gate.threshold == 0.995 and gate.machine == current_machine()

    engine, created = _serve(tmp_path, backend="onnxruntime")  # auto precision: int8 is a candidate
    assert (engine.backend, engine.precision) == ("onnxruntime", "fp32")
    assert "onnxruntime/int8" not in created, created
    engine.close()
    with pytest.raises(GateRefusedError, match="onnxruntime/int8 is under the accuracy gate"):
        _serve(tmp_path, backend="onnxruntime", precision="int8")


class _ShiftedEngine:
    """A real engine fed the image moved right by 32 px: every box lands 32 px off (a broken backend)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        return dict(self.inner.infer(np.roll(batch, 32, axis=3)))


def test_real_gate_refuses_an_engine_that_shifts_boxes(model_dir: Path, tmp_path: Path) -> None:
    from engine_build.precision import DEFAULT_THRESHOLD, run_gate
    from inference.engines import create_engine

    _model_copy(model_dir, tmp_path)
    spec = ModelSpec.load(tmp_path)

    def make(backend: str, precision: str) -> Any:
        engine = create_engine(backend, tmp_path, spec, precision=precision)
        return _ShiftedEngine(engine) if backend == "openvino" else engine

    record, measured = run_gate(
        tmp_path,
        photos=_few_photos(),
        combos=[("onnxruntime", "fp32"), ("openvino", "fp32")],
        make_engine=make,
    )
    shifted = measured[1]
    assert shifted.score.map < DEFAULT_THRESHOLD and not shifted.passed
    assert record.passed("openvino", "fp32") is False
    engine, created = _serve(tmp_path)  # backend=auto: openvino fp32 would be a candidate
    assert (engine.backend, engine.precision) == ("onnxruntime", "fp32") and "openvino/fp32" not in created
    engine.close()


def test_a_gate_from_another_machine_or_int8_file_is_not_this_ones(tmp_path: Path) -> None:
    here = current_machine()
    record = _record().model_copy(update={"machine": here, "int8_sha256": "int8-a"})
    record.save(tmp_path)
    assert load_gate(tmp_path, machine=here) == record
    other = Machine(
        cpu=here.cpu, flags=(*here.flags, "avx512_vnni") if "avx512_vnni" not in here.flags else ()
    )
    assert load_gate(tmp_path, machine=other) is None  # same model name, another CPU class: not measured
    # Another INT8 file (re-quantised): its int8 verdicts go, the others stay.
    reloaded = load_gate(tmp_path, machine=here, int8_sha256="int8-b")
    assert reloaded is not None and reloaded.passed("onnxruntime", "int8") is None
    assert reloaded.passed("onnxruntime", "fp32") is True


def test_gate_is_current_only_for_these_files_on_this_machine(model_dir: Path, tmp_path: Path) -> None:
    from engine_build.precision import gate_is_current, run_gate

    _model_copy(model_dir, tmp_path)
    assert not gate_is_current(tmp_path)  # no gate yet
    photos = [p for p in _few_photos() if p.name.startswith("skimage/")][:2]
    record, _ = run_gate(tmp_path, photos=photos, combos=[("onnxruntime", "fp32")])
    assert gate_is_current(tmp_path) and not gate_is_current(tmp_path, threshold=0.5)
    # What `make model` runs: nothing to do while current (the file is not rewritten).
    from engine_build.__main__ import main

    mtime = (tmp_path / "gate.json").stat().st_mtime_ns
    assert main(["precision", "--model-dir", str(tmp_path), "--if-stale"]) == 0
    assert (tmp_path / "gate.json").stat().st_mtime_ns == mtime
    # Copied from a machine of another class: make model measures again here.
    record.model_copy(update={"machine": Machine(cpu="elsewhere", flags=("amx_int8",))}).save(tmp_path)
    assert not gate_is_current(tmp_path)
    record.save(tmp_path)
    (tmp_path / "model.int8.onnx").write_bytes(b"a new INT8 file")
    assert not gate_is_current(tmp_path)


def test_gate_skips_a_failing_combination_and_needs_its_reference(model_dir: Path, tmp_path: Path) -> None:
    from engine_build.evalset import evaluation_photos
    from engine_build.precision import run_gate

    _model_copy(model_dir, tmp_path)
    photos = [p for p in evaluation_photos() if p.name.startswith("skimage/")][:3]
    # No model.int8.onnx here: that combination fails to load, is logged and left out (None = not measured).
    record, measured = run_gate(
        tmp_path, photos=photos, combos=[("onnxruntime", "fp32"), ("onnxruntime", "int8")]
    )
    assert [m.precision for m in measured] == ["fp32"]
    assert record.passed("onnxruntime", "int8") is None
