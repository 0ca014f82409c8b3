from __future__ import annotations

import cv2
import numpy as np
import pytest

from inference.errors import InvalidImageError
from inference.preprocess import Transform, input_shape, preprocess, preprocess_one
from inference.spec import ModelSpec, NanoDetDecoderSpec

MEAN = (103.53, 116.28, 123.675)
STD = (57.375, 57.12, 58.395)


def make_spec(**overrides: object) -> ModelSpec:
    fields: dict[str, object] = {
        "name": "test",
        "input_width": 416,
        "input_height": 416,
        "mean": MEAN,
        "std": STD,
        "class_names": ("a", "b"),
        "decoder": NanoDetDecoderSpec(cls_outputs=("c8",), reg_outputs=("r8",), strides=(8,)),
    }
    fields.update(overrides)
    return ModelSpec.model_validate(fields)


def reference(image: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """The obvious float implementation, for stretch resizing."""
    resized = cv2.resize(image, (spec.input_width, spec.input_height), interpolation=cv2.INTER_LINEAR)
    if spec.color == "RGB":
        resized = resized[:, :, ::-1]
    x = (resized.astype(np.float64) - np.array(spec.mean)) / np.array(spec.std)
    return (x.transpose(2, 0, 1) if spec.layout == "NCHW" else x).astype(np.float32)


@pytest.fixture
def random_image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("color", ["BGR", "RGB"])
def test_stretch_matches_reference(random_image: np.ndarray, layout: str, color: str) -> None:
    spec = make_spec(layout=layout, color=color)
    tensor, transform = preprocess_one(random_image, spec)
    assert tensor.dtype == np.float32
    assert tensor.shape == input_shape(spec)
    np.testing.assert_allclose(tensor, reference(random_image, spec), atol=1e-5)
    assert transform == Transform(640, 480, 416 / 640, 416 / 480, 0.0, 0.0)


def test_colour_order_and_normalisation() -> None:
    image = np.empty((10, 20, 3), np.uint8)
    image[:] = (10, 20, 30)  # B, G, R
    bgr, _ = preprocess_one(image, make_spec(input_width=20, input_height=10))
    rgb, _ = preprocess_one(image, make_spec(input_width=20, input_height=10, color="RGB"))
    for c, value in enumerate((10, 20, 30)):
        assert np.allclose(bgr[c], (value - MEAN[c]) / STD[c])
    for c, value in enumerate((30, 20, 10)):
        assert np.allclose(rgb[c], (value - MEAN[c]) / STD[c])


def test_letterbox_pads_centred_with_pad_value() -> None:
    spec = make_spec(resize="letterbox", pad_value=114, mean=(0, 0, 0), std=(1, 1, 1))
    image = np.full((480, 640, 3), 200, np.uint8)
    tensor, transform = preprocess_one(image, spec)
    # 640x480 -> 416x312, centred vertically: 52 rows of padding above and below.
    assert transform == Transform(640, 480, 0.65, 0.65, 0.0, 52.0)
    assert np.all(tensor[:, :52, :] == 114)
    assert np.all(tensor[:, 52 + 312 :, :] == 114)
    assert np.all(tensor[:, 52 : 52 + 312, :] == 200)


def test_letterbox_tall_image_pads_horizontally() -> None:
    spec = make_spec(resize="letterbox", input_width=320, input_height=320, mean=(0, 0, 0), std=(1, 1, 1))
    image = np.zeros((640, 320, 3), np.uint8)
    image[:, :, 2] = 255
    tensor, transform = preprocess_one(image, spec)
    assert (transform.scale_x, transform.scale_y, transform.pad_x, transform.pad_y) == (0.5, 0.5, 80.0, 0.0)
    assert np.all(tensor[2, :, 80:240] == 255) and np.all(tensor[0, :, 80:240] == 0)
    assert np.all(tensor[:, :, :80] == 114) and np.all(tensor[:, :, 240:] == 114)


def test_letterbox_image_content_matches_resize(random_image: np.ndarray) -> None:
    spec = make_spec(resize="letterbox")
    tensor, t = preprocess_one(random_image, spec)
    inner = tensor[:, int(t.pad_y) : int(t.pad_y) + 312, :]
    expected = reference(random_image, make_spec(input_width=416, input_height=312))
    np.testing.assert_allclose(inner, expected, atol=1e-5)


def test_transform_round_trip_and_clipping() -> None:
    t = Transform(src_w=640, src_h=480, scale_x=0.65, scale_y=0.65, pad_x=0.0, pad_y=52.0)
    src = np.array([[100.0, 50.0, 300.0, 400.0]])
    in_input = np.array([[100 * 0.65, 50 * 0.65 + 52, 300 * 0.65, 400 * 0.65 + 52]])
    np.testing.assert_allclose(t.to_source(in_input), src, rtol=1e-5)
    # Boxes reaching into the padding are clipped to the image.
    np.testing.assert_allclose(t.to_source(np.array([[-10.0, 0.0, 500.0, 416.0]])), [[0, 0, 640, 480]])


def test_batch_of_mixed_sizes_matches_single(random_image: np.ndarray) -> None:
    spec = make_spec(resize="letterbox")
    images = [random_image, random_image[:100, :333].copy(), np.zeros((416, 416, 3), np.uint8)]
    batch, transforms = preprocess(images, spec)
    assert batch.shape == (3, 3, 416, 416)
    for i, image in enumerate(images):
        single, transform = preprocess_one(image, spec)
        np.testing.assert_array_equal(batch[i], single)
        assert transforms[i] == transform
    assert transforms[2] == Transform(416, 416, 1.0, 1.0, 0.0, 0.0)


def test_non_contiguous_input_is_accepted(random_image: np.ndarray) -> None:
    spec = make_spec()
    view = random_image[::2, ::2]
    tensor, _ = preprocess_one(view, spec)
    np.testing.assert_allclose(tensor, reference(np.ascontiguousarray(view), spec), atol=1e-5)


def test_out_is_filled_in_place(random_image: np.ndarray) -> None:
    spec = make_spec()
    out = np.zeros(input_shape(spec), np.float32)
    tensor, _ = preprocess_one(random_image, spec, out=out)
    assert tensor is out and out.any()
    with pytest.raises(ValueError):
        preprocess_one(random_image, spec, out=np.zeros((416, 416, 3), np.float32))


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((10, 10), np.uint8),
        np.zeros((10, 10, 4), np.uint8),
        np.zeros((10, 10, 3), np.float32),
        np.zeros((0, 10, 3), np.uint8),
        [[[0, 0, 0]]],
    ],
    ids=["grey", "bgra", "float", "empty", "list"],
)
def test_rejects_malformed_images(bad: object) -> None:
    with pytest.raises(InvalidImageError):
        preprocess_one(bad, make_spec())  # type: ignore[arg-type]


def test_empty_batch_rejected() -> None:
    with pytest.raises(InvalidImageError):
        preprocess([], make_spec())
