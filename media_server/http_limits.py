"""Read deadlines and connection limits for the media server's HTTP side (aiohttp).

aiohttp has its own options for some of it, used as they are: `keepalive_timeout` (an idle keep-alive
connection, or one whose next request's headers have not all arrived, is closed after it; aiohttp >= 3.10
also arms it when a connection opens), `lingering_time`, `backlog`, and header size limits. What it lacks is
enforced here, narrowly, through the `web.Server` that aiohttp hands each connection to:

- a deadline for the first request's headers (`header_timeout_s`): a client trickling headers at 1 byte/s is
  closed then, and later requests on a kept-alive connection are bounded by `keepalive_timeout_s`;
- a cap on open connections (`max_connections`): one over it is closed at once, before any read, so slow
  clients cannot take every file descriptor (past the descriptor limit nobody can connect at all);
- log lines that a hostile or broken client can trigger at will (malformed requests, accept errors at the
  descriptor limit) go out once per interval with a count, malformed requests below ERROR.

The body deadline (`body_timeout_s`) is in the one handler that reads a body (`/offer`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler

from inference.ratelog import RateLimitedLog
from media_server.settings import Settings

logger = logging.getLogger(__name__)

# What asyncio's accept loop reports (and then retries) when the process is out of file descriptors.
_ACCEPT_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


class _QuietServerLogger(logging.LoggerAdapter[logging.Logger]):
    """aiohttp's per-connection logger. A malformed request is the client's fault, logged at INFO without a
    traceback, and like any other error at most once per interval per kind."""

    def __init__(self, limited: RateLimitedLog) -> None:
        super().__init__(limited.logger, {})
        self._limited = limited

    def exception(self, msg: object, *args: Any, exc_info: Any = True, **kwargs: Any) -> None:
        if isinstance(exc_info, HttpProcessingError):
            self._limited.log(
                logging.INFO, ("bad_request", type(exc_info).__name__), "%s: %s", str(msg) % args, exc_info
            )
            return
        key = ("error", type(exc_info).__name__ if isinstance(exc_info, BaseException) else str(msg))
        self._limited.log(logging.ERROR, key, str(msg), *args, exc_info=exc_info, **kwargs)


@dataclass
class ConnectionGuard:
    """Counts open connections, refuses those over the cap and closes those whose first request's headers
    miss the deadline. Installed on the runner's `web.Server`, through its public per-connection hooks."""

    max_connections: int
    header_timeout_s: float
    limited: RateLimitedLog
    refused: int = 0
    header_timeouts: int = 0
    _open: set[RequestHandler] = field(default_factory=set)
    _deadlines: dict[RequestHandler, asyncio.TimerHandle] = field(default_factory=dict)

    @property
    def open_connections(self) -> int:
        return len(self._open)

    def install(self, server: web.Server) -> None:
        made, lost, make_request = server.connection_made, server.connection_lost, server.request_factory

        def connection_made(handler: RequestHandler, transport: asyncio.Transport) -> None:
            made(handler, transport)  # aiohttp's own bookkeeping first, so shutdown still sees it
            if len(self._open) >= self.max_connections:
                self.refused += 1
                self.limited.warning(
                    "max_connections", "refused a connection: %d open (max_connections)", len(self._open)
                )
                handler.force_close()
                return
            self._open.add(handler)
            loop = asyncio.get_running_loop()
            self._deadlines[handler] = loop.call_later(self.header_timeout_s, self._header_deadline, handler)

        def connection_lost(handler: RequestHandler, exc: BaseException | None = None) -> None:
            self._forget(handler)
            lost(handler, exc)

        def request_factory(message: Any, payload: Any, protocol: Any, writer: Any, task: Any) -> Any:
            # The first request's headers are complete: the deadline is met.
            timer = self._deadlines.pop(protocol, None)
            if timer is not None:
                timer.cancel()
            return make_request(message, payload, protocol, writer, task)

        # Instance attributes shadow the methods: RequestHandler calls `manager.connection_made(...)` and
        # reads `manager.request_factory` when it is created.
        server.connection_made = connection_made  # type: ignore[method-assign]
        server.connection_lost = connection_lost  # type: ignore[method-assign]
        server.request_factory = request_factory

    def _forget(self, handler: RequestHandler) -> None:
        self._open.discard(handler)
        timer = self._deadlines.pop(handler, None)
        if timer is not None:
            timer.cancel()

    def _header_deadline(self, handler: RequestHandler) -> None:
        if self._deadlines.pop(handler, None) is None:
            return
        self.header_timeouts += 1
        self.limited.log(
            logging.INFO,
            "header_timeout",
            "closed a connection: no complete request within %.1f s",
            self.header_timeout_s,
        )
        handler.force_close()


def loop_error_handler(
    limited: RateLimitedLog, fallback: Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object] | None
) -> Callable[[asyncio.AbstractEventLoop, dict[str, Any]], None]:
    """A loop exception handler: what reaches the loop has nowhere else to go, and clients can repeat it at
    will (asyncio retries a failing accept every second at the descriptor limit; aiortc's connect task fails
    when a peer is closed mid-connect). Each kind (message and exception type) is reported once per
    interval, with a count; the report itself is the previous handler's (asyncio's: with the traceback)."""

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in _ACCEPT_ERRNOS:
            limited.error(("accept", exc.errno), "%s: %s", context.get("message", "accept failed"), exc)
            return
        suppressed = limited.admit(("loop", context.get("message"), type(exc).__name__))
        if suppressed is None:
            return
        if suppressed:
            context = {
                **context,
                "message": f"{context.get('message')} ({suppressed} more since the last report)",
            }
        if fallback is not None:
            fallback(loop, context)
        else:
            loop.default_exception_handler(context)

    return handle


@dataclass
class MediaHttpServer:
    """The app behind a runner with the limits above; what `python -m media_server` and the tests start."""

    runner: web.AppRunner
    site: web.TCPSite
    guard: ConnectionGuard
    _restore: Callable[[], None]

    @property
    def port(self) -> int:
        server = self.site._server
        assert server is not None
        return int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]

    async def close(self) -> None:
        try:
            await self.runner.cleanup()
        finally:
            self._restore()


async def start_http(
    app: web.Application,
    settings: Settings,
    *,
    host: str | None = None,
    port: int | None = None,
    handle_signals: bool = False,
) -> MediaHttpServer:
    limited = RateLimitedLog(logging.getLogger("media_server.http"), settings.error_log_interval_s)
    runner = web.AppRunner(
        app,
        handle_signals=handle_signals,
        access_log=None,
        keepalive_timeout=settings.keepalive_timeout_s,
        # After a refused or timed-out body, discard what the client still sends for a short while only.
        lingering_time=min(settings.body_timeout_s, 2.0),
        logger=_QuietServerLogger(limited),
    )
    await runner.setup()
    guard = ConnectionGuard(settings.max_connections, settings.header_timeout_s, limited)
    assert runner.server is not None
    guard.install(runner.server)
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(loop_error_handler(limited, previous))
    try:
        site = web.TCPSite(
            runner,
            settings.host if host is None else host,
            settings.port if port is None else port,
            backlog=settings.backlog,
        )
        await site.start()
    except BaseException:
        loop.set_exception_handler(previous)
        await runner.cleanup()
        raise
    return MediaHttpServer(runner, site, guard, lambda: loop.set_exception_handler(previous))


def serve(app: web.Application, settings: Settings) -> None:
    """Serve until SIGINT/SIGTERM, then shut down gracefully (what `web.run_app` does, plus the limits)."""

    async def main() -> None:
        server = await start_http(app, settings)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            await server.close()

    asyncio.run(main())
