"""Decoders against answers worked out by hand, and the YOLOv8 path end to end through a generated ONNX model,
the real OnnxRuntimeEngine and the Detector."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from inference.decoders import create_decoder
from inference.decoders.nanodet import NanoDetDecoder
from inference.decoders.yolov8 import YoloV8Decoder
from inference.engines.onnxruntime import OnnxRuntimeEngine
from inference.errors import InferenceError
from inference.pipeline import Detector
from inference.preprocess import Transform, preprocess
from inference.spec import ModelSpec, NanoDetDecoderSpec, YoloV8DecoderSpec
from inference.types import Detection, DetectParams

# ----------------------------------------------------------------------------------------------- NanoDet

NANO_CLASSES = ("person", "car", "dog")
R = 10  # reg_max: 11 bins per side
LEVELS = {8: 64, 16: 16, 32: 4}  # 64x64 input: 8x8, 4x4 and 2x2 anchors


def nano_spec() -> ModelSpec:
    return ModelSpec(
        name="nano-test",
        input_width=64,
        input_height=64,
        class_names=NANO_CLASSES,
        decoder=NanoDetDecoderSpec(
            strides=(8, 16, 32),
            reg_max=R,
            cls_outputs=("cls_8", "cls_16", "cls_32"),
            reg_outputs=("reg_8", "reg_16", "reg_32"),
        ),
    )


def empty_outputs(n: int = 1) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for s, a in LEVELS.items():
        out[f"cls_{s}"] = np.zeros((n, a, len(NANO_CLASSES)), np.float32)
        out[f"reg_{s}"] = np.zeros((n, a, 4 * (R + 1)), np.float32)
    return out


def peaked(left: int, top: int, right: int, bottom: int) -> np.ndarray:
    """Bin logits whose softmax puts (all but e^-60 of) the mass on one bin per side."""
    logits = np.zeros((4, R + 1), np.float32)
    for side, k in enumerate((left, top, right, bottom)):
        logits[side, k] = 60.0
    return logits.ravel()


def place(out: dict[str, np.ndarray], stride: int, x: int, y: int, cls: int, score: float, reg: np.ndarray,
          image: int = 0) -> None:  # fmt: skip
    w = 64 // stride
    out[f"cls_{stride}"][image, y * w + x, cls] = score
    out[f"reg_{stride}"][image, y * w + x] = reg


STRETCH_128x96 = Transform(src_w=128, src_h=96, scale_x=0.5, scale_y=64 / 96, pad_x=0.0, pad_y=0.0)
IDENTITY_64 = Transform(src_w=64, src_h=64, scale_x=1.0, scale_y=1.0, pad_x=0.0, pad_y=0.0)


def boxes_of(dets: tuple[Detection, ...]) -> list[list[float]]:
    return [list(d.box) for d in dets]


def test_nanodet_peaked_distribution_gives_known_box() -> None:
    out = empty_outputs()
    # Stride 8, cell (x=3, y=2) -> anchor 19, centre (28, 20). Sides l=2, t=1, r=3, b=4 bins of 8 px.
    place(out, 8, 3, 2, cls=1, score=0.8, reg=peaked(2, 1, 3, 4))
    (dets,) = NanoDetDecoder(nano_spec()).decode(out, [STRETCH_128x96], DetectParams())
    assert len(dets) == 1
    det = dets[0]
    assert (det.class_id, det.label) == (1, "car")
    assert det.score == pytest.approx(0.8)
    # Input box (12, 12, 52, 52) -> source: x / 0.5, y / (2/3).
    np.testing.assert_allclose(det.box, (24, 18, 104, 78), atol=1e-3)


def test_nanodet_expectation_of_a_spread_distribution() -> None:
    out = empty_outputs()
    logits = np.full((4, R + 1), -100.0, np.float32)
    logits[:, 1] = logits[:, 3] = 0.0  # half the mass on bin 1, half on bin 3: expectation 2 bins
    place(out, 16, 1, 2, cls=0, score=0.5, reg=logits.ravel())
    (dets,) = NanoDetDecoder(nano_spec()).decode(out, [IDENTITY_64], DetectParams())
    # Stride 16, cell (1, 2): centre (24, 40); 2 bins * 16 px = 32 px each side, clipped to the input.
    np.testing.assert_allclose(boxes_of(dets), [[0, 8, 56, 64]], atol=1e-3)


def test_nanodet_centre_convention_is_the_cell_centre() -> None:
    out = empty_outputs()
    place(out, 32, 1, 1, cls=2, score=0.9, reg=peaked(0, 0, 0, 0))
    (dets,) = NanoDetDecoder(nano_spec()).decode(out, [IDENTITY_64], DetectParams())
    np.testing.assert_allclose(boxes_of(dets), [[48, 48, 48, 48]], atol=1e-3)  # (1 + 0.5) * 32
    (dets,) = NanoDetDecoder(nano_spec(), centre_offset=0.0).decode(out, [IDENTITY_64], DetectParams())
    np.testing.assert_allclose(boxes_of(dets), [[32, 32, 32, 32]], atol=1e-3)


def test_nanodet_threshold_nms_across_levels_and_order() -> None:
    out = empty_outputs()
    # The same box (8, 8, 40, 40) predicted at stride 8 and, weaker, at stride 16: NMS keeps one.
    place(out, 8, 2, 2, cls=0, score=0.9, reg=peaked(2, 2, 2, 2))  # centre (20, 20)
    place(out, 16, 1, 1, cls=0, score=0.6, reg=peaked(1, 1, 1, 1))  # centre (24, 24) -> (8, 8, 40, 40)
    # Same place, other class: kept (class-aware NMS).
    place(out, 8, 3, 3, cls=2, score=0.7, reg=peaked(3, 3, 1, 1))  # centre (28, 28) -> (4, 4, 36, 36)
    place(out, 8, 7, 7, cls=1, score=0.3, reg=peaked(1, 1, 1, 1))  # below threshold
    (dets,) = NanoDetDecoder(nano_spec()).decode(out, [IDENTITY_64], DetectParams(score_threshold=0.35))
    assert [(d.label, round(d.score, 3)) for d in dets] == [("person", 0.9), ("dog", 0.7)]
    np.testing.assert_allclose(boxes_of(dets), [[4, 4, 36, 36], [4, 4, 36, 36]], atol=1e-3)


def test_nanodet_class_filter_applies_before_the_max() -> None:
    out = empty_outputs()
    place(out, 8, 4, 4, cls=0, score=0.9, reg=peaked(1, 1, 1, 1))
    out["cls_8"][0, 4 * 8 + 4, 2] = 0.6  # the same anchor also says dog, less strongly
    (dets,) = NanoDetDecoder(nano_spec()).decode(out, [IDENTITY_64], DetectParams(classes=frozenset({2})))
    assert [(d.label, round(d.score, 3)) for d in dets] == [("dog", 0.6)]
    (none,) = NanoDetDecoder(nano_spec()).decode(out, [IDENTITY_64], DetectParams(classes=frozenset({1})))
    assert none == ()


def test_nanodet_max_detections_keeps_the_best() -> None:
    out = empty_outputs()
    for i in range(5):  # five separate small boxes along the diagonal
        place(out, 8, i, i, cls=0, score=0.5 + i * 0.1, reg=peaked(0, 0, 1, 1))
    (dets,) = NanoDetDecoder(nano_spec()).decode(out, [IDENTITY_64], DetectParams(max_detections=3))
    assert [round(d.score, 3) for d in dets] == [0.9, 0.8, 0.7]


def test_nanodet_batch_keeps_images_apart() -> None:
    out = empty_outputs(2)
    place(out, 8, 3, 2, cls=1, score=0.8, reg=peaked(2, 1, 3, 4), image=1)
    first, second = NanoDetDecoder(nano_spec()).decode(out, [IDENTITY_64, STRETCH_128x96], DetectParams())
    assert first == ()
    np.testing.assert_allclose(boxes_of(second), [[24, 18, 104, 78]], atol=1e-3)


def test_nanodet_rejects_outputs_that_do_not_fit_the_spec() -> None:
    out = empty_outputs()
    out["cls_8"] = np.zeros((1, 63, 3), np.float32)
    with pytest.raises(InferenceError, match="cls_8"):
        NanoDetDecoder(nano_spec()).decode(out, [IDENTITY_64], DetectParams())
    out = empty_outputs()
    del out["reg_32"]
    with pytest.raises(InferenceError, match="reg_32"):
        NanoDetDecoder(nano_spec()).decode(out, [IDENTITY_64], DetectParams())


# ------------------------------------------------------------------------------------------------ YOLOv8

YOLO_CLASSES = ("person", "car", "dog")
#            cx,  cy,  w,  h, person, car, dog
ANCHORS = [
    (100, 140, 40, 60, 0.9, 0.0, 0.0),  # -> input (80, 110, 120, 170)
    (102, 140, 40, 60, 0.8, 0.0, 0.0),  # nearly the same box, same class: suppressed
    (100, 140, 40, 60, 0.0, 0.75, 0.0),  # the same box as a car: kept
    (250, 200, 20, 20, 0.0, 0.0, 0.625),  # -> input (240, 190, 260, 210)
    (160, 160, 30, 30, 0.25, 0.0, 0.0),  # below the threshold
    (50, 45, 20, 30, 0.0, 0.5, 0.0),  # -> input (40, 30, 60, 60), top part in the letterbox padding
]
# 640x480 letterboxed into 320x320: scale 0.5, 40 rows of padding on top.
EXPECTED = [
    (0, "person", 0.9, (160.0, 140.0, 240.0, 260.0)),
    (1, "car", 0.75, (160.0, 140.0, 240.0, 260.0)),
    (2, "dog", 0.625, (480.0, 300.0, 520.0, 340.0)),
    (1, "car", 0.5, (80.0, 0.0, 120.0, 40.0)),
]


def yolo_spec(**overrides: object) -> ModelSpec:
    fields: dict[str, object] = {
        "name": "yolo-test",
        "input_name": "images",
        "input_width": 320,
        "input_height": 320,
        "resize": "letterbox",
        "class_names": YOLO_CLASSES,
        "decoder": YoloV8DecoderSpec(output="output0"),
    }
    fields.update(overrides)
    return ModelSpec.model_validate(fields)


def write_yolo_onnx(path: Path, batch: int | str = "N") -> None:
    """A graph whose output is the ANCHORS table with class scores scaled by the input's centre pixel
    (channel 0), so a white image yields exactly ANCHORS and a black one no detections."""
    table = np.array(ANCHORS, np.float32).T[None]  # [1, 4 + C, A]
    init = [
        numpy_helper.from_array(table[:, :4], "boxes"),
        numpy_helper.from_array(table[:, 4:], "scores"),
        numpy_helper.from_array(np.array([0, 160, 160], np.int64), "starts"),
        numpy_helper.from_array(np.array([1, 161, 161], np.int64), "ends"),
        numpy_helper.from_array(np.array([1, 2, 3], np.int64), "axes"),
        numpy_helper.from_array(np.array([-1, 1, 1], np.int64), "shape"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
    ]
    nodes = [
        helper.make_node("Slice", ["images", "starts", "ends", "axes"], ["centre"]),  # [N, 1, 1, 1]
        helper.make_node("Reshape", ["centre", "shape"], ["gain"]),  # [N, 1, 1]
        helper.make_node("Mul", ["gain", "scores"], ["cls"]),  # [N, C, A]
        helper.make_node("Mul", ["gain", "zero"], ["nothing"]),
        helper.make_node("Add", ["boxes", "nothing"], ["box"]),  # [N, 4, A]
        helper.make_node("Concat", ["box", "cls"], ["output0"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "yolo-test",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, 320, 320])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [batch, 4 + len(YOLO_CLASSES), "A"])],
        init,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)


@pytest.fixture
def yolo_dir(tmp_path: Path) -> Path:
    spec = yolo_spec()
    spec.save(tmp_path)
    write_yolo_onnx(tmp_path / spec.onnx_file)
    return tmp_path


WHITE = np.full((480, 640, 3), 255, np.uint8)
BLACK = np.zeros((480, 640, 3), np.uint8)


def as_tuples(dets: tuple[Detection, ...]) -> list[tuple[int, str, float, tuple[float, ...]]]:
    return [(d.class_id, d.label, round(d.score, 4), d.box) for d in dets]


def test_yolov8_end_to_end_through_onnxruntime(yolo_dir: Path) -> None:
    spec = ModelSpec.load(yolo_dir)
    engine = OnnxRuntimeEngine(yolo_dir, spec, providers=["CPUExecutionProvider"])
    engine.load()
    batch, transforms = preprocess([WHITE, BLACK, WHITE[:240, :320].copy()], spec)
    outputs = engine.infer(batch)
    assert outputs["output0"].shape == (3, 7, len(ANCHORS))
    white, black, small = YoloV8Decoder(spec).decode(outputs, transforms, DetectParams())
    assert as_tuples(white) == EXPECTED
    assert black == ()
    # 320x240 is letterboxed at scale 1: the same boxes, 40 px higher and clipped to 240 rows.
    assert as_tuples(small)[0] == (0, "person", 0.9, (80.0, 70.0, 120.0, 130.0))


def test_yolov8_params(yolo_dir: Path) -> None:
    spec = ModelSpec.load(yolo_dir)
    engine = OnnxRuntimeEngine(yolo_dir, spec)
    engine.load()
    batch, transforms = preprocess([WHITE], spec)
    outputs = engine.infer(batch)
    decoder = YoloV8Decoder(spec)
    (only_cars,) = decoder.decode(outputs, transforms, DetectParams(classes=frozenset({1})))
    assert as_tuples(only_cars) == [EXPECTED[1], EXPECTED[3]]
    (top2,) = decoder.decode(outputs, transforms, DetectParams(max_detections=2))
    assert as_tuples(top2) == EXPECTED[:2]
    (strict,) = decoder.decode(outputs, transforms, DetectParams(score_threshold=0.7))
    assert as_tuples(strict) == EXPECTED[:2]
    # A looser IoU threshold lets the near-duplicate person through.
    (loose,) = decoder.decode(outputs, transforms, DetectParams(iou_threshold=0.95))
    assert [d.score for d in loose][:2] == pytest.approx([0.9, 0.8])


def test_yolov8_logits_are_squashed() -> None:
    spec = yolo_spec(decoder=YoloV8DecoderSpec(output="output0", scores_are_logits=True))
    raw = np.array(ANCHORS, np.float32).T[None].copy()
    p = raw[:, 4:]
    positive = p > 0
    p[positive] = np.log(p[positive] / (1 - p[positive]))  # logit(p)
    p[~positive] = -20.0
    transform = Transform(640, 480, 0.5, 0.5, 0.0, 40.0)
    (dets,) = YoloV8Decoder(spec).decode({"output0": raw}, [transform], DetectParams())
    assert [(d.label, round(d.score, 4)) for d in dets] == [(e[1], e[2]) for e in EXPECTED]


def test_yolov8_rejects_wrong_output() -> None:
    decoder = YoloV8Decoder(yolo_spec())
    with pytest.raises(InferenceError):
        decoder.decode({"other": np.zeros((1, 7, 3))}, [IDENTITY_64], DetectParams())
    with pytest.raises(InferenceError):
        decoder.decode({"output0": np.zeros((2, 7, 3))}, [IDENTITY_64], DetectParams())


def test_create_decoder_dispatches_on_type() -> None:
    assert isinstance(create_decoder(nano_spec()), NanoDetDecoder)
    assert isinstance(create_decoder(yolo_spec()), YoloV8Decoder)


# ------------------------------------------------------------------------------ Detector, end to end


def make_detector(yolo_dir: Path, **options: object) -> Detector:
    spec = ModelSpec.load(yolo_dir)
    engine = OnnxRuntimeEngine(yolo_dir, spec, providers=["CPUExecutionProvider"])
    return Detector(engine, spec, **options)  # type: ignore[arg-type]


async def test_detector_detect(yolo_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    detector = make_detector(yolo_dir)
    with caplog.at_level(logging.INFO, logger="rtdetect.inference"):
        await detector.start()
    try:
        assert detector.ready
        assert "CPUExecutionProvider" in caplog.text and "yolo-test" in caplog.text
        assert detector.info() == {
            "name": "yolo-test",
            "backend": "onnxruntime",
            "precision": "fp32",
            "gate_score": None,  # no gate.json: not measured
            "provider": "CPUExecutionProvider",
            "input_size": [320, 320],
            "classes": list(YOLO_CLASSES),
            "max_batch_size": 1,  # the CPU defaults: no batching, two runs in flight
            "max_delay_ms": 2.0,
            "workers": 2,
        }
        result = await detector.detect(WHITE)
        assert as_tuples(result.detections) == EXPECTED
        assert (result.width, result.height, result.batch_size) == (640, 480, 1)
        t = result.timings
        assert t.preprocess > 0 and t.inference > 0 and t.postprocess > 0
        assert t.total >= t.preprocess + t.inference + t.postprocess
        filtered = await detector.detect(WHITE, DetectParams(classes=frozenset({2})))
        assert as_tuples(filtered.detections) == [EXPECTED[2]]
        # The detect API's path: prepared in its own thread, then detected.
        prepared = detector.prepare(WHITE)
        assert prepared.preprocess_ms > 0
        again = await detector.detect_prepared(prepared)
        assert as_tuples(again.detections) == EXPECTED and again.timings.preprocess == prepared.preprocess_ms
    finally:
        await detector.close()
    assert not detector.ready
    with pytest.raises(InferenceError):
        await detector.detect(WHITE)


async def test_detector_batches_concurrent_callers(yolo_dir: Path) -> None:
    # A long delay makes the batch deterministic: all eight requests arrive well within it.
    detector = make_detector(yolo_dir, max_batch_size=8, max_delay_ms=2000)
    await detector.start()
    try:
        images = [WHITE if i % 2 == 0 else BLACK for i in range(8)]
        results = await asyncio.wait_for(asyncio.gather(*(detector.detect(im) for im in images)), 30)
    finally:
        await detector.close()
    assert [r.batch_size for r in results] == [8] * 8
    for i, result in enumerate(results):
        assert as_tuples(result.detections) == (EXPECTED if i % 2 == 0 else [])


async def test_detector_caps_batch_at_the_engine_limit(tmp_path: Path) -> None:
    spec = yolo_spec()
    spec.save(tmp_path)
    write_yolo_onnx(tmp_path / spec.onnx_file, batch=1)  # a model fixed to batch 1
    detector = make_detector(tmp_path, max_batch_size=8)
    await detector.start()
    try:
        assert detector.engine.max_batch_size == 1
        assert detector.info()["max_batch_size"] == 1
        results = await asyncio.gather(*(detector.detect(WHITE) for _ in range(3)))
        assert [r.batch_size for r in results] == [1, 1, 1]
        # The direct path chunks by the engine's limit too.
        sync = detector.detect_batch_sync([WHITE, BLACK, WHITE])
        assert [r.batch_size for r in sync] == [1, 1, 1]
        assert [as_tuples(r.detections) for r in sync] == [EXPECTED, [], EXPECTED]
    finally:
        await detector.close()


def test_detect_batch_sync_chunks(yolo_dir: Path) -> None:
    detector = make_detector(yolo_dir)
    detector.engine.load()
    detector.engine.max_batch_size = 2
    images = [WHITE, BLACK, WHITE, WHITE, BLACK]
    results = detector.detect_batch_sync(images)
    assert [r.batch_size for r in results] == [2, 2, 2, 2, 1]
    for image, result in zip(images, results, strict=True):
        assert as_tuples(result.detections) == (EXPECTED if image is WHITE else [])
        assert (result.width, result.height) == (640, 480)
    assert detector.detect_batch_sync([]) == []
