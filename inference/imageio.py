"""Bounded image decoding for uploads, and JPEG encoding for annotated replies.

Untrusted bytes: the header is read first (Pillow's `Image.open` is lazy) and the declared size checked
against `max_pixels` before a single pixel buffer exists, so a few-KB file declaring 30000x30000 costs
nothing. Only the supported formats' parsers ever see the pixel data.

Plain JPEGs (most uploads) are decoded by libjpeg-turbo through simplejpeg, straight into BGR, in strict
mode: any libjpeg warning (a truncated file, corrupt data) is an error there. Such a file, and every JPEG
that needs Pillow anyway (EXIF rotation, CMYK), then goes through Pillow, which decides as it always did:
benign warnings pass, truncation is refused. Decoding a 640x480 JPEG takes 0.6 ms this way instead of
3 ms through Pillow, numpy and cv2's channel swap.
"""

from __future__ import annotations

import io
import struct
import zlib

import cv2
import numpy as np
import simplejpeg
from PIL import Image, ImageOps, UnidentifiedImageError

from inference.errors import ImageTooLargeError, InvalidImageError, UnsupportedImageTypeError
from inference.preprocess import validate_image

SUPPORTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP"})
# Pillow reports many camera JPEGs (with a multi-picture header) as "MPO"; they are JPEGs to the user.
_FORMAT_ALIASES = {"MPO": "JPEG"}
_OPEN_FORMATS = tuple(sorted(SUPPORTED_FORMATS))
# What Pillow raises on malformed input, across its plugins and decoders.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError, struct.error, zlib.error)
_BACKGROUND = (255, 255, 255)  # transparent pixels become white, as browsers show them
_ORIENTATION = 0x0112  # EXIF tag: how to rotate/flip the stored pixels for display
_FAST_JPEG_MODES = frozenset({"RGB", "L"})  # YCbCr and greyscale JPEGs; libjpeg-turbo makes BGR of both


def decode_image(data: bytes, *, max_pixels: int) -> np.ndarray:
    """Encoded bytes -> HxWx3 uint8 BGR, upright per EXIF orientation.

    Raises InvalidImageError (empty, not an image, corrupt or truncated), UnsupportedImageTypeError (a real
    image of another format) or ImageTooLargeError (declares more than `max_pixels` pixels).
    """
    if not data:
        raise InvalidImageError("empty image data")
    try:
        img = Image.open(io.BytesIO(data), formats=_OPEN_FORMATS)
    except Image.DecompressionBombError as e:
        # Pillow's own guard fires in open() for sizes far above its default limit.
        raise ImageTooLargeError(f"image declares more than {max_pixels} pixels: {e}") from e
    except UnidentifiedImageError as e:
        other = _identify(data)
        if other is not None:
            raise UnsupportedImageTypeError(
                f"{other} images are not supported; send one of {', '.join(_OPEN_FORMATS)}"
            ) from e
        raise InvalidImageError("data is not a recognised image") from e
    except _DECODE_ERRORS as e:
        raise InvalidImageError(f"unreadable image header: {e}") from e

    with img:
        fmt = _FORMAT_ALIASES.get(str(img.format), str(img.format))
        width, height = img.size
        if width <= 0 or height <= 0:
            raise InvalidImageError(f"image declares an empty size {width}x{height}")
        if width * height > max_pixels:
            raise ImageTooLargeError(
                f"image is {width}x{height} = {width * height} pixels, more than the limit of {max_pixels}"
            )
        if fmt == "JPEG" and img.mode in _FAST_JPEG_MODES and _orientation(img) == 1:
            fast = _decode_jpeg_strict(data)
            if fast is not None:
                return fast
        try:
            img.load()  # raises on truncated data: ImageFile.LOAD_TRUNCATED_IMAGES stays False
            if fmt == "JPEG":
                ImageOps.exif_transpose(img, in_place=True)  # in place: no copy for upright images
            return _to_bgr(img)
        except _DECODE_ERRORS as e:
            raise InvalidImageError(f"corrupt or truncated {fmt} image: {e}") from e


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(_ORIENTATION, 1))
    except _DECODE_ERRORS:  # a malformed EXIF block: let the Pillow path deal with it
        return 0


def _decode_jpeg_strict(data: bytes) -> np.ndarray | None:
    """HxWx3 BGR, or None when libjpeg reports anything at all (Pillow then decides)."""
    try:
        image: np.ndarray = simplejpeg.decode_jpeg(data, colorspace="BGR", strict=True)
    except ValueError:
        return None
    return image


def _identify(data: bytes) -> str | None:
    """The format Pillow sees in `data` with every plugin enabled (header only), or None."""
    try:
        with Image.open(io.BytesIO(data)) as other:
            return str(other.format)
    except (UnidentifiedImageError, Image.DecompressionBombError, *_DECODE_ERRORS):
        return None


def _to_bgr(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale (PNG): scale to 8 bits instead of letting a conversion clip at 255.
        grey = (np.asarray(img, dtype=np.uint32) // 257).clip(0, 255).astype(np.uint8)
        return cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    if mode == "F":
        grey = np.asarray(img, dtype=np.float32).clip(0, 255).astype(np.uint8)
        return cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info)
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*_BACKGROUND, 255))
        rgb = Image.alpha_composite(background, rgba).convert("RGB")
    elif mode != "RGB":
        rgb = img.convert("RGB")
    else:
        rgb = img
    return cv2.cvtColor(np.asarray(rgb), cv2.COLOR_RGB2BGR)


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    """HxWx3 uint8 BGR -> JPEG bytes."""
    validate_image(image)
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be 1..100, got {quality}")
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise InvalidImageError("cv2 could not encode the image as JPEG")
    return buf.tobytes()
