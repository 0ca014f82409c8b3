"""The engine choice: the gate's verdicts, the timing and the cache, with fake engines (no timing: each
fake says how fast it is), then real engines on a tiny generated model."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from inference import autoselect
from inference.autoselect import (
    CHOICE_FILENAME,
    ChoiceCache,
    Combo,
    GateRefusedError,
    SelectedEngine,
    cache_key,
    select_engine,
)
from inference.engines.options import OnnxRuntimeOptions, OpenVinoOptions
from inference.errors import BackendUnavailableError, InferenceError, ModelLoadError
from inference.gate import GateRecord, GateResult, Machine, current_machine, file_sha256
from tests.test_engines import make_spec, save_model


class FakeEngine:
    def __init__(self, backend: str, precision: str, ms: float, fail: bool) -> None:
        self.backend, self.precision, self.ms, self.fail = backend, precision, ms, fail
        self.provider = f"fake {backend}"
        self.max_batch_size, self.max_concurrency, self.on_gpu = 4, 2, False
        self.loaded = self.closed = False

    def load(self) -> None:
        if self.fail:
            raise ModelLoadError(f"{self.backend} fell over")
        self.loaded = True

    def warmup(self, batch_sizes: tuple[int, ...] = (1,)) -> None:
        return None

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        return {"out": batch}

    def close(self) -> None:
        self.closed = True


class FakeSource:
    """backend -> precision -> ms per image; a backend mapped to None is not installed here."""

    def __init__(self, table: dict[str, dict[str, float] | None], failing: set[Combo] | None = None) -> None:
        self.table = table
        self.failing = failing or set()
        self.created: list[FakeEngine] = []

    def precisions(self, backend: str) -> tuple[str, ...]:
        found = self.table.get(backend)
        if found is None:
            raise BackendUnavailableError(f"{backend} is not installed")
        return tuple(found)

    def create(self, backend: str, precision: str) -> FakeEngine:
        table = self.table[backend]
        assert table is not None
        engine = FakeEngine(backend, precision, table[precision], Combo(backend, precision) in self.failing)
        self.created.append(engine)
        return engine

    def combos(self) -> set[str]:
        return {f"{e.backend}/{e.precision}" for e in self.created}


def fake_timer(engine: Any) -> float:
    return float(engine.ms)


CPU_TABLE: dict[str, dict[str, float] | None] = {
    "tensorrt": None,
    "openvino": {"fp32": 17.8, "bf16": 5.1, "int8": 4.0},
    "onnxruntime": {"fp32": 17.0, "int8": 9.0},
}


def gate(*results: tuple[str, str, float]) -> GateRecord:
    threshold = 0.9
    return GateRecord(
        machine=Machine(cpu="test CPU", flags=("amx_bf16",)),
        threshold=threshold,
        onnx_sha256="0" * 64,
        results=tuple(
            GateResult(backend=b, precision=p, map=m, recall50=m, passed=m >= threshold)
            for b, p, m in results
        ),
    )


MEASURED = gate(
    ("onnxruntime", "fp32", 1.0),
    ("openvino", "fp32", 0.99),
    ("openvino", "bf16", 0.95),
    ("openvino", "int8", 0.71),  # the fastest, and under the threshold
    ("onnxruntime", "int8", 0.92),
)


def test_without_a_gate_only_fp32_is_eligible(caplog: pytest.LogCaptureFixture) -> None:
    source = FakeSource(CPU_TABLE)
    with caplog.at_level(logging.INFO, logger="rtdetect.inference"):
        selection, engine = select_engine(source, timer=fake_timer)
    assert (selection.backend, selection.precision, selection.how) == ("onnxruntime", "fp32", "measured")
    assert source.combos() == {"onnxruntime/fp32", "openvino/fp32"}  # nothing else was even loaded
    assert selection.figures_ms == {"onnxruntime/fp32": 17.0, "openvino/fp32": 17.8}
    assert selection.gate_score is None
    # The winner comes back loaded, the loser is closed.
    assert isinstance(engine, FakeEngine) and engine.loaded and not engine.closed
    assert all(e.closed for e in source.created if e is not engine)
    text = caplog.text
    assert "run `python -m engine_build precision`" in text
    assert "tensorrt is not available here" in text
    assert "timing 2 candidates" in text and "chose onnxruntime/fp32" in text


def test_the_fastest_gate_passing_combination_wins(caplog: pytest.LogCaptureFixture) -> None:
    source = FakeSource(CPU_TABLE)
    with caplog.at_level(logging.INFO, logger="rtdetect.inference"):
        selection, _ = select_engine(source, gate=MEASURED, timer=fake_timer)
    assert (selection.backend, selection.precision) == ("openvino", "bf16")
    assert selection.gate_score == 0.95
    assert "openvino/int8" not in source.combos()  # refused: never loaded, never timed
    refusals = [r.getMessage() for r in caplog.records if "never serving" in r.getMessage()]
    assert len(refusals) == 1 and "openvino/int8 (mAP 0.710)" in refusals[0]
    chosen = next(r.getMessage() for r in caplog.records if "chose" in r.getMessage())
    assert "openvino/bf16 (5.1 ms per image at batch 1" in chosen and "onnxruntime/fp32 17.0" in chosen


def test_explicit_choices() -> None:
    source = FakeSource(CPU_TABLE)
    # Both given: no timing at all.
    selection, engine = select_engine(source, backend="onnxruntime", precision="int8", gate=MEASURED)
    assert (selection.how, engine, source.created) == ("explicit", None, [])
    assert selection.gate_score == 0.92
    # An explicit choice under the gate's threshold is refused, with the figures.
    with pytest.raises(GateRefusedError, match=r"openvino/int8 is under .* \(mAP 0\.710 < 0\.90"):
        select_engine(source, backend="openvino", precision="int8", gate=MEASURED)
    # A precision the backend cannot run here says what it can.
    with pytest.raises(BackendUnavailableError, match="onnxruntime: fp32, int8"):
        select_engine(source, backend="onnxruntime", precision="bf16", gate=MEASURED)
    # An unavailable backend chosen explicitly is an error, not skipped.
    with pytest.raises(BackendUnavailableError, match="tensorrt is not installed"):
        select_engine(source, backend="tensorrt")
    # A backend with precision=auto: its own precisions only, the gate still applies.
    selection, _ = select_engine(source, backend="openvino", gate=MEASURED, timer=fake_timer)
    assert (selection.backend, selection.precision) == ("openvino", "bf16")
    # A precision with backend=auto: every backend that runs it.
    source = FakeSource(CPU_TABLE)
    selection, _ = select_engine(source, precision="int8", gate=MEASURED, timer=fake_timer)
    assert (selection.backend, selection.precision) == ("onnxruntime", "int8")
    assert source.created == [] and selection.how == "only candidate"  # nothing to time


def test_unmeasured_reduced_precision_only_when_asked_for(caplog: pytest.LogCaptureFixture) -> None:
    # A GPU host with one fp16 TensorRT engine and no gate record: an explicit backend still serves it.
    source = FakeSource({"tensorrt": {"fp16": 1.0}, "openvino": None, "onnxruntime": {"fp32": 9.0}})
    with caplog.at_level(logging.WARNING, logger="rtdetect.inference"):
        selection, _ = select_engine(source, backend="tensorrt")
    assert (selection.backend, selection.precision) == ("tensorrt", "fp16")
    assert "not measured by the accuracy gate" in caplog.text
    # The automatic choice does not: fp32 only.
    selection, _ = select_engine(source, timer=fake_timer)
    assert (selection.backend, selection.precision, selection.how) == (
        "onnxruntime",
        "fp32",
        "only candidate",
    )
    # With a gate that refuses everything but fp32's absence, nothing is left.
    with pytest.raises(GateRefusedError, match="nothing eligible"):
        select_engine(
            FakeSource({"tensorrt": {"int8": 1.0}}),
            backend="tensorrt",
            gate=gate(("tensorrt", "int8", 0.5)),
        )


def test_a_candidate_that_cannot_load_is_skipped() -> None:
    source = FakeSource(CPU_TABLE, failing={Combo("openvino", "bf16")})
    selection, _ = select_engine(source, gate=MEASURED, timer=fake_timer)
    assert (selection.backend, selection.precision) == ("onnxruntime", "int8")
    assert "openvino/bf16" not in selection.figures_ms
    broken = FakeSource(
        {"onnxruntime": {"fp32": 1.0, "int8": 1.0}},
        failing={Combo("onnxruntime", "fp32"), Combo("onnxruntime", "int8")},
    )
    with pytest.raises(BackendUnavailableError, match="could be loaded"):
        select_engine(
            broken, backend="onnxruntime", gate=gate(("onnxruntime", "int8", 0.95)), timer=fake_timer
        )
    assert all(e.closed for e in broken.created)


def test_the_choice_is_cached_by_key(tmp_path: Path) -> None:
    cache = ChoiceCache(tmp_path / CHOICE_FILENAME)
    key: dict[str, Any] = {"machine": "A", "model": "sha-1"}

    def run(source: FakeSource, record: GateRecord = MEASURED) -> Any:
        return select_engine(
            source,
            gate=record,
            cache=cache,
            key=lambda combos: {**key, "c": sorted(map(str, combos))},
            timer=fake_timer,
        )[0]

    first = FakeSource(CPU_TABLE)
    assert run(first).how == "measured" and first.created
    again = FakeSource(CPU_TABLE)
    hit = run(again)
    assert (hit.how, hit.backend, hit.precision, again.created) == ("cached", "openvino", "bf16", [])
    assert hit.figures_ms == run(FakeSource(CPU_TABLE)).figures_ms
    # Another machine or model (any key change): timed again, and both entries kept.
    key["model"] = "sha-2"
    other = FakeSource({**CPU_TABLE, "onnxruntime": {"fp32": 1.0}})
    changed = run(other)
    assert changed.how == "measured" and (changed.backend, changed.precision) == ("onnxruntime", "fp32")
    assert len(json.loads(cache.path.read_text())["entries"]) == 2
    # A gate that now refuses the cached choice changes the candidates, so the key: never served from cache.
    key["model"] = "sha-1"
    stricter = gate(("openvino", "bf16", 0.5), ("onnxruntime", "int8", 0.95))
    assert run(FakeSource(CPU_TABLE), stricter).precision != "bf16"
    # An unreadable cache is ignored, not fatal.
    cache.path.write_text("{not json")
    assert run(FakeSource(CPU_TABLE)).how == "measured"


def test_servers_starting_together_time_once(tmp_path: Path) -> None:
    # The detect API and the media server start at the same moment: one times, the other waits for the
    # lock and reads its choice (without the lock both would find no entry and time side by side).
    cache = ChoiceCache(tmp_path / CHOICE_FILENAME)
    inside = threading.Event()

    def slow_timer(engine: Any) -> float:
        inside.set()
        time.sleep(0.02)  # long enough for the other thread to reach the cache
        return float(engine.ms)

    # Each thread's own answer: the order the two threads finish in is not part of the claim.
    results: dict[str, str] = {}

    def start(name: str) -> None:
        selection, _ = select_engine(
            FakeSource(CPU_TABLE), gate=MEASURED, cache=cache, key=lambda combos: {"k": 1}, timer=slow_timer
        )
        results[name] = selection.how

    first = threading.Thread(target=start, args=("first",))
    first.start()
    assert inside.wait(10)
    second = threading.Thread(target=start, args=("second",))
    second.start()
    first.join(30)
    second.join(30)
    assert results == {"first": "measured", "second": "cached"}


def test_cache_key_follows_machine_runtimes_model_and_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = make_spec()
    (tmp_path / "model.onnx").write_bytes(b"model one")
    combos = [Combo("onnxruntime", "fp32"), Combo("openvino", "fp32")]
    options = {"onnxruntime": OnnxRuntimeOptions(), "openvino": OpenVinoOptions()}

    def digest(**changes: Any) -> str:
        return ChoiceCache.digest(cache_key(tmp_path, spec, combos, {**options, **changes}))

    base = digest()
    assert digest() == base  # stable
    assert digest(openvino=OpenVinoOptions(threads=1)) != base
    (tmp_path / "model.int8.onnx").write_bytes(b"int8")  # a new quantised model
    with_int8 = digest()
    assert with_int8 != base
    (tmp_path / "model.onnx").write_bytes(b"model two")
    assert digest() != with_int8
    current = digest()
    monkeypatch.setattr(autoselect, "runtime_versions", lambda: {"openvino": "2099.1"})
    assert digest() != current
    monkeypatch.setattr(
        autoselect, "current_machine", lambda: Machine(cpu="another CPU", flags=("amx_int8",))
    )
    assert digest() != current


# --- real engines, a tiny model ------------------------------------------------------------------------------


def test_auto_picks_a_real_engine_here_and_caches_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spec = make_spec()
    save_model(tmp_path, spec)
    options = {"onnxruntime": OnnxRuntimeOptions(), "openvino": OpenVinoOptions()}

    def start(**kwargs: Any) -> SelectedEngine:
        engine = SelectedEngine(tmp_path, spec, options=options, time_per_candidate_s=0.06, **kwargs)
        engine.load()
        return engine

    with caplog.at_level(logging.INFO, logger="rtdetect.inference"):
        first = start()
    assert first.selection is not None and first.selection.how == "measured"
    assert (first.backend, first.precision) in {("onnxruntime", "fp32"), ("openvino", "fp32")}
    assert set(first.selection.figures_ms) == {"onnxruntime/fp32", "openvino/fp32"}
    assert first.provider != "not loaded" and first.max_concurrency >= 1
    x = np.zeros((2, 3, 16, 16), np.float32)
    assert first.infer(x)["first"].shape == (2, 4)
    first.close()
    with pytest.raises(InferenceError):
        first.infer(x)
    assert "chose" in caplog.text
    stored = json.loads((tmp_path / CHOICE_FILENAME).read_text())["entries"]
    (entry,) = stored.values()
    assert entry["backend"] == first.backend and entry["key"]["model"]["model.onnx"]

    second = start()
    assert second.selection is not None and second.selection.how == "cached"
    assert (second.backend, second.precision) == (first.backend, first.precision)
    second.close()

    # A change in what the timing depends on (here an option of a candidate) times again.
    options["openvino"] = OpenVinoOptions(threads=1)
    third = start()
    assert third.selection is not None and third.selection.how == "measured"
    assert len(json.loads((tmp_path / CHOICE_FILENAME).read_text())["entries"]) == 2
    third.close()

    # Explicit settings skip the timing; the gate file is read (none here: not measured).
    explicit = start(backend="openvino", precision="fp32")
    assert explicit.selection is not None and explicit.selection.how == "explicit"
    assert (explicit.backend, explicit.precision, explicit.gate_score) == ("openvino", "fp32", None)
    explicit.close()

    # gate.json, for this very model.onnx: what it refuses is never served, explicitly or not.
    record = GateRecord(
        machine=current_machine(),
        threshold=0.9,
        onnx_sha256=file_sha256(tmp_path / "model.onnx"),
        results=(
            GateResult(backend="openvino", precision="fp32", map=0.5, recall50=0.5, passed=False),
            GateResult(backend="onnxruntime", precision="fp32", map=1.0, recall50=1.0, passed=True),
        ),
    )
    # Measured on another machine (a model directory copied over): not this machine's verdicts, ignored.
    record.model_copy(update={"machine": Machine(cpu="another CPU", flags=("avx512_vnni",))}).save(tmp_path)
    assert start(backend="openvino", precision="fp32").gate_score is None
    record.save(tmp_path)
    with pytest.raises(GateRefusedError, match="openvino/fp32 is under"):
        start(backend="openvino", precision="fp32")
    only = start()
    assert only.selection is not None and only.selection.how == "only candidate"
    assert (only.backend, only.precision, only.gate_score) == ("onnxruntime", "fp32", 1.0)
    only.close()
    # A gate measured on another model.onnx is ignored.
    save_model(tmp_path, spec, seed=7)  # other weights, another hash
    assert start(backend="openvino", precision="fp32").gate_score is None
