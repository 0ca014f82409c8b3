"""The media server's HTTP read deadlines and connection cap (media_server/http_limits.py), on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import time

import aiohttp
import pytest

from inference.ratelog import RateLimitedLog
from media_server.http_limits import loop_error_handler
from tests.media_support import LOOPBACK, FakeDetector, loopback_settings, running_server


async def _closed_within(reader: asyncio.StreamReader, limit_s: float) -> float:
    """Seconds until the server closes the connection (EOF or reset); fails after `limit_s`."""
    started = time.monotonic()
    with contextlib.suppress(ConnectionResetError):
        await asyncio.wait_for(reader.read(), limit_s)
    return time.monotonic() - started


async def test_headers_at_one_byte_per_second_are_cut_at_the_deadline() -> None:
    settings = loopback_settings(header_timeout_s=1.5, keepalive_timeout_s=30.0)
    async with running_server(settings, FakeDetector()) as server:
        reader, writer = await asyncio.open_connection(LOOPBACK, server.http.port)
        request = f"GET /healthz HTTP/1.1\r\nHost: {LOOPBACK}\r\nX-Slow: {'a' * 40}\r\n\r\n".encode()

        async def trickle() -> None:
            for byte in request:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(1.0)

        sender = asyncio.create_task(trickle())
        try:
            # Without the deadline the connection stays open for the whole minute the headers take.
            elapsed = await _closed_within(reader, 10.0)
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
            writer.close()
        assert 1.0 <= elapsed < 4.0, elapsed
        assert server.http.guard.header_timeouts == 1
        # A normal client is unaffected.
        async with aiohttp.ClientSession() as http, http.get(server.url + "/healthz") as resp:
            assert resp.status == 200


async def test_idle_keepalive_connection_is_closed() -> None:
    settings = loopback_settings(keepalive_timeout_s=1.0)
    async with running_server(settings, FakeDetector()) as server:
        reader, writer = await asyncio.open_connection(LOOPBACK, server.http.port)
        writer.write(f"GET /healthz HTTP/1.1\r\nHost: {LOOPBACK}\r\n\r\n".encode())
        await writer.drain()
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        try:
            elapsed = await _closed_within(reader, 10.0)
        finally:
            writer.close()
        assert elapsed < 4.0, elapsed


async def test_connections_over_the_cap_are_closed_and_slots_come_back() -> None:
    settings = loopback_settings(max_connections=4, header_timeout_s=30.0)
    async with running_server(settings, FakeDetector()) as server:
        held = [await asyncio.open_connection(LOOPBACK, server.http.port) for _ in range(4)]
        try:
            await asyncio.sleep(0.1)
            assert server.http.guard.open_connections == 4
            # The fifth (and sixth) is closed at once, before any byte is read.
            for _ in range(2):
                reader, writer = await asyncio.open_connection(LOOPBACK, server.http.port)
                writer.write(f"GET /healthz HTTP/1.1\r\nHost: {LOOPBACK}\r\n\r\n".encode())
                try:
                    assert await asyncio.wait_for(reader.read(), 5.0) == b""
                except ConnectionResetError:
                    pass
                finally:
                    writer.close()
            assert server.http.guard.refused == 2
            # Two of the holders go: a normal client is served again.
            for _, writer in held[:2]:
                writer.close()
            await asyncio.sleep(0.2)
            async with aiohttp.ClientSession() as http, http.get(server.url + "/healthz") as resp:
                assert resp.status == 200
        finally:
            for _, writer in held:
                writer.close()


async def test_malformed_requests_are_logged_below_error_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = loopback_settings(error_log_interval_s=60.0)
    async with running_server(settings, FakeDetector()) as server:
        with caplog.at_level(logging.DEBUG, logger="media_server.http"):
            for _ in range(5):
                reader, writer = await asyncio.open_connection(LOOPBACK, server.http.port)
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header\x01: y\r\n\r\n")
                await writer.drain()
                assert (await asyncio.wait_for(reader.read(), 5.0)).split(b" ", 2)[1] == b"400"
                writer.close()
    records = [r for r in caplog.records if r.name == "media_server.http"]
    assert len(records) == 1, [r.getMessage() for r in records]
    assert records[0].levelno < logging.ERROR and records[0].exc_info is None


def test_accept_errors_at_the_descriptor_limit_are_logged_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """What asyncio's accept loop reports on EMFILE, fed to the handler the server installs on its loop."""
    now = [0.0]
    limited = RateLimitedLog(logging.getLogger("media_server.http"), 10.0, clock=lambda: now[0])
    forwarded: list[dict[str, object]] = []
    handler = loop_error_handler(limited, lambda loop, context: forwarded.append(context))
    loop = asyncio.new_event_loop()
    try:
        with caplog.at_level(logging.DEBUG, logger="media_server.http"):
            for _ in range(8000):  # what the probe saw in a second
                now[0] += 1 / 8000
                handler(
                    loop,
                    {
                        "message": "socket.accept() out of system resource",
                        "exception": OSError(errno.EMFILE, "Too many open files"),
                    },
                )
            now[0] += 10.0
            handler(
                loop,
                {
                    "message": "socket.accept() out of system resource",
                    "exception": OSError(errno.EMFILE, "Too many open files"),
                },
            )
            for _ in range(50):  # any other loop error: the previous handler's report, once per interval
                handler(loop, {"message": "something else"})
    finally:
        loop.close()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert lines[1].endswith("(7999 more since the last report)")
    assert forwarded == [{"message": "something else"}]


async def test_accept_errors_on_a_real_listener_at_the_descriptor_limit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A real server process out of descriptors: asyncio retries accept every second; one line per interval."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    settings = loopback_settings(error_log_interval_s=60.0)
    async with running_server(settings, FakeDetector()) as server:
        hogs: list[object] = []
        clients: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        try:
            import os

            in_use = len(os.listdir("/proc/self/fd"))
            resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + 8, hard))
            # Fill the table so that the server's accept() fails with EMFILE while connections queue up.
            while True:
                try:
                    hogs.append(open("/dev/null"))  # noqa: SIM115, ASYNC230
                except OSError:
                    break
            hogs.pop().close()  # type: ignore[attr-defined]
            with caplog.at_level(logging.DEBUG, logger="media_server.http"):
                for _ in range(3):
                    try:
                        clients.append(await asyncio.open_connection(LOOPBACK, server.http.port))
                    except OSError:
                        break
                await asyncio.sleep(3.5)  # asyncio retries accept about every second
        finally:
            for hog in hogs:
                hog.close()  # type: ignore[attr-defined]
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            for _, writer in clients:
                writer.close()
    lines = [r.getMessage() for r in caplog.records if "out of system resource" in r.getMessage()]
    assert len(lines) == 1, lines
