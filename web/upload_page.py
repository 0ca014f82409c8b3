"""The upload page: photos go to the detect API's POST /detect; the page shows what the backend returns."""

from __future__ import annotations

import hashlib

import pandas as pd
import streamlit as st

from web.api_client import ApiError, BackendRejected, DetectClient, DetectParams, DetectResult
from web.settings import Settings

TIMING_KEYS = ("decode", "preprocess", "inference", "postprocess", "total")


@st.cache_data(ttl=60, show_spinner=False)
def _model_classes(base_url: str, timeout_s: float, headers: dict[str, str]) -> list[str]:
    # Failures raise and are not cached: the next rerun asks again once the backend is up. The headers (the
    # API key) are part of the cache key: an answer got with one key is not served to a caller with another.
    return DetectClient(base_url, timeout_s, headers=headers).model_classes()


# Streamlit reruns the whole page on every slider move: without this cache every photo would be sent
# again. Keyed on the content digest; errors raise and are not cached.
@st.cache_data(max_entries=128, show_spinner=False)
def _detect(
    base_url: str,
    timeout_s: float,
    filename: str,
    digest: str,
    _content: bytes,
    params: DetectParams,
    headers: dict[str, str],
) -> DetectResult:
    return DetectClient(base_url, timeout_s, headers=headers).detect(filename, _content, params)


def detections_table(result: DetectResult) -> pd.DataFrame:
    rows = []
    for d in result.detections:
        x1, y1, x2, y2 = (round(float(v)) for v in d.get("box", (0, 0, 0, 0)))
        rows.append(
            {
                "label": d.get("label"),
                "score": round(float(d.get("score", 0.0)), 3),
                "x1": x1,
                "y1": y1,
                "x2": x2,
                "y2": y2,
                "class_id": d.get("class_id"),
            }
        )
    return pd.DataFrame(rows, columns=["label", "score", "x1", "y1", "x2", "y2", "class_id"])


def render(settings: Settings) -> None:
    st.title("Detect objects in photos")
    st.caption(f"Each photo is sent to the detect API at {settings.detect_api_url}; boxes are drawn there.")

    classes: list[str] = []
    backend_error: str | None = None
    try:
        classes = _model_classes(settings.detect_api_url, settings.request_timeout_s, settings.auth_headers())
    except ApiError as e:
        backend_error = str(e)
        st.error(backend_error, icon=":material/cloud_off:")

    score_col, iou_col, max_col = st.columns(3)
    score = score_col.slider(
        "Score threshold", 0.0, 1.0, 0.35, 0.05, help="Hide detections below this score."
    )
    iou = iou_col.slider(
        "IoU threshold",
        0.05,
        1.0,
        0.6,
        0.05,
        help="Non-maximum suppression: overlap above which boxes merge.",
    )
    max_detections = max_col.number_input("Max detections", 1, 300, 100, step=10)
    chosen = st.multiselect(
        "Classes",
        classes,
        placeholder="All classes" if classes else "Classes unavailable (detect API down)",
        disabled=not classes,
        help="Keep only these classes (the backend filters).",
    )
    params = DetectParams(
        score_threshold=float(score),
        iou_threshold=float(iou),
        max_detections=int(max_detections),
        classes=tuple(chosen),
    )

    files = st.file_uploader("Photos", accept_multiple_files=True, key="uploads")
    if not files:
        st.info("Drop one or more photos (JPEG, PNG, WebP or BMP) to detect objects in them.")
        return

    for uploaded in files:
        st.divider()
        st.subheader(uploaded.name)
        content = uploaded.getvalue()
        try:
            with st.spinner(f"Detecting in {uploaded.name}…"):
                result = _detect(
                    settings.detect_api_url,
                    settings.request_timeout_s,
                    uploaded.name,
                    hashlib.sha256(content).hexdigest(),
                    content,
                    params,
                    settings.auth_headers(),
                )
        except BackendRejected as e:
            st.error(f"The detect API rejected **{uploaded.name}**: {e}", icon=":material/block:")
            continue
        except ApiError as e:
            # Down or timing out: the remaining photos would fail the same way.
            if str(e) == backend_error:  # already said at the top
                st.caption("Not analysed: the detect API is unavailable.")
            else:
                st.error(str(e), icon=":material/cloud_off:")
            break
        _show_result(result)


def _show_result(result: DetectResult) -> None:
    image_col, table_col = st.columns([3, 2])
    count = len(result.detections)
    image_col.image(
        result.annotated_jpeg,
        caption=f"{result.width}x{result.height}, {count} object{'s' * (count != 1)} ({result.model})",
        width="stretch",
    )
    with table_col:
        if count:
            st.dataframe(detections_table(result), hide_index=True)
        else:
            st.info("No objects above the score threshold.")
        timings = result.timings_ms
        inference_col, total_col = st.columns(2)
        inference_col.metric("Inference", _ms(timings.get("inference")), help="The engine, on the backend")
        total_col.metric("Total", _ms(timings.get("total")), help="Decode to detections, on the backend")
        st.caption("Backend timings: " + ", ".join(f"{key} {_ms(timings.get(key))}" for key in TIMING_KEYS))


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{float(value):.1f} ms"
