"""Every error the API answers, in one place: rtdetect errors -> HTTP status, and the JSON error shape.

Every error response is `{"error": <short code>, "detail": <message for a person>}`, whether it comes from
our routes, FastAPI's request validation, Starlette's routing (404, 405) or an unexpected exception (500).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inference.errors import (
    EngineUnavailableError,
    ImageTooLargeError,
    InferenceError,
    InvalidImageError,
    ModelLoadError,
    OverloadedError,
    RtdetectError,
    UnsupportedImageTypeError,
)

log = logging.getLogger("rtdetect.detect_api")


class ErrorBody(BaseModel):
    """The body of every error response."""

    error: str
    detail: str


# Most specific first: the first class the error is an instance of decides.
RTDETECT_ERRORS: tuple[tuple[type[RtdetectError], int, str], ...] = (
    (ImageTooLargeError, 413, "image_too_large"),
    (UnsupportedImageTypeError, 415, "unsupported_image_type"),
    (InvalidImageError, 400, "invalid_image"),
    (OverloadedError, 503, "overloaded"),
    (ModelLoadError, 503, "model_unavailable"),
    (EngineUnavailableError, 503, "engine_unavailable"),  # Triton down or restarting: retry later
    (InferenceError, 500, "inference_failed"),
    (RtdetectError, 500, "internal_error"),
)

# Codes for errors Starlette and FastAPI raise themselves.
_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "upload_too_large",
    415: "unsupported_media_type",
    503: "unavailable",
}


class ApiError(StarletteHTTPException):
    """An error our routes raise with its code. A Starlette HTTPException, so that FastAPI passes it through
    unchanged even when it is raised while the request body is being parsed (see BodyLimitMiddleware)."""

    def __init__(self, status_code: int, code: str, detail: str, headers: Mapping[str, str] | None = None):
        super().__init__(status_code=status_code, detail=detail, headers=dict(headers) if headers else None)
        self.code = code


def error_response(
    status_code: int, code: str, detail: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        ErrorBody(error=code, detail=detail).model_dump(), status_code=status_code, headers=headers
    )


def classify(exc: RtdetectError) -> tuple[int, str]:
    for cls, status, code in RTDETECT_ERRORS:
        if isinstance(exc, cls):
            return status, code
    raise AssertionError("RtdetectError is the last entry")  # pragma: no cover


# The same errors as gRPC status codes (detect_api/grpc_service.py): by our error code where the HTTP status
# is shared by different stories (503: a full queue is RESOURCE_EXHAUSTED, loading is UNAVAILABLE), else by
# the HTTP status.
_GRPC_BY_CODE = {"overloaded": grpc.StatusCode.RESOURCE_EXHAUSTED}
_GRPC_BY_HTTP = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    500: grpc.StatusCode.INTERNAL,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def grpc_status(exc: Exception, *, ready: bool) -> tuple[grpc.StatusCode, str, str]:
    """(gRPC status code, our error code, detail) for an error a gRPC call raised: the HTTP mapping above,
    carried over. Anything unexpected is INTERNAL with a generic detail (internals stay in the log)."""
    if isinstance(exc, ApiError):
        status, code, detail = exc.status_code, exc.code, str(exc.detail)
    elif isinstance(exc, StarletteHTTPException):
        status, code, detail = (
            exc.status_code,
            _HTTP_CODES.get(exc.status_code, "http_error"),
            str(exc.detail),
        )
    elif isinstance(exc, RtdetectError):
        status, code = classify(exc)
        detail = str(exc)
        if isinstance(exc, InferenceError) and not ready:
            status, code = 503, "not_ready"  # the detector stopped under the call (shutdown), as in HTTP
    else:
        status, code, detail = 500, "internal_error", "unexpected server error; see the server log"
    grpc_code = _GRPC_BY_CODE.get(code) or _GRPC_BY_HTTP.get(status, grpc.StatusCode.UNKNOWN)
    return grpc_code, code, detail


def install_error_handlers(app: FastAPI, *, retry_after_s: int, is_ready: Callable[[], bool]) -> None:
    """Register the JSON handlers. `is_ready()` tells a failure during shutdown from a broken engine."""

    async def on_rtdetect_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RtdetectError)
        status, code = classify(exc)
        headers: dict[str, str] = {}
        if isinstance(exc, InferenceError) and not is_ready():
            # The detector stopped under this request (shutdown): the service is unavailable, not broken.
            status, code = 503, "not_ready"
        if status == 503:
            headers["Retry-After"] = str(retry_after_s)
        if status >= 500:
            log.warning("%s %s -> %d %s: %s", request.method, request.url.path, status, code, exc)
        return error_response(status, code, str(exc), headers)

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = exc.code if isinstance(exc, ApiError) else _HTTP_CODES.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), exc.headers)

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_response(422, "invalid_request", _describe(exc.errors()))

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Only for failures outside CatchAllMiddleware (in another middleware): Starlette re-raises the
        # exception after this response, so the server logs it.
        return error_response(500, "internal_error", "unexpected server error; see the server log")

    app.add_exception_handler(RtdetectError, on_rtdetect_error)
    app.add_exception_handler(Exception, on_unexpected)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)


def _describe(errors: Any) -> str:
    """FastAPI's error list as one line: `query.score_threshold: Input should be ... ; body.file: ...`."""
    parts = []
    for error in errors:
        loc = ".".join(str(part) for part in error.get("loc", ()))
        parts.append(f"{loc}: {error.get('msg', 'invalid')}" if loc else str(error.get("msg", "invalid")))
    return "; ".join(parts) or "invalid request"


class BodyLimitMiddleware:
    """Refuse request bodies over `max_body_bytes` without ever holding more than that.

    A declared Content-Length over the limit is answered at once, before any of the body is read; a body
    without one (chunked) is counted while it streams in and refused as soon as it passes the limit.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            response = error_response(413, "upload_too_large", self._detail(f"{declared} bytes declared"))
            await response(scope, receive, send)
            return

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    # Raised inside the route's body parsing: FastAPI re-raises HTTPExceptions as they are,
                    # and the handler above turns it into the JSON 413.
                    raise ApiError(413, "upload_too_large", self._detail(f"more than {received} bytes sent"))
            return message

        await self.app(scope, limited_receive, send)

    def _detail(self, what: str) -> str:
        return f"request body too large: {what}, the limit is {self.max_body_bytes} bytes"


class CatchAllMiddleware:
    """The last resort: an unexpected exception becomes a logged JSON 500 and the server keeps serving."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            log.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise  # half a response is out: only the server can end the connection
            response = error_response(500, "internal_error", "unexpected server error; see the server log")
            await response(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
