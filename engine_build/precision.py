"""The accuracy gate: every engine x precision available here, scored against FP32 on the evaluation photos.

`python -m engine_build precision` runs ONNX Runtime FP32 (the reference), then each other combination
the machine offers (ONNX Runtime INT8 once `quantize` has run, OpenVINO's precisions, TensorRT's on a GPU),
scores it with engine_build/scoring.py and writes `<model_dir>/gate.json` (inference/gate.py) with the
machine it was measured on. Serving never runs a combination recorded as failed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from engine_build.evalset import Photo, evaluation_photos, holdout_photos
from engine_build.scoring import GT_THRESHOLD, PRED_THRESHOLD, ImageDetections, Score, score
from inference.decoders import create_decoder
from inference.engines import BACKENDS, Engine, create_engine, engine_precisions
from inference.engines.options import int8_onnx_file
from inference.errors import RtdetectError
from inference.gate import (
    GateRecord,
    GateResult,
    current_machine,
    describe,
    file_sha256,
    load_gate,
    normalize_precision,
)
from inference.preprocess import preprocess
from inference.spec import ModelSpec
from inference.types import DetectParams

log = logging.getLogger("rtdetect.engine_build")

DEFAULT_THRESHOLD = 0.90
REFERENCE = ("onnxruntime", "fp32")
GATED_BACKENDS = ("onnxruntime", "openvino", "tensorrt")
CHUNK = 8  # images per engine call: bounded memory, and the batch path every backend serves


@dataclass(frozen=True, slots=True)
class Measured:
    backend: str
    precision: str
    score: Score
    ms_per_image: float  # wall time of the evaluation run, inference + decode: a by-product, not a benchmark
    passed: bool
    holdout: Score | None = None  # on photos outside calibration and evaluation: a second opinion, not gated


def available_combinations(model_dir: Path, spec: ModelSpec) -> list[tuple[str, str]]:
    """(backend, precision) pairs this machine can run for this model, the reference first."""
    combos: list[tuple[str, str]] = []
    for backend in GATED_BACKENDS:
        if backend not in BACKENDS:
            log.info("gate: no %s backend in this build: skipped", backend)
            continue
        try:
            precisions = engine_precisions(backend, model_dir, spec)
        except (RtdetectError, ImportError, OSError) as e:
            log.info("gate: %s is not available here, skipped: %s", backend, e)
            continue
        combos.extend((backend, normalize_precision(p)) for p in precisions)
    if REFERENCE not in combos:
        raise RtdetectError("the gate needs ONNX Runtime FP32 as its reference: install rtdetect[cpu]")
    combos.remove(REFERENCE)
    return [REFERENCE, *combos]


def detect_all(
    engine: Engine, spec: ModelSpec, photos: Sequence[Photo], params: DetectParams
) -> list[ImageDetections]:
    """Detections for every photo through serving's own pre-processing and decoder."""
    decoder = create_decoder(spec)
    out: list[ImageDetections] = []
    step = max(1, min(CHUNK, engine.max_batch_size))
    for start in range(0, len(photos), step):
        chunk = photos[start : start + step]
        batch, transforms = preprocess([p.image for p in chunk], spec)
        decoded = decoder.decode(engine.infer(batch), transforms, params)
        for photo, detections in zip(chunk, decoded, strict=True):
            h, w = photo.image.shape[:2]
            out.append(ImageDetections.from_detections(w, h, detections))
    return out


EngineFactory = Callable[[str, str], Engine]


def _default_factory(model_dir: Path, spec: ModelSpec) -> EngineFactory:
    def make(backend: str, precision: str) -> Engine:
        return create_engine(backend, model_dir, spec, precision=precision)

    return make


def measure(
    combos: Sequence[tuple[str, str]],
    make_engine: EngineFactory,
    spec: ModelSpec,
    photos: Sequence[Photo],
    *,
    threshold: float = DEFAULT_THRESHOLD,
    holdout: Sequence[Photo] = (),
) -> list[Measured]:
    """Run each combination over `photos` (and `holdout`) and score it against the first one (the reference)."""
    # Every box the scorer could use: the reference keeps those >= GT_THRESHOLD as truth.
    params = DetectParams(score_threshold=min(GT_THRESHOLD, PRED_THRESHOLD), max_detections=100)
    reference: list[ImageDetections] | None = None
    held_reference: list[ImageDetections] = []
    measured: list[Measured] = []
    for i, (backend, precision) in enumerate(combos, start=1):
        log.info("gate %d/%d: %s %s on %d photos", i, len(combos), backend, precision, len(photos))
        engine = make_engine(backend, precision)
        try:
            engine.load()
            engine.warmup((1,))
            t0 = time.perf_counter()
            detections = detect_all(engine, spec, photos, params)
            ms = (time.perf_counter() - t0) * 1e3 / max(1, len(photos))
            held = detect_all(engine, spec, holdout, params) if holdout else []
        except RtdetectError as e:
            if reference is None:
                raise
            log.warning("gate: %s %s failed, not recorded: %s", backend, precision, e)
            continue
        finally:
            engine.close()
        if reference is None:
            reference, held_reference = detections, held
        result = score(reference, detections)
        second = _score_if_any(held_reference, held)
        passed = result.map >= threshold
        log.info("gate: %s %s mAP %.3f, recall@0.5 %.3f: %s%s", backend, precision, result.map,
                 result.recall50, "passed" if passed else f"FAILED (< {threshold:.2f})",
                 f"; held-out photos: mAP {second.map:.3f}, recall@0.5 {second.recall50:.3f}" if second else "")  # fmt: skip
        measured.append(Measured(backend, precision, result, ms, passed, second))
    return measured


