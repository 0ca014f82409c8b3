"""Read deadlines and connection limits for the detect API, where uvicorn has no option of its own.

uvicorn (0.54, httptools) arms its keep-alive timer only after a response; a connection that sends nothing,
or its headers a byte at a time, is held for ever (every byte received cancels that timer), and so is one
that trickles a body the app answered early (a 401, 413 or 408). Its `limit_concurrency` answers in plain
text. `GuardedHttpToolsProtocol` adds, per connection:
- a header deadline: the request line and headers within header_timeout_s of their first byte (of the
  connection's opening, for the first request), else a 408 and the connection closes;
- a header size cap (max_header_bytes), else a 431;
- a connection cap (max_connections, counted by uvicorn over the server), over it a 503 before reading;
- a response sent before its request's body has fully arrived closes the connection;
- JSON bodies on these errors and on uvicorn's own 400 for a malformed request.
The body deadline (body_timeout_s from the headers) is `BodyDeadlineMiddleware`, in the app: it answers 408.
"""

from __future__ import annotations

import asyncio
import json
from http import HTTPStatus
from typing import Any, ClassVar

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from detect_api.auth import AuthMiddleware
from detect_api.errors import ApiError
from detect_api.settings import Settings
from inference.ratelimit import RateLimiter


def raw_json_response(status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> bytes:
    """A complete HTTP/1.1 error response that closes the connection, for answers outside any ASGI cycle."""
    body = json.dumps({"error": error, "detail": detail}).encode()
    lines = [
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        "connection: close",
        *(f"{name}: {value}" for name, value in (headers or {}).items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus the deadlines and caps above; configured by `protocol_class`."""

    header_timeout_s: ClassVar[float] = 10.0
    max_header_bytes: ClassVar[int] = 64 * 1024
    max_connections: ClassVar[int] = 512
    retry_after_s: ClassVar[int] = 1

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._header_bytes = 0
        self._reading_headers = True
        self._message_complete = True

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            self._refuse(
                503,
                "too_many_connections",
                f"this server takes at most {self.max_connections} connections; retry later",
                {"retry-after": str(self.retry_after_s)},
            )
            return
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # Still in the headers after this chunk: all of it (a body before it at most) counts against the cap.
        if not self._reading_headers:
            return
        self._header_bytes += len(data)
        if self._header_bytes > self.max_header_bytes:
            self._refuse(
                431,
                "headers_too_large",
                f"the request line and headers exceed {self.max_header_bytes} bytes",
            )

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reading_headers = True
        self._message_complete = False
        self._header_bytes = 0
        self._arm_header_timer()  # the next request on a kept-alive connection: its own deadline

    def on_headers_complete(self) -> None:
        self._reading_headers = False
        self._cancel_header_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._message_complete = True
        super().on_message_complete()

    def on_response_complete(self) -> None:
        if not self._message_complete and not self.transport.is_closing():
            # Answered before the body arrived (401, 413, 408): the rest of the body is never needed, and a
            # client trickling it would otherwise hold the connection (each byte resets keep-alive).
            self.transport.close()
        super().on_response_complete()

    def send_400_response(self, msg: str) -> None:
        self._refuse(400, "bad_request", msg)

    def _refuse(self, status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> None:
        self._cancel_header_timer()
        if not self.transport.is_closing():
            self.transport.write(raw_json_response(status, error, detail, headers))
            self.transport.close()

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self._reading_headers:
            self._refuse(
                408,
                "header_timeout",
                f"the request headers did not arrive within {self.header_timeout_s:g} s",
            )


def protocol_class(settings: Settings) -> type[GuardedHttpToolsProtocol]:
    """The protocol class for `uvicorn.run(http=...)`, with this server's limits (uvicorn builds one
    instance per connection and passes only its own config)."""
    return type(
        "ConfiguredGuardedHttpToolsProtocol",
        (GuardedHttpToolsProtocol,),
        {
            "header_timeout_s": settings.header_timeout_s,
            "max_header_bytes": settings.max_header_bytes,
            "max_connections": settings.max_connections,
            "retry_after_s": settings.retry_after_s,
        },
    )


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for `uvicorn.run` that apply the connection settings."""
    return {
        "http": protocol_class(settings),
        "timeout_keep_alive": settings.keep_alive_timeout_s,
    }


class BodyDeadlineMiddleware:
    """The whole request body within `timeout_s` of the request's start, else a 408 JSON.

    Raised from `receive` inside the route's body parsing, as BodyLimitMiddleware does, so the usual
    handler answers it. Only while the body is still arriving: afterwards `receive` waits for a disconnect.
    """

    def __init__(self, app: ASGIApp, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        body_done = False

        async def receive_in_time() -> Message:
            nonlocal body_done
            if body_done:
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise ApiError(
                    408,
                    "body_timeout",
                    f"the request body did not arrive within {self.timeout_s:g} s",
                    {"Connection": "close"},
                ) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        await self.app(scope, receive_in_time, send)


def install_guards(app: FastAPI, settings: Settings) -> None:
    """Add the body deadline and, outside it, authentication and the rate limit to a FastAPI app (call after
    its other middleware: the last added runs first, so a request without a key is refused before anything
    reads its body)."""
    add = app.add_middleware
    add(BodyDeadlineMiddleware, timeout_s=settings.body_timeout_s)
    limiter = (
        RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst)
        if settings.rate_limit_per_s > 0
        else None
    )
    add(AuthMiddleware, keys=settings.api_keys(), metrics_open=not settings.metrics_auth, limiter=limiter)
