"""Every registered decoder family through a generated ONNX model with known outputs, the real ONNX Runtime
engine and the real pre-processing: exact boxes (in source pixels, through the letterbox or stretch) and
scores, and the DetectParams (threshold, classes, max detections) honoured."""

from __future__ import annotations

import math
import typing
from pathlib import Path

import numpy as np
import pytest

from engine_build.__main__ import BuildSettings, build_parser
from inference.decoders import DECODERS, Decoder, create_decoder
from inference.engines.onnxruntime import OnnxRuntimeEngine
from inference.errors import InferenceError
from inference.preprocess import preprocess
from inference.spec import DecoderSpec, ModelSpec
from inference.types import Detection, DetectParams
from tests.onnx_consts import write_const_model

CLASSES = ("person", "car", "dog")
DEFAULT = DetectParams()
WHITE = np.full((480, 640, 3), 255, np.uint8)
BLACK = np.zeros((480, 640, 3), np.uint8)
# 640x480 letterboxed into 320x320: scale 0.5, 40 rows of padding on top; source = (x / 0.5, (y - 40) / 0.5).


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def rows(dets: tuple[Detection, ...]) -> list[tuple[str, float, tuple[float, ...]]]:
    return [(d.label, round(d.score, 5), tuple(round(v, 3) for v in d.box)) for d in dets]


def run(
    tmp_path: Path, decoder: dict[str, object], outputs: dict[str, np.ndarray], images: list[np.ndarray],
    params: DetectParams = DEFAULT, *, size: int = 320, resize: str = "letterbox",
    classes: tuple[str, ...] = CLASSES, gated: tuple[str, ...] = (),
) -> list[tuple[Detection, ...]]:  # fmt: skip
    """Write the spec and the constant model, load it in ONNX Runtime, pre-process `images`, decode."""
    spec = ModelSpec.model_validate({
        "name": "family-test", "input_name": "images", "input_width": size, "input_height": size,
        "resize": resize, "class_names": classes, "decoder": decoder,
    })  # fmt: skip
    write_const_model(tmp_path / spec.onnx_file, outputs, size=(size, size), gated=gated)
    engine = OnnxRuntimeEngine(tmp_path, spec, providers=["CPUExecutionProvider"])
    engine.load()
    batch, transforms = preprocess(images, spec)
    decoded: Decoder = create_decoder(spec)  # through the registry, as the Detector gets it
    return decoded.decode(engine.infer(batch), transforms, params)


# ------------------------------------------------------------------------------------------- registry


def test_every_spec_type_has_a_registered_decoder_and_export_offers_them_all() -> None:
    union = typing.get_args(typing.get_args(DecoderSpec)[0])
    types = {typing.get_args(cls.model_fields["type"].annotation)[0] for cls in union}
    assert types == set(DECODERS)
    parser = build_parser(BuildSettings())
    export = parser._subparsers._group_actions[0].choices["export"]  # type: ignore[union-attr]
    (decoder_action,) = [a for a in export._actions if a.dest == "decoder"]
    assert list(decoder_action.choices) == sorted(DECODERS)


# --------------------------------------------------------------------------------------------- YOLOv5

#                 cx,  cy,  w,  h,  obj, person, car, dog
V5 = np.array([[
    (100, 140, 40, 60, 1.0, 0.9, 0.0, 0.0),  # person 0.9 -> input (80, 110, 120, 170)
    (102, 140, 40, 60, 1.0, 0.8, 0.0, 0.0),  # nearly the same person: suppressed by NMS
    (100, 140, 40, 60, 0.75, 0.0, 1.0, 0.0),  # the same box as a car: 0.75, kept (class-aware NMS)
    (250, 200, 20, 20, 0.5, 0.0, 0.0, 0.75),  # dog 0.5 x 0.75 = 0.375 -> input (240, 190, 260, 210)
    (160, 160, 30, 30, 0.25, 1.0, 0.0, 0.0),  # certain person, weak objectness: 0.25, dropped
    (50, 45, 20, 30, 0.9, 0.3, 0.0, 0.0),  # strong objectness, weak class: 0.27, dropped
    (50, 45, 20, 30, 1.0, 0.0, 0.5, 0.0),  # car 0.5 -> input (40, 30, 60, 60), top in the padding
]], np.float32)  # fmt: skip
V5_EXPECTED = [
    ("person", 0.9, (160.0, 140.0, 240.0, 260.0)),
    ("car", 0.75, (160.0, 140.0, 240.0, 260.0)),
    ("car", 0.5, (80.0, 0.0, 120.0, 40.0)),
    ("dog", 0.375, (480.0, 300.0, 520.0, 340.0)),
]


