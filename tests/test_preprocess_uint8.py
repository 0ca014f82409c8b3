"""Pre-processing for uint8-input models (normalisation in the graph): only the resize and the letterbox
happen here, and normalising its output by hand gives exactly what the float path hands a float model."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from inference.preprocess import input_shape, preprocess, preprocess_one
from inference.spec import ModelSpec
from tests.test_preprocess import MEAN, STD, make_spec

FORMATS = ["uint8-nhwc", "uint8-nchw"]


def normalise_by_hand(u8: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """What the exported graph does to the uint8 tensor: to NCHW, float, channel order, (x - mean) / std."""
    x = u8 if spec.input_layout == "NCHW" else u8.transpose(2, 0, 1)
    x = x.astype(np.float32)
    if spec.color == "RGB":
        x = x[::-1]
    x = (x - np.asarray(spec.mean, np.float32)[:, None, None]) * (1 / np.asarray(spec.std, np.float32))[
        :, None, None
    ]
    return x if spec.layout == "NCHW" else x.transpose(1, 2, 0)


@pytest.fixture
def photo() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (480, 640, 3), dtype=np.uint8)


@pytest.mark.parametrize("input_format", FORMATS)
def test_stretch_is_the_plain_resize(photo: np.ndarray, input_format: str) -> None:
    spec = make_spec(input_format=input_format)
    tensor, transform = preprocess_one(photo, spec)
    assert tensor.dtype == np.uint8 and tensor.shape == input_shape(spec)
    resized = cv2.resize(photo, (416, 416), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(
        tensor, resized if input_format == "uint8-nhwc" else resized.transpose(2, 0, 1)
    )
    assert (transform.scale_x, transform.scale_y) == (416 / 640, 416 / 480)


@pytest.mark.parametrize("input_format", FORMATS)
@pytest.mark.parametrize("color", ["BGR", "RGB"])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("resize", ["stretch", "letterbox"])
def test_uint8_normalised_by_the_graph_equals_the_float_path(
    photo: np.ndarray, input_format: str, color: str, layout: str, resize: str
) -> None:
    fields = {"color": color, "layout": layout, "resize": resize, "mean": MEAN, "std": STD}
    float_spec = make_spec(**fields)
    uint8_spec = make_spec(**fields, input_format=input_format)
    expected, t_float = preprocess_one(photo, float_spec)
    got, t_uint8 = preprocess_one(photo, uint8_spec)
    assert t_float == t_uint8
    np.testing.assert_allclose(normalise_by_hand(got, uint8_spec), expected, rtol=0, atol=1e-5)


def test_letterbox_pads_with_the_pad_value_in_the_input_layout(photo: np.ndarray) -> None:
    spec = make_spec(input_format="uint8-nchw", resize="letterbox", pad_value=114)
    tensor, transform = preprocess_one(photo, spec)
    assert (transform.pad_x, transform.pad_y) == (0.0, 52.0)  # 640x480 -> 416x312, 52 rows above and below
    assert (tensor[:, :52] == 114).all() and (tensor[:, 364:] == 114).all()
    np.testing.assert_array_equal(
        tensor[:, 52:364], cv2.resize(photo, (416, 312), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)
    )


def test_batch_is_uint8_and_rows_match_single_images(photo: np.ndarray) -> None:
    spec = make_spec(input_format="uint8-nhwc", resize="letterbox")
    small = photo[:100, :300].copy()
    batch, transforms = preprocess([photo, small, photo], spec)
    assert batch.dtype == np.uint8 and batch.shape == (3, 416, 416, 3)
    for image, row, transform in zip([photo, small, photo], batch, transforms, strict=True):
        single, t = preprocess_one(image, spec)
        np.testing.assert_array_equal(row, single)
        assert t == transform
    assert batch.nbytes * 4 == preprocess([photo, small, photo], make_spec(resize="letterbox"))[0].nbytes


def test_out_must_have_the_input_dtype(photo: np.ndarray) -> None:
    spec = make_spec(input_format="uint8-nhwc")
    with pytest.raises(ValueError, match="uint8"):
        preprocess_one(photo, spec, out=np.empty((416, 416, 3), np.float32))
