"""A small client for the detect API, so the upload page only renders.

Transport failures become typed errors whose message a user can act on (the backend is down, slow, or
rejected the file with its own JSON error); nothing here touches Streamlit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import requests


class ApiError(Exception):
    """Base class: `str(error)` is the message shown to the user."""


class BackendUnavailable(ApiError):
    pass


class BackendTimeout(ApiError):
    pass


class BackendRejected(ApiError):
    """The detect API answered with an error status; `error` and `detail` come from its JSON body."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        self.status = status
        self.error = error
        self.detail = detail
        super().__init__(f"{error}: {detail}" if detail else error)


@dataclasses.dataclass(frozen=True)
class DetectParams:
    score_threshold: float = 0.35
    iou_threshold: float = 0.6
    max_detections: int = 100
    classes: tuple[str, ...] = ()  # empty: every class

    def query(self) -> dict[str, str]:
        out = {
            "score_threshold": f"{self.score_threshold:g}",
            "iou_threshold": f"{self.iou_threshold:g}",
            "max_detections": str(self.max_detections),
        }
        if self.classes:
            out["classes"] = ",".join(self.classes)
        return out


@dataclasses.dataclass(frozen=True)
class DetectResult:
    model: str
    width: int
    height: int
    detections: tuple[Mapping[str, Any], ...]
    timings_ms: Mapping[str, float]
    annotated_jpeg: bytes


class DetectClient:
    def __init__(
        self,
        base_url: str,
        timeout_s: float,
        session: requests.Session | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self._session = session or requests.Session()
        self._headers = dict(headers or {})  # sent on every request: the API key (Settings.auth_headers)

    def model_classes(self) -> list[str]:
        body = self._request("GET", "/model").json()
        classes = body.get("classes", [])
        # Either a list of names or a list of {"id", "name"} objects: accept both shapes.
        return [c["name"] if isinstance(c, Mapping) else str(c) for c in classes]

    def detect(self, filename: str, content: bytes, params: DetectParams) -> DetectResult:
        """Two calls, as the API has two answers: the JSON detections and the backend-drawn image."""
        files = {"file": (filename, content, "application/octet-stream")}
        body = self._request("POST", "/detect", params=params.query(), files=files).json()
        annotated = self._request(
            "POST", "/detect", params={**params.query(), "annotated": "true"}, files=files
        ).content
        image = body.get("image", {})
        return DetectResult(
            model=str(body.get("model", "")),
            width=int(image.get("width", 0)),
            height=int(image.get("height", 0)),
            detections=tuple(body.get("detections", [])),
            timings_ms=dict(body.get("timings_ms", {})),
            annotated_jpeg=annotated,
        )

    def _request(
        self,
        method: str,
        path: str,
        params: Mapping[str, str] | None = None,
        files: Mapping[str, tuple[str, bytes, str]] | None = None,
    ) -> requests.Response:
        url = self.base_url + path
        try:
            response = self._session.request(
                method, url, params=params, files=files, headers=self._headers, timeout=self.timeout_s
            )
        except requests.Timeout as e:
            raise BackendTimeout(
                f"The detect API at {self.base_url} did not answer within {self.timeout_s:g} s. "
                "It may be overloaded; try again, or raise RTDETECT_UI_REQUEST_TIMEOUT_S."
            ) from e
        except requests.ConnectionError as e:
            raise BackendUnavailable(
                f"Cannot reach the detect API at {self.base_url}. Is it running? "
                "(`make run` starts it; RTDETECT_UI_DETECT_API_URL points the UI elsewhere.)"
            ) from e
        if response.ok:
            return response
        if response.status_code == 401:
            raise BackendRejected(
                401,
                "unauthorized",
                f"The detect API at {self.base_url} needs an API key"
                + (" and refused this one" if self._headers else "")
                + ": set RTDETECT_UI_API_KEY to a key whose hash the API accepts.",
            )
        raise _rejection(response)


def _rejection(response: requests.Response) -> BackendRejected:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, Mapping) and "error" in body:
        detail = body.get("detail", "")
        return BackendRejected(
            response.status_code, str(body["error"]), "" if detail is None else str(detail)
        )
    # Not the API's JSON error shape (a proxy in between, or another service on that port).
    text = response.text.strip()[:200]
    return BackendRejected(response.status_code, f"HTTP {response.status_code} {response.reason}", text)