def _score_if_any(reference: list[ImageDetections], detections: list[ImageDetections]) -> Score | None:
    """The held-out score, or None without held-out photos or without a reference box among them."""
    if not reference:
        return None
    try:
        return score(reference, detections)
    except ValueError:  # no reference box at all: nothing to score
        return None


def format_table(measured: Sequence[Measured], threshold: float) -> str:
    lines = [
        f"| engine | precision | mAP@0.5:0.95 vs FP32 | recall@0.5 | gate (>= {threshold:.2f}) | ms/image (eval run) "
        "| held-out mAP | held-out recall@0.5 |",
        "|---|---|---:|---:|---|---:|---:|---:|",
    ]
    for m in measured:
        held = f"{m.holdout.map:.3f} | {m.holdout.recall50:.3f}" if m.holdout else "- | -"
        lines.append(
            f"| {m.backend} | {m.precision} | {m.score.map:.3f} | {m.score.recall50:.3f} | "
            f"{'pass' if m.passed else 'FAIL'} | {m.ms_per_image:.1f} | {held} |"
        )
    return "\n".join(lines)


def _int8_sha256(model_dir: Path, spec: ModelSpec) -> str | None:
    path = model_dir / int8_onnx_file(spec.onnx_file)
    return file_sha256(path) if path.is_file() else None


def gate_is_current(model_dir: Path, *, threshold: float = DEFAULT_THRESHOLD) -> bool:
    """True when gate.json scored these model files, on this machine, at this threshold: a model directory
    copied from another machine (or re-quantised) is gated again."""
    spec = ModelSpec.load(model_dir)
    record = load_gate(model_dir)
    if record is None:
        return False
    machine = current_machine()
    stale = {
        "machine": record.machine != machine,
        "model.onnx": record.onnx_sha256 != file_sha256(model_dir / spec.onnx_file),
        "INT8 model": record.int8_sha256 != _int8_sha256(model_dir, spec),
        "threshold": record.threshold != threshold,
    }
    changed = [what for what, differs in stale.items() if differs]
    if changed:
        log.info("accuracy gate: %s changed since it was measured: measuring again", ", ".join(changed))
    return not changed


def run_gate(
    model_dir: Path,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    photos: Sequence[Photo] | None = None,
    combos: Sequence[tuple[str, str]] | None = None,
    make_engine: EngineFactory | None = None,
    holdout: Sequence[Photo] | None = None,
) -> tuple[GateRecord, list[Measured]]:
    """Measure, write gate.json, print the table; returns the record and the figures.

    Held-out photos (by default those of `holdout_photos`, none when `photos` are given) are scored beside
    the evaluation photos as a second opinion: recorded, printed, never the verdict."""
    spec = ModelSpec.load(model_dir)
    if holdout is None:
        holdout = holdout_photos() if photos is None else []
    photos = list(photos) if photos is not None else evaluation_photos()
    combos = list(combos) if combos is not None else available_combinations(model_dir, spec)
    start = time.perf_counter()
    measured = measure(
        combos,
        make_engine or _default_factory(model_dir, spec),
        spec,
        photos,
        threshold=threshold,
        holdout=holdout,
    )
    record = GateRecord(
        machine=current_machine(),
        threshold=threshold,
        onnx_sha256=file_sha256(model_dir / spec.onnx_file),
        int8_sha256=_int8_sha256(model_dir, spec),
        results=tuple(
            GateResult(
                backend=m.backend,
                precision=m.precision,
                map=round(m.score.map, 4),
                recall50=round(m.score.recall50, 4),
                passed=m.passed,
                holdout_map=round(m.holdout.map, 4) if m.holdout else None,
                holdout_recall50=round(m.holdout.recall50, 4) if m.holdout else None,
            )
            for m in measured
        ),
    )
    path = record.save(model_dir)
    ref = measured[0].score
    print(f"accuracy gate on {len(photos)} evaluation photos ({ref.reference_boxes} reference boxes "
          f"at score >= {GT_THRESHOLD}), {describe(record.machine)}")  # fmt: skip
    held_ref = measured[0].holdout
    if held_ref is not None:
        print(f"held-out: {len(holdout)} photos outside calibration and evaluation "
              f"({held_ref.reference_boxes} reference boxes), scored the same way, not gated")  # fmt: skip
    print(format_table(measured, threshold))
    log.info("gate written to %s in %.0f s", path, time.perf_counter() - start)
    return record, measured
