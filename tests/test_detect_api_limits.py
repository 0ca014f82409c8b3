"""Read deadlines and connection limits of the detect API, with raw sockets against a real uvicorn process.

The server is `create_app` + `uvicorn_options` (what `python -m detect_api` runs) on a fake engine, so it
starts in a second; what is under test is the HTTP layer: slow headers, slow bodies, idle connections, the
connection cap, oversized headers and early answers. Every refusal is JSON and closes the connection.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.detect_api_process import fake_detect_api

pytestmark = pytest.mark.slow

HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 1.5
KEEP_ALIVE_S = 1.0
MAX_CONNECTIONS = 6


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    closed: bool  # the server closed the connection after it

    def json(self) -> dict[str, str]:
        data = json.loads(self.body)
        assert isinstance(data, dict)
        return data


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    env = {
        "RTDETECT_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
        "RTDETECT_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
        "RTDETECT_KEEP_ALIVE_TIMEOUT_S": str(KEEP_ALIVE_S),
        "RTDETECT_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
        "RTDETECT_MAX_HEADER_BYTES": "8192",
        "RTDETECT_MAX_UPLOAD_BYTES": "100000",
    }
    with fake_detect_api(env, tmp_path_factory.mktemp("detect_api_limits") / "server.log") as address:
        yield address


def connect(server: tuple[str, int]) -> socket.socket:
    return socket.create_connection(server, timeout=10)


def read_reply(sock: socket.socket, timeout_s: float = 10.0) -> Reply:
    """One response: headers, then Content-Length bytes; `closed` if EOF follows within a short wait."""
    sock.settimeout(timeout_s)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before a full response: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return Reply(status, headers, body[:length], closed=is_closed(sock, wait_s=0.5))


def is_closed(sock: socket.socket, wait_s: float) -> bool:
    sock.settimeout(wait_s)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def assert_json_error(reply: Reply, status: int, error: str) -> None:
    assert reply.status == status, reply
    assert reply.headers["content-type"].startswith("application/json"), reply
    body = reply.json()
    assert set(body) == {"error", "detail"} and body["error"] == error and body["detail"], body


def get(path: str = "/healthz") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode()


def test_a_complete_request_is_served_and_kept_alive(server: tuple[str, int]) -> None:
    with connect(server) as sock:
        for _ in range(3):
            sock.sendall(get())
            reply = read_reply(sock)
            assert reply.status == 200 and reply.json() == {"status": "ok"}
            assert not reply.closed


def test_a_connection_that_sends_nothing_gets_408_at_the_header_deadline(server: tuple[str, int]) -> None:
    with connect(server) as sock:
        started = time.monotonic()
        reply = read_reply(sock)
        elapsed = time.monotonic() - started
    assert_json_error(reply, 408, "header_timeout")
    assert reply.closed
    assert HEADER_TIMEOUT_S * 0.8 <= elapsed < HEADER_TIMEOUT_S + 3, elapsed


def test_headers_at_a_trickle_are_cut_off_at_the_deadline(server: tuple[str, int]) -> None:
    request = get() + b"X-Padding: " + b"a" * 200  # never ends
    with connect(server) as sock:
        started = time.monotonic()
        sent = 0
        # 1 byte each 50 ms (every byte used to reset uvicorn's only timer): cut off after about 1 s.
        try:
            while sent < len(request) and time.monotonic() - started < HEADER_TIMEOUT_S + 3:
                sock.sendall(request[sent : sent + 1])
                sent += 1
                time.sleep(0.05)  # the client's pace is what is under test
        except (BrokenPipeError, ConnectionResetError):
            pass
        reply = read_reply(sock)
        elapsed = time.monotonic() - started
    assert_json_error(reply, 408, "header_timeout")
    assert elapsed < HEADER_TIMEOUT_S + 3 and sent < len(request), (elapsed, sent)


def test_the_next_request_on_a_kept_alive_connection_has_its_own_deadline(server: tuple[str, int]) -> None:
    with connect(server) as sock:
        sock.sendall(get())
        assert read_reply(sock).status == 200
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: te")  # a second request that stalls in its headers
        started = time.monotonic()
        reply = read_reply(sock)
    assert_json_error(reply, 408, "header_timeout")
    assert time.monotonic() - started < HEADER_TIMEOUT_S + 3


def test_idle_keep_alive_connection_is_closed(server: tuple[str, int]) -> None:
    with connect(server) as sock:
        started = time.monotonic()
        sock.sendall(get())
        assert read_reply(sock).status == 200  # which waits 0.5 s for a close: none yet
        assert is_closed(sock, wait_s=KEEP_ALIVE_S + 3)
        assert time.monotonic() - started >= KEEP_ALIVE_S * 0.8


def test_a_body_at_a_trickle_gets_408_at_the_body_deadline(server: tuple[str, int]) -> None:
    boundary = "b0undary"
    head = (
        f"POST /detect HTTP/1.1\r\nHost: test\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: 5000\r\n\r\n"
    ).encode()
    part = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'.encode()
    with connect(server) as sock:
        sock.sendall(head + part)
        started = time.monotonic()
        try:
            # 10 bytes a second until the server answers (the pace is what is under test).
            while time.monotonic() - started < BODY_TIMEOUT_S + 3:
                sock.sendall(b"x")
                if select.select([sock], [], [], 0.1)[0]:
                    break
        except (BrokenPipeError, ConnectionResetError):
            pass
        reply = read_reply(sock)
        elapsed = time.monotonic() - started
    assert_json_error(reply, 408, "body_timeout")
    assert reply.closed
    assert BODY_TIMEOUT_S * 0.8 <= elapsed < BODY_TIMEOUT_S + 2, elapsed


def test_headers_over_the_cap_are_431(server: tuple[str, int]) -> None:
    with connect(server) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n" + b"X-Big: " + b"a" * 20000)
        reply = read_reply(sock)
    assert_json_error(reply, 431, "headers_too_large")
    assert reply.closed


def test_a_malformed_request_is_a_400_json(server: tuple[str, int]) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\nBad Header Line\r\n\r\n")
        reply = read_reply(sock)
    assert_json_error(reply, 400, "bad_request")
    assert reply.closed


def test_an_early_answer_closes_the_connection_instead_of_waiting_for_the_body(
    server: tuple[str, int],
) -> None:
    # Over max_upload_bytes by declaration: 413 at once, and the server does not wait for 10 MB to trickle in.
    head = b"POST /detect HTTP/1.1\r\nHost: test\r\nContent-Type: application/octet-stream\r\n"
    with connect(server) as sock:
        sock.sendall(head + b"Content-Length: 10000000\r\n\r\n" + b"x" * 100)
        reply = read_reply(sock)
    assert_json_error(reply, 413, "upload_too_large")
    assert reply.closed


def test_connections_over_the_cap_get_503_at_once_and_the_server_recovers(server: tuple[str, int]) -> None:
    held = [connect(server) for _ in range(MAX_CONNECTIONS)]
    try:
        time.sleep(0.2)  # let the server accept them all
        with connect(server) as extra:
            started = time.monotonic()
            reply = read_reply(extra)
            assert time.monotonic() - started < HEADER_TIMEOUT_S * 0.8  # refused before any deadline
        assert_json_error(reply, 503, "too_many_connections")
        assert reply.closed and int(reply.headers["retry-after"]) >= 1
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 5
    while True:  # the server sees the closes asynchronously
        with connect(server) as sock:
            sock.sendall(get())
            reply = read_reply(sock)
        if reply.status == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.1)  # waiting for the server to notice the closed sockets, with a deadline
    assert reply.status == 200
