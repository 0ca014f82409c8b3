"""Servers as subprocesses, for the benchmarks and the tests: started, waited for, stopped.

Ready means an HTTP URL answered 200 (its JSON body is kept: /readyz and /model say what runs). Stopping
is SIGTERM, then SIGKILL if the process has not exited in time. Standard library only, so that any tool
or test can use it without pulling in an HTTP client.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port free right now (the usual race applies: bind it soon)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def tail(path: Path, lines: int = 60) -> str:
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class ServerProcess:
    proc: subprocess.Popen[bytes]
    log_path: Path
    ready: dict[str, Any] = field(default_factory=dict)  # the ready URL's JSON body ({} if not JSON)


def get_json(url: str, timeout_s: float = 2.0) -> dict[str, Any] | None:
    """The JSON body of a 200 answer from `url`; None for any other answer or no answer at all."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            if response.status != 200:
                return None
            body = response.read()
    except (urllib.error.URLError, OSError):  # HTTPError (503 while loading) is a URLError
        return None
    try:
        data = json.loads(body)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


@contextmanager
def server_process(
    argv: Sequence[str],
    *,
    ready_url: str,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout_s: float = 120.0,
    stop_timeout_s: float = 30.0,
) -> Iterator[ServerProcess]:
    """Run `argv` (environment: os.environ plus `env`, output to `log_path`) until the block ends.

    Raises RuntimeError, with the end of the log, if the process exits or is not ready in `timeout_s`.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            list(argv), cwd=cwd, env={**os.environ, **(env or {})}, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + timeout_s
        while (ready := get_json(ready_url)) is None:
            if proc.poll() is not None:
                raise RuntimeError(f"{argv[0]} exited with {proc.returncode}:\n{tail(log_path)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{ready_url} not ready within {timeout_s:.0f} s:\n{tail(log_path)}")
            time.sleep(0.1)  # polling a health URL until a deadline
        yield ServerProcess(proc, log_path, ready)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=stop_timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=stop_timeout_s)


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """User + system CPU seconds of a local process, or of one of its threads (`tid`), from /proc."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    fields = Path(path).read_text().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (fields 14 and 15)
