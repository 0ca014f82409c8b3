"""The real default model (NanoDet-g, converted and exported by `make`) on real photos."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import onnx
import pytest

from engine_build.export import check_parity, load_torch_engine
from inference.engines import create_engine
from inference.pipeline import Detector
from inference.spec import ModelSpec
from inference.types import Detection, DetectionResult, DetectParams


def iou(a: tuple[float, ...] | list[float], b: tuple[float, ...] | list[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def top(result: DetectionResult) -> Detection:
    assert result.detections, "no detections at all"
    return result.detections[0]


@pytest.fixture(scope="module")
def spec(model_dir: Path) -> ModelSpec:
    return ModelSpec.load(model_dir)


@pytest.fixture
async def detector(model_dir: Path, spec: ModelSpec) -> AsyncIterator[Detector]:
    engine = create_engine("onnxruntime", model_dir, spec, providers=["CPUExecutionProvider"])
    det = Detector(engine, spec, max_batch_size=8, max_delay_ms=5.0)
    await det.start()
    try:
        yield det
    finally:
        await det.close()


def test_exported_onnx_has_a_dynamic_batch_axis(model_dir: Path, spec: ModelSpec) -> None:
    model = onnx.load(str(model_dir / spec.onnx_file))
    (inp,) = model.graph.input
    dims = inp.type.tensor_type.shape.dim
    assert inp.name == spec.input_name
    assert dims[0].dim_param and not dims[0].dim_value  # symbolic batch
    assert [d.dim_value for d in dims[1:]] == [3, spec.input_height, spec.input_width]
    assert {o.name for o in model.graph.output} == {*spec.decoder.cls_outputs, *spec.decoder.reg_outputs}  # type: ignore[union-attr]


def test_pytorch_and_onnx_agree_on_real_photos(model_dir: Path, spec: ModelSpec, photos: dict[str, np.ndarray]) -> None:  # fmt: skip
    rows = check_parity(load_torch_engine(model_dir, spec), model_dir / spec.onnx_file, spec, photos)
    assert {r.images for r in rows} >= {"astronaut", "coffee", "motorcycle", "all"}
    assert max(r.max_abs_diff for r in rows) <= 1e-4


async def test_astronaut_is_a_person(detector: Detector, photos: dict[str, np.ndarray]) -> None:
    result = await detector.detect(photos["astronaut"])
    best = top(result)
    assert best.label == "person" and best.class_id == 0
    assert best.score >= 0.6
    assert iou(best.box, (14, 14, 364, 507)) > 0.9
    assert (result.width, result.height) == (512, 512)


@pytest.mark.parametrize(("photo", "label"), [("coffee", "cup"), ("motorcycle", "motorcycle")])
async def test_real_photos_give_real_answers(detector: Detector, photos: dict[str, np.ndarray], photo: str, label: str) -> None:  # fmt: skip
    result = await detector.detect(photos[photo])
    assert top(result).label == label


async def test_batch_of_eight_equals_eight_single_runs(
    detector: Detector, photos: dict[str, np.ndarray]
) -> None:
    # Eight different images (photos, flipped and cropped), so a mix-up between rows would show.
    base = list(photos.values())
    images = base + [np.ascontiguousarray(p[:, ::-1]) for p in base]
    images = [images[i % len(images)][: 300 + 20 * i] for i in range(8)]
    params = DetectParams(score_threshold=0.3)
    singles = [detector.detect_batch_sync([img], params)[0] for img in images]
    batched = detector.detect_batch_sync(images, params)
    # And through the shared micro-batcher, all eight submitted at once.
    concurrent = await asyncio.gather(*(detector.detect(img, params) for img in images))
    assert max(r.batch_size for r in concurrent) > 1
    for one, many, conc in zip(singles, batched, concurrent, strict=True):
        assert [d.label for d in one.detections] == [d.label for d in many.detections]
        assert [d.label for d in one.detections] == [d.label for d in conc.detections]
        for a, b in zip(one.detections, many.detections, strict=True):
            assert abs(a.score - b.score) < 1e-4
            np.testing.assert_allclose(a.box, b.box, atol=1e-2)


def test_torch_backend_finds_the_same_person(model_dir: Path, spec: ModelSpec, photos: dict[str, np.ndarray]) -> None:  # fmt: skip
    results = {}
    for backend in ("torch", "onnxruntime"):
        engine = create_engine(backend, model_dir, spec)
        det = Detector(engine, spec)
        engine.load()
        results[backend] = det.detect_batch_sync([photos["astronaut"]])[0]
        engine.close()
    t, o = top(results["torch"]), top(results["onnxruntime"])
    assert t.label == o.label == "person"
    assert abs(t.score - o.score) < 1e-3 and iou(t.box, o.box) > 0.99