def test_yolov5_objectness_times_class_nms_and_letterbox(tmp_path: Path) -> None:
    white, black = run(tmp_path, {"type": "yolov5"}, {"output0": V5}, [WHITE, BLACK], gated=("output0",))
    assert rows(white) == V5_EXPECTED
    assert black == ()


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        (DetectParams(classes=frozenset({1})), V5_EXPECTED[1:3]),
        (DetectParams(max_detections=2), V5_EXPECTED[:2]),
        (DetectParams(score_threshold=0.6), V5_EXPECTED[:2]),
        (DetectParams(classes=frozenset({7})), []),
    ],
)
def test_yolov5_params(tmp_path: Path, params: DetectParams, expected: list[object]) -> None:
    (dets,) = run(tmp_path, {"type": "yolov5"}, {"output0": V5}, [WHITE], params)
    assert rows(dets) == expected


def test_yolov5_logits_are_squashed(tmp_path: Path) -> None:
    raw = V5.copy()
    probs = raw[..., 4:]
    probs[...] = np.where(probs > 0, np.log(np.maximum(probs, 1e-9) / np.maximum(1 - probs, 1e-9)), -30.0)
    probs[probs > 20] = 30.0  # logit(1.0)
    (dets,) = run(tmp_path, {"type": "yolov5", "scores_are_logits": True}, {"output0": raw}, [WHITE])
    assert [(r[0], r[1]) for r in rows(dets)] == [(e[0], e[1]) for e in V5_EXPECTED]


# ---------------------------------------------------------------------------------------------- YOLOX

# 64x64 input, strides 8/16/32: 8x8 + 4x4 + 2x2 = 84 anchors. A 128x96 source stretched: x / 0.5, y / (2/3).
YOLOX_RAW = np.zeros((1, 84, 8), np.float32)
#                  dx,   dy,  log w,        log h,       obj, person, car, dog
YOLOX_RAW[0, 19] = (0.5, 0.5, math.log(2), math.log(4), 1.0, 0.9, 0.0, 0.0)  # stride 8, cell (3, 2)
YOLOX_RAW[0, 69] = (0.0, 0.0, 0.0, 0.0, 0.5, 0.0, 0.0, 1.0)  # stride 16, cell (1, 1): 64 + 1 * 4 + 1
YOLOX_RAW[0, 83] = (0.25, 0.5, math.log(1.5), 0.0, 0.75, 0.0, 1.0, 0.0)  # stride 32, cell (1, 1)
YOLOX_EXPECTED = [
    # centre (3.5 * 8, 2.5 * 8) = (28, 20), 16 x 32 -> input (20, 4, 36, 36)
    ("person", 0.9, (40.0, 6.0, 72.0, 54.0)),
    # centre (1.25 * 32, 1.5 * 32) = (40, 48), 48 x 32 -> input (16, 32, 64, 64)
    ("car", 0.75, (32.0, 48.0, 128.0, 96.0)),
    # centre (16, 16), 16 x 16 -> input (8, 8, 24, 24)
    ("dog", 0.5, (16.0, 12.0, 48.0, 36.0)),
]
SOURCE_128x96 = np.full((96, 128, 3), 255, np.uint8)


def test_yolox_raw_grid_decode(tmp_path: Path) -> None:
    (dets,) = run(
        tmp_path, {"type": "yolox", "output": "output"}, {"output": YOLOX_RAW}, [SOURCE_128x96],
        size=64, resize="stretch",
    )  # fmt: skip
    assert rows(dets) == YOLOX_EXPECTED


def test_yolox_decoded_boxes(tmp_path: Path) -> None:
    decoded = np.zeros((1, 3, 8), np.float32)
    decoded[0, 0] = (28, 20, 16, 32, 1.0, 0.9, 0.0, 0.0)
    decoded[0, 1] = (16, 16, 16, 16, 0.5, 0.0, 0.0, 1.0)
    decoded[0, 2] = (40, 48, 48, 32, 0.75, 0.0, 1.0, 0.0)
    (dets,) = run(
        tmp_path, {"type": "yolox", "boxes": "decoded"}, {"output": decoded}, [SOURCE_128x96],
        size=64, resize="stretch", params=DetectParams(classes=frozenset({0, 2})),
    )  # fmt: skip
    assert rows(dets) == [YOLOX_EXPECTED[0], YOLOX_EXPECTED[2]]


def test_yolox_raw_needs_the_grid_s_anchor_count(tmp_path: Path) -> None:
    with pytest.raises(InferenceError, match="84 anchors"):
        run(tmp_path, {"type": "yolox"}, {"output": YOLOX_RAW[:, :80]}, [WHITE], size=64)


# ------------------------------------------------------------------------------------ end to end [N,K,6]

E2E = np.array([[
    (80, 110, 120, 170, 0.9, 0),  # person
    (82, 110, 122, 170, 0.8, 0),  # overlaps the first: kept, the model already de-duplicated
    (240, 190, 260, 210, 0.625, 2),  # dog
    (40, 30, 60, 60, 0.3, 1),  # below the threshold
    (0, 0, 0, 0, 0.0, -1),  # padding rows
    (0, 0, 0, 0, 0.0, 0),
]], np.float32)  # fmt: skip
E2E_EXPECTED = [
    ("person", 0.9, (160.0, 140.0, 240.0, 260.0)),
    ("person", 0.8, (164.0, 140.0, 244.0, 260.0)),
    ("dog", 0.625, (480.0, 300.0, 520.0, 340.0)),
]


