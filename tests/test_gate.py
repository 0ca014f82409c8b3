"""The accuracy gate's record (inference/gate.py)."""

from __future__ import annotations

from pathlib import Path

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
