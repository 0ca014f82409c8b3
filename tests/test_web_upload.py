"""The upload page under Streamlit's AppTest, against a real detect API (real model) served by uvicorn on a
free loopback port in a thread: real photos in, the backend's detections and annotated image out; its
errors, an unreachable backend and a slow one shown as messages, never as tracebacks."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import requests
import uvicorn
from streamlit.testing.v1 import AppTest

from detect_api.app import create_app
from detect_api.settings import Settings as ApiSettings
from tests.web_servers import LOOPBACK, ROOT, free_port
from web.api_client import DetectClient, DetectParams

APP = str(ROOT / "web" / "app.py")
SCRIPT_TIMEOUT_S = 60  # one script run: a few /detect calls on a busy 2-core machine


@pytest.fixture(scope="module")
def detect_api_url(model_dir: Path) -> Iterator[str]:
    """The real detect API with the real model, on a free loopback port."""
    port = free_port()
    settings = ApiSettings(model_dir=model_dir, host=LOOPBACK, port=port, gpu_sample_interval_s=0)
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host=LOOPBACK, port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, name="detect-api", daemon=True)
    thread.start()
    url = f"http://{LOOPBACK}:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if requests.get(f"{url}/readyz", timeout=1).status_code == 200:
                break
        except requests.RequestException:
            pass
        assert thread.is_alive(), "the detect API thread died while starting"
        assert time.monotonic() < deadline, "the detect API was not ready within 60 s"
        time.sleep(0.1)  # polling readiness until the deadline
    yield url
    server.should_exit = True
    thread.join(timeout=15)


def ui(monkeypatch: pytest.MonkeyPatch, detect_api_url: str, **env: str) -> AppTest:
    """The whole app (navigation, sidebar, the default Upload page), configured like `make run` does it."""
    monkeypatch.setenv("RTDETECT_UI_DETECT_API_URL", detect_api_url)
    monkeypatch.setenv("RTDETECT_UI_USE_MEDIA_SERVER_ICE", "false")
    for key, value in env.items():
        monkeypatch.setenv(f"RTDETECT_UI_{key.upper()}", value)
    at = AppTest.from_file(APP, default_timeout=SCRIPT_TIMEOUT_S)
    at.run()
    assert not at.exception, at.exception
    return at


def jpeg(image_bgr: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", image_bgr)
    assert ok
    return buf.tobytes()


def messages(elements: object) -> list[str]:
    return [str(e.value) for e in elements]  # type: ignore[attr-defined]


def test_a_photo_of_a_person_shows_a_person_row(
    monkeypatch: pytest.MonkeyPatch, detect_api_url: str, photos: dict[str, np.ndarray]
) -> None:
    at = ui(monkeypatch, detect_api_url)
    assert not at.error
    # The class filter offers the model's classes, from GET /model.
    assert "person" in at.multiselect[0].options

    at.file_uploader[0].set_value(("astronaut.jpg", jpeg(photos["astronaut"]), "image/jpeg"))
    at.run()
    assert not at.exception, at.exception
    assert not at.error, messages(at.error)

    table = at.dataframe[0].value
    people = table[table["label"] == "person"]
    assert len(people) == 1, table
    person = people.iloc[0]
    assert person["score"] >= 0.35
    # The astronaut fills most of the 512x512 photo (about [14, 14, 364, 507]).
    assert person["x2"] - person["x1"] > 250 and person["y2"] - person["y1"] > 400
    # The backend's annotated JPEG is shown, with the photo's size in its caption.
    [image] = at.image
    assert "512x512, 1 object" in image.captions[0]
    # Timings from the backend: inference and total, and every stage in the caption.
    timings = {m.label: m.value for m in at.metric}
    assert set(timings) == {"Inference", "Total"}
    assert float(timings["Total"].removesuffix(" ms")) > float(timings["Inference"].removesuffix(" ms")) > 0
    [breakdown] = [c.value for c in at.caption if c.value.startswith("Backend timings:")]
    assert all(stage in breakdown for stage in ("decode", "preprocess", "inference", "postprocess", "total"))


def test_the_client_returns_the_backends_annotated_image(
    detect_api_url: str, photos: dict[str, np.ndarray]
) -> None:
    result = DetectClient(detect_api_url, 30).detect(
        "astronaut.jpg", jpeg(photos["astronaut"]), DetectParams()
    )
    assert [d["label"] for d in result.detections] == ["person"]
    annotated = cv2.imdecode(np.frombuffer(result.annotated_jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert annotated.shape == photos["astronaut"].shape
    # The backend drew the person's box: its left edge is red where the photo itself is not.
    x1, y1, _, y2 = (round(v) for v in result.detections[0]["box"])

    def red_share(image: np.ndarray) -> float:
        b, g, r = (image[y1 + 50 : y2 - 50, x1, i].astype(int) for i in range(3))
        return float(np.mean((r > 150) & (r - g > 80) & (r - b > 80)))

    assert red_share(annotated) > 0.9 and red_share(photos["astronaut"]) < 0.2


def test_several_photos_and_the_class_filter(
    monkeypatch: pytest.MonkeyPatch, detect_api_url: str, photos: dict[str, np.ndarray]
) -> None:
    at = ui(monkeypatch, detect_api_url)
    at.multiselect[0].set_value(["cup"])
    at.file_uploader[0].set_value(
        [
            ("astronaut.jpg", jpeg(photos["astronaut"]), "image/jpeg"),
            ("coffee.jpg", jpeg(photos["coffee"]), "image/jpeg"),
        ]
    )
    at.run()
    assert not at.exception and not at.error, messages(at.error)
    assert [s.value for s in at.subheader] == ["astronaut.jpg", "coffee.jpg"]
    # The backend kept only cups: none in the astronaut photo, one in the coffee photo.
    assert "No objects above the score threshold." in messages(at.info)
    assert len(at.dataframe) == 1
    assert set(at.dataframe[0].value["label"]) == {"cup"}


def test_a_file_the_backend_rejects_shows_its_json_error(
    monkeypatch: pytest.MonkeyPatch, detect_api_url: str
) -> None:
    content = b"these are my notes, not a photo\n" * 10
    # What the detect API itself says about this file.
    answer = requests.post(f"{detect_api_url}/detect", files={"file": ("notes.txt", content)}, timeout=10)
    assert answer.status_code >= 400
    body = answer.json()

    at = ui(monkeypatch, detect_api_url)
    at.file_uploader[0].set_value(("notes.txt", content, "text/plain"))
    at.run()
    assert not at.exception, at.exception
    [error] = messages(at.error)
    assert "notes.txt" in error
    assert body["error"] in error and body["detail"] in error
    assert not at.dataframe and not at.image


def test_a_backend_that_is_down_is_named_in_a_clear_message(
    monkeypatch: pytest.MonkeyPatch, photos: dict[str, np.ndarray]
) -> None:
    down = f"http://{LOOPBACK}:{free_port()}"  # nothing listens there
    at = ui(monkeypatch, down)
    [error] = messages(at.error)
    assert f"Cannot reach the detect API at {down}" in error
    # Without the backend the class filter cannot be filled, and says why.
    assert at.multiselect[0].proto.disabled

    at.file_uploader[0].set_value(("astronaut.jpg", jpeg(photos["astronaut"]), "image/jpeg"))
    at.run()
    assert not at.exception, at.exception
    assert len(at.error) == 1  # said once, not once per photo
    assert "Not analysed: the detect API is unavailable." in messages(at.caption)


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A TCP port that accepts connections and never answers: a backend stuck on a request."""
    with socket.socket() as listener:
        listener.bind((LOOPBACK, 0))
        listener.listen(8)
        yield f"http://{LOOPBACK}:{listener.getsockname()[1]}"


def test_a_slow_backend_times_out_with_a_clear_message(
    monkeypatch: pytest.MonkeyPatch, silent_server: str
) -> None:
    started = time.monotonic()
    at = ui(monkeypatch, silent_server, request_timeout_s="0.5")
    assert time.monotonic() - started < SCRIPT_TIMEOUT_S / 2
    [error] = messages(at.error)
    assert f"The detect API at {silent_server} did not answer within 0.5 s" in error
