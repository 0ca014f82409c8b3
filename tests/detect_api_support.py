"""Helpers for the detect API tests: an in-process client with the app's lifespan, encoders, metric reads."""

from __future__ import annotations

import struct
import threading
import zlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import cv2
import httpx
import numpy as np
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from inference.spec import ModelSpec, YoloV8DecoderSpec


@asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan (httpx's ASGITransport does not) and a client talking to it in-process."""
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://detect-api") as client,
    ):
        yield client


def encode(image: np.ndarray, ext: str = ".jpg") -> bytes:
    ok, buf = cv2.imencode(ext, image)
    assert ok, f"cv2 cannot encode {ext}"
    return buf.tobytes()


def upload(data: bytes, filename: str = "image.bin") -> dict[str, tuple[str, bytes, str]]:
    # application/octet-stream, as the web UI sends it: the API must go by the bytes, not the declared type.
    return {"file": (filename, data, "application/octet-stream")}


def png_header_only(width: int, height: int) -> bytes:
    """A small valid-looking PNG that declares width x height: signature, IHDR, a little IDAT, IEND."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    idat = zlib.compress(b"\0" * 200_000, 9)  # a few hundred bytes: far too little for the declared size
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def metric_value(text: str, name: str, labels: dict[str, str] | None = None) -> float | None:
    """The value of sample `name` whose labels include `labels`, from a /metrics body (None if absent)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in (labels or {}).items()):
                return float(sample.value)
    return None


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def nvml_works() -> bool:
    """Whether the real pynvml reaches a driver here (the GPU machine) or not (CI, development)."""
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    pynvml.nvmlShutdown()
    return True


class FakeEngine:
    """YOLOv8 layout, 64x64 input, one confident 'person' box in the middle of the image.

    `gate` (a threading.Event) holds infer() until set, and `entered` says that a batch is inside; `fail`
    makes infer() raise.
    """

    backend = "fake"
    provider = "FakeProvider"
    on_gpu = False

    def __init__(self) -> None:
        self.max_batch_size = 8
        self.max_concurrency = 1  # the tests below hold one batch at the gate and count what waits
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.fail = False
        self.calls = 0

    def load(self) -> None:
        return None

    def warmup(self, batch_sizes: tuple[int, ...] = (1,)) -> None:
        return None

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        self.calls += 1
        self.entered.set()
        if not self.gate.wait(timeout=30):
            raise TimeoutError("the test never opened the gate")
        if self.fail:
            raise RuntimeError("the fake GPU fell off the bus")
        out = np.zeros((batch.shape[0], 4 + 3, 1), np.float32)
        out[:, :4, 0] = (32, 32, 32, 32)  # cx, cy, w, h in input pixels
        out[:, 4:, 0] = (0.9, 0.05, 0.05)
        return {"output0": out}

    def close(self) -> None:
        return None


FAKE_SPEC = ModelSpec(
    name="fake-yolo",
    input_width=64,
    input_height=64,
    class_names=("person", "cup", "cat"),
    decoder=YoloV8DecoderSpec(),
)
