"""Image -> model input tensor (resize, colour order, normalisation, layout), and the way back for boxes.

Vectorised with cv2 and numpy: one resize, one split, then in-place arithmetic on contiguous channel planes
(about 0.4 ms for 640x480 -> 416x416 on one core), never a Python loop over pixels. A model whose spec says
a uint8 input_format has the normalisation in its graph: then this only resizes (and letterboxes) into uint8
BGR, in the input's layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from inference.errors import InvalidImageError
from inference.spec import ModelSpec


@dataclass(frozen=True)
class Transform:
    """How one source image was mapped into the model input: input = source * scale + pad."""

    src_w: int
    src_h: int
    scale_x: float
    scale_y: float
    pad_x: float
    pad_y: float

    def to_source(self, boxes: np.ndarray) -> np.ndarray:
        """[K, 4] x1, y1, x2, y2 in input pixels -> source-image pixels, clipped to the image."""
        out = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
        out[:, 0::2] = (out[:, 0::2] - self.pad_x) / self.scale_x
        out[:, 1::2] = (out[:, 1::2] - self.pad_y) / self.scale_y
        np.clip(out[:, 0::2], 0.0, float(self.src_w), out=out[:, 0::2])
        np.clip(out[:, 1::2], 0.0, float(self.src_h), out=out[:, 1::2])
        return out


def input_shape(spec: ModelSpec) -> tuple[int, int, int]:
    """The shape of one image's tensor (no batch axis) in the served input's layout."""
    if spec.input_layout == "NCHW":
        return (3, spec.input_height, spec.input_width)
    return (spec.input_height, spec.input_width, 3)


def validate_image(image: object) -> np.ndarray:
    """Every entry point takes HxWx3 uint8 BGR; anything else is the caller's error, said plainly."""
    if not isinstance(image, np.ndarray):
        raise InvalidImageError(f"expected a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise InvalidImageError(f"expected an HxWx3 uint8 BGR image, got {image.dtype} {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise InvalidImageError(f"empty image {image.shape}")
    return image


def _channel_planes(out: np.ndarray, spec: ModelSpec) -> list[np.ndarray]:
    """Views of the three channel planes of `out` (H x W each), in model channel order."""
    if spec.input_layout == "NCHW":
        return [out[0], out[1], out[2]]
    return [out[:, :, 0], out[:, :, 1], out[:, :, 2]]


def preprocess_one(
    image: np.ndarray, spec: ModelSpec, out: np.ndarray | None = None
) -> tuple[np.ndarray, Transform]:
    """One HxWx3 uint8 BGR image -> the model's input tensor for it, (3,H,W) or (H,W,3) per the spec, and its
    Transform: float32 and normalised, or uint8 BGR for a spec with a uint8 input_format.

    `out`, when given, is filled in place (e.g. one row of a preallocated batch) and returned.
    """
    validate_image(image)
    src_h, src_w = image.shape[:2]
    in_w, in_h = spec.input_width, spec.input_height
    shape = input_shape(spec)
    dtype = np.dtype(spec.input_dtype)
    if out is None:
        out = np.empty(shape, dtype=dtype)
    elif out.shape != shape or out.dtype != dtype:
        raise ValueError(f"out must be {dtype} {shape}, got {out.dtype} {out.shape}")

    if spec.resize == "stretch":
        new_w, new_h, pad_x, pad_y = in_w, in_h, 0, 0
    else:
        ratio = min(in_w / src_w, in_h / src_h)
        new_w = max(1, min(in_w, round(src_w * ratio)))
        new_h = max(1, min(in_h, round(src_h * ratio)))
        pad_x, pad_y = (in_w - new_w) // 2, (in_h - new_h) // 2
    transform = Transform(
        src_w=src_w,
        src_h=src_h,
        scale_x=new_w / src_w,
        scale_y=new_h / src_h,
        pad_x=float(pad_x),
        pad_y=float(pad_y),
    )
    if dtype == np.uint8:
        _fill_uint8(image, out, spec, new_w, new_h, pad_x, pad_y)
        return out, transform

    mean = np.asarray(spec.mean, dtype=np.float32)
    inv_std = 1.0 / np.asarray(spec.std, dtype=np.float32)
    planes = _channel_planes(out, spec)
    if (new_w, new_h) != (in_w, in_h):
        # The padding is normalised like any pixel; the resized image then overwrites the centre.
        for c, plane in enumerate(planes):
            plane.fill((spec.pad_value - mean[c]) * inv_std[c])

    resized = _resize(image, new_w, new_h)
    bgr = cv2.split(resized)  # contiguous planes make the arithmetic below several times faster
    sources = bgr if spec.color == "BGR" else bgr[::-1]
    for c, plane in enumerate(planes):
        region = plane[pad_y : pad_y + new_h, pad_x : pad_x + new_w]
        region[...] = sources[c]
        region -= mean[c]
        region *= inv_std[c]
    return out, transform


def _resize(image: np.ndarray, new_w: int, new_h: int, dst: np.ndarray | None = None) -> np.ndarray:
    if (new_w, new_h) == (image.shape[1], image.shape[0]):
        if dst is None:
            return image
        dst[...] = image
        return dst
    if dst is None:
        return cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    return cv2.resize(image, (new_w, new_h), dst=dst, interpolation=cv2.INTER_LINEAR)


def _fill_uint8(
    image: np.ndarray, out: np.ndarray, spec: ModelSpec, new_w: int, new_h: int, pad_x: int, pad_y: int
) -> None:
    """uint8 BGR into `out` as it is (the graph normalises): NHWC takes cv2's resize output in place."""
    if spec.input_layout == "NHWC":
        if (new_w, new_h) == (spec.input_width, spec.input_height) and out.flags.c_contiguous:
            _resize(image, new_w, new_h, dst=out)  # straight into the batch row: no copy at all
            return
        out.fill(spec.pad_value)
        out[pad_y : pad_y + new_h, pad_x : pad_x + new_w] = _resize(image, new_w, new_h)
        return
    if (new_w, new_h) != (spec.input_width, spec.input_height):
        out.fill(spec.pad_value)
    resized = _resize(image, new_w, new_h)
    for c, plane in enumerate(cv2.split(resized)):  # BGR planes, the order the graph expects
        out[c, pad_y : pad_y + new_h, pad_x : pad_x + new_w] = plane


def preprocess(images: Sequence[np.ndarray], spec: ModelSpec) -> tuple[np.ndarray, list[Transform]]:
    """A batch of HxWx3 uint8 BGR images (any sizes) -> (N, ...) input tensor and one Transform each."""
    if len(images) == 0:
        raise InvalidImageError("no images to preprocess")
    batch = np.empty((len(images), *input_shape(spec)), dtype=spec.input_dtype)
    transforms = [preprocess_one(image, spec, out=batch[i])[1] for i, image in enumerate(images)]
    return batch, transforms
