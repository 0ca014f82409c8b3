from __future__ import annotations

import io
import struct
import time
import tracemalloc
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image, ImageFile

from inference.errors import ImageTooLargeError, InvalidImageError, UnsupportedImageTypeError
from inference.imageio import SUPPORTED_FORMATS, decode_image, encode_jpeg

MAX = 10_000_000


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[:, :, ::-1])  # BGR


def pil_bytes(image: Image.Image, fmt: str, **options: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


def bgr_to_pil(image: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(image[:, :, ::-1]))


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def huge_png(width: int, height: int) -> bytes:
    """A valid PNG header declaring width x height RGB, with a tiny compressed IDAT (a few KB on disk)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\0" * ((1 + 3 * width) * 50), 9)
    return (
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", rows) + png_chunk(b"IEND", b"")
    )


def test_supported_formats() -> None:
    assert {"JPEG", "PNG", "WEBP", "BMP"} == SUPPORTED_FORMATS


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "WEBP"])
def test_lossless_round_trip(photo: np.ndarray, fmt: str) -> None:
    options = {"lossless": True} if fmt == "WEBP" else {}
    decoded = decode_image(pil_bytes(bgr_to_pil(photo), fmt, **options), max_pixels=MAX)
    assert decoded.dtype == np.uint8 and decoded.flags.c_contiguous
    np.testing.assert_array_equal(decoded, photo)


def test_jpeg_round_trip_is_bgr(photo: np.ndarray) -> None:
    decoded = decode_image(encode_jpeg(photo, quality=95), max_pixels=MAX)
    assert decoded.shape == photo.shape
    assert np.abs(decoded.astype(int) - photo).mean() < 3  # lossy, but channels not swapped


def test_encode_jpeg_quality_changes_size(photo: np.ndarray) -> None:
    small, large = encode_jpeg(photo, quality=20), encode_jpeg(photo, quality=95)
    assert small[:2] == b"\xff\xd8" and len(small) < len(large)
    with pytest.raises(ValueError):
        encode_jpeg(photo, quality=0)
    with pytest.raises(InvalidImageError):
        encode_jpeg(np.zeros((4, 4), np.uint8))


@pytest.mark.parametrize(
    ("mode", "value", "expected_bgr"),
    [
        ("L", 77, (77, 77, 77)),
        ("RGBA", (10, 20, 30, 255), (30, 20, 10)),
        ("RGBA", (10, 20, 30, 0), (255, 255, 255)),  # fully transparent -> white background
        ("LA", (50, 255), (50, 50, 50)),
        ("I;16", 65535, (255, 255, 255)),  # 16-bit grey is scaled, not clipped
        ("I;16", 32896, (128, 128, 128)),
    ],
)
def test_modes_are_converted_to_bgr(mode: str, value: object, expected_bgr: tuple[int, int, int]) -> None:
    decoded = decode_image(pil_bytes(Image.new(mode, (5, 4), value), "PNG"), max_pixels=MAX)  # type: ignore[arg-type]
    assert decoded.shape == (4, 5, 3)
    assert (decoded == expected_bgr).all()


def test_palette_png() -> None:
    image = Image.new("RGB", (6, 3), (200, 100, 50)).convert("P", palette=Image.Palette.ADAPTIVE)
    decoded = decode_image(pil_bytes(image, "PNG"), max_pixels=MAX)
    assert (decoded == (50, 100, 200)).all()


def test_exif_orientation_is_applied() -> None:
    # Stored 4 wide x 2 tall, left half red; orientation 6 means "rotate 90 degrees clockwise to display".
    stored = np.zeros((2, 4, 3), np.uint8)
    stored[:, :2] = (255, 0, 0)  # RGB red
    exif = Image.Exif()
    exif[0x0112] = 6
    data = pil_bytes(Image.fromarray(stored), "JPEG", exif=exif, quality=100)
    decoded = decode_image(data, max_pixels=MAX)
    assert decoded.shape == (4, 2, 3)
    # After rotating clockwise the red (left) half is on top.
    assert decoded[0, :, 2].min() > 200 and decoded[-1, :, 2].max() < 60


def test_huge_declared_size_is_refused_before_any_allocation() -> None:
    data = huge_png(30_000, 30_000)
    assert len(data) < 16_000
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(ImageTooLargeError):
            decode_image(data, max_pixels=MAX)
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10 * 2**20  # a decoded 30000x30000 RGB image would be 2.7 GB
    assert elapsed < 1.0


def test_limit_is_our_own_not_pillows() -> None:
    # 2000x2000 is far below Pillow's decompression-bomb limit; our limit of 1 Mpx still refuses it.
    data = huge_png(2000, 2000)
    tracemalloc.start()
    try:
        with pytest.raises(ImageTooLargeError, match="2000x2000"):
            decode_image(data, max_pixels=1_000_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * 2**20
    # Exactly at the limit it is decoded (Pillow zero-fills rows after a complete but short zlib stream).
    assert decode_image(data, max_pixels=4_000_000).shape == (2000, 2000, 3)


@pytest.mark.parametrize(
    "data", [b"", b"hello, world", b"\x89PNG\r\n\x1a\n" + b"\0" * 40, b"\xff\xd8\xff" + b"x" * 9]
)
def test_not_an_image(data: bytes) -> None:
    with pytest.raises(InvalidImageError) as info:
        decode_image(data, max_pixels=MAX)
    assert type(info.value) is InvalidImageError


@pytest.mark.parametrize("fmt", ["GIF", "TIFF", "ICO"])
def test_real_images_of_other_formats_are_unsupported(photo: np.ndarray, fmt: str) -> None:
    data = pil_bytes(bgr_to_pil(photo[:64, :64]), fmt)
    with pytest.raises(UnsupportedImageTypeError, match=fmt):
        decode_image(data, max_pixels=MAX)


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.99])
def test_truncated_jpeg_is_invalid(photo: np.ndarray, keep: float) -> None:
    data = encode_jpeg(photo)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    with pytest.raises(InvalidImageError, match="truncated"):
        decode_image(data[: int(len(data) * keep)], max_pixels=MAX)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # never flipped globally


def test_truncated_png_is_invalid(photo: np.ndarray) -> None:
    data = pil_bytes(bgr_to_pil(photo), "PNG")
    with pytest.raises(InvalidImageError):
        decode_image(data[: len(data) // 2], max_pixels=MAX)


def test_corrupt_png_is_invalid(photo: np.ndarray) -> None:
    data = bytearray(pil_bytes(bgr_to_pil(photo), "PNG"))
    data[len(data) // 2 : len(data) // 2 + 64] = b"\xaa" * 64  # garbage inside the compressed stream
    with pytest.raises(InvalidImageError):
        decode_image(bytes(data), max_pixels=MAX)


def test_decoded_image_works_with_cv2(photo: np.ndarray) -> None:
    decoded = decode_image(pil_bytes(bgr_to_pil(photo), "PNG"), max_pixels=MAX)
    cv2.rectangle(decoded, (0, 0), (10, 10), (0, 0, 255), 2)  # writable, contiguous


def pillow_bgr(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])


@pytest.mark.parametrize("grey", [False, True])
def test_fast_jpeg_path_gives_pillows_pixels(photo: np.ndarray, grey: bool) -> None:
    # Plain JPEGs go through libjpeg-turbo (simplejpeg) straight to BGR: the same pixels Pillow gives.
    source = bgr_to_pil(photo).convert("L") if grey else bgr_to_pil(photo)
    data = pil_bytes(source, "JPEG", quality=90)
    decoded = decode_image(data, max_pixels=MAX)
    assert decoded.shape == (*photo.shape[:2], 3) and decoded.flags.c_contiguous and decoded.flags.writeable
    np.testing.assert_array_equal(decoded, pillow_bgr(data))


@pytest.mark.parametrize("garbage", [b"\xff\xd0" * 4, b"\xaa" * 64])
def test_jpeg_with_libjpeg_warnings_is_decoded_as_pillow_does(photo: np.ndarray, garbage: bytes) -> None:
    # Corrupt scan data is only a warning to libjpeg: the strict fast path declines it and Pillow (which
    # shows such files, as browsers do) decides, so the fast path refuses nothing that was accepted before.
    data = bytearray(encode_jpeg(photo))
    middle = len(data) // 2
    data[middle : middle + len(garbage)] = garbage
    decoded = decode_image(bytes(data), max_pixels=MAX)
    np.testing.assert_array_equal(decoded, pillow_bgr(bytes(data)))


def test_cmyk_jpeg_is_decoded(photo: np.ndarray) -> None:
    data = pil_bytes(bgr_to_pil(photo).convert("CMYK"), "JPEG", quality=95)
    decoded = decode_image(data, max_pixels=MAX)
    assert decoded.shape == photo.shape
    assert np.abs(decoded.astype(int) - photo).mean() < 8
