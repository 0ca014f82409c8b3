"""`classes=` takes ASCII ids and names only: Unicode digits are a clear 400, never a 500 or another class."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import numpy as np
import pytest
import pytest_asyncio

from detect_api.app import create_app
from detect_api.settings import Settings
from inference.pipeline import Detector
from tests.detect_api_support import FAKE_SPEC, FakeEngine, encode, serve, upload

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client() -> AsyncIterator[httpx.AsyncClient]:
    detector = Detector(FakeEngine(), FAKE_SPEC, max_batch_size=1, max_delay_ms=0.0, max_queue=4)
    await detector.start()
    try:
        async with serve(create_app(Settings(gpu_sample_interval_s=0), detector=detector)) as c:
            yield c
    finally:
        await detector.close()


IMAGE = encode(np.full((96, 96, 3), 127, np.uint8), ".png")


# '²' (superscript two) made int() raise: a 500. '٣' (Arabic-Indic three) and '３' (full-width) were read as 3,
# '𝟎' (mathematical bold zero) as 0: a class the caller never named.
@pytest.mark.parametrize("classes", ["²", "٣", "３", "𝟎", "person,²", "1٣"])
async def test_unicode_digits_are_a_400_json(client: httpx.AsyncClient, classes: str) -> None:
    r = await client.post("/detect", params={"classes": classes}, files=upload(IMAGE))
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "invalid_class_id"
    assert "ASCII" in r.json()["detail"]
    # ...and the server keeps serving.
    assert (await client.post("/detect", params={"classes": "0"}, files=upload(IMAGE))).status_code == 200


@pytest.mark.parametrize(("classes", "labels"), [("0", {"person"}), ("1", set()), ("person, 2", {"person"})])
async def test_ascii_ids_and_names_still_work(client: httpx.AsyncClient, classes: str, labels: set) -> None:
    r = await client.post("/detect", params={"classes": classes}, files=upload(IMAGE))
    assert r.status_code == 200, r.text
    assert {d["label"] for d in r.json()["detections"]} == labels