def test_end2end_no_nms_and_padding(tmp_path: Path) -> None:
    white, black = run(tmp_path, {"type": "end2end"}, {"output0": E2E}, [WHITE, BLACK], gated=("output0",))
    assert rows(white) == E2E_EXPECTED
    assert black == ()


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        (DetectParams(classes=frozenset({2})), E2E_EXPECTED[2:]),
        (DetectParams(max_detections=1), E2E_EXPECTED[:1]),
        (DetectParams(score_threshold=0.25), [*E2E_EXPECTED, ("car", 0.3, (80.0, 0.0, 120.0, 40.0))]),
    ],
)
def test_end2end_params(tmp_path: Path, params: DetectParams, expected: list[object]) -> None:
    (dets,) = run(tmp_path, {"type": "end2end"}, {"output0": E2E}, [WHITE], params)
    assert rows(dets) == expected


# ---------------------------------------------------------------------------------------------- DETR

S = 320.0
DETR_BOXES = np.array([[
    (100 / S, 140 / S, 40 / S, 60 / S),  # -> input (80, 110, 120, 170)
    (250 / S, 200 / S, 20 / S, 20 / S),  # -> input (240, 190, 260, 210)
    (102 / S, 140 / S, 40 / S, 60 / S),  # -> input (82, 110, 122, 170)
    (0.5, 0.5, 0.1, 0.1),
]], np.float32)  # fmt: skip
DETR_LOGITS = np.full((1, 4, 3), -10.0, np.float32)
DETR_LOGITS[0, 0, 0], DETR_LOGITS[0, 0, 1] = logit(0.9), logit(0.75)  # one query, two classes
DETR_LOGITS[0, 1, 2] = logit(0.625)
DETR_LOGITS[0, 2, 0] = logit(0.8)
DETR_EXPECTED = [
    ("person", 0.9, (160.0, 140.0, 240.0, 260.0)),
    ("person", 0.8, (164.0, 140.0, 244.0, 260.0)),
    ("car", 0.75, (160.0, 140.0, 240.0, 260.0)),
    ("dog", 0.625, (480.0, 300.0, 520.0, 340.0)),
]
# RF-DETR's output names, to show they are the spec's to choose.
DETR_SPEC = {"type": "detr", "boxes_output": "dets", "logits_output": "labels"}


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        (DetectParams(), DETR_EXPECTED),
        (DetectParams(classes=frozenset({1, 2})), DETR_EXPECTED[2:]),
        (DetectParams(max_detections=2), DETR_EXPECTED[:2]),
        (DetectParams(score_threshold=0.7), DETR_EXPECTED[:3]),
        (DetectParams(classes=frozenset({9})), []),
    ],
)
def test_detr_top_k_over_queries_and_classes(tmp_path: Path, params: DetectParams, expected: list[object]) -> None:  # fmt: skip
    (dets,) = run(tmp_path, DETR_SPEC, {"dets": DETR_BOXES, "labels": DETR_LOGITS}, [WHITE], params)
    assert rows(dets) == expected


def test_detr_names_the_missing_output(tmp_path: Path) -> None:
    with pytest.raises(InferenceError, match="'logits'"):
        run(tmp_path, {"type": "detr"}, {"boxes": DETR_BOXES, "labels": DETR_LOGITS}, [WHITE])


# --------------------------------------------------------------------------------------- torchvision

TV_BOXES = np.array([[
    (80, 110, 120, 170), (82, 110, 122, 170), (240, 190, 260, 210), (0, 0, 0, 0), (0, 0, 0, 0),
]], np.float32)  # fmt: skip
TV_LABELS = np.array([[1, 1, 3, 0, 0]], np.int64)
TV_SCORES = np.array([[0.9, 0.8, 0.625, 0.0, 0.0]], np.float32)  # two rows of padding
TV_CLASSES = ("__background__", "person", "bicycle", "car")  # label 0 is torchvision's background


def test_torchvision_outputs(tmp_path: Path) -> None:
    outputs = {"boxes": TV_BOXES, "labels": TV_LABELS, "scores": TV_SCORES}
    white, black = run(
        tmp_path, {"type": "torchvision"}, outputs, [WHITE, BLACK], classes=TV_CLASSES, gated=("scores",)
    )
    assert rows(white) == [
        ("person", 0.9, (160.0, 140.0, 240.0, 260.0)),
        ("person", 0.8, (164.0, 140.0, 244.0, 260.0)),
        ("car", 0.625, (480.0, 300.0, 520.0, 340.0)),
    ]
    assert black == ()  # every score 0: nothing, even at a zero threshold
    (zero,) = run(
        tmp_path, {"type": "torchvision"}, outputs, [BLACK], DetectParams(score_threshold=0.0), classes=TV_CLASSES,
        gated=("scores",),
    )  # fmt: skip
    assert zero == ()
    (cars,) = run(
        tmp_path, {"type": "torchvision"}, outputs, [WHITE], DetectParams(classes=frozenset({3})),
        classes=TV_CLASSES,
    )  # fmt: skip
    assert [d.label for d in cars] == ["car"]
