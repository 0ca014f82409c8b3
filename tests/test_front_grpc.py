"""gRPC through the HTTPS front (docker/Caddyfile, Debian's caddy on loopback): TLS from Caddy's internal
CA at the front, cleartext HTTP/2 to the detect API's gRPC port behind it. The API runs in process on a
fake engine; the front's other upstreams are closed ports."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from detect_api.app import create_app
from detect_api.client import AsyncDetectClient, DetectError, image_message
from detect_api.proto import detect_pb2 as pb
from detect_api.settings import Settings
from inference.pipeline import Detector
from tests.detect_api_support import FAKE_SPEC, FakeEngine, encode, serve
from tests.test_front import CADDYFILE, caddy_env, require_caddy
from tools.servers import LOOPBACK, free_port, get_json, tail

pytestmark = pytest.mark.asyncio

IMAGE = encode(np.full((128, 128, 3), 127, np.uint8), ".png")


async def test_detect_health_and_stream_through_the_front(tmp_path: Path) -> None:
    caddy = require_caddy()
    grpc_port = free_port()
    detector = Detector(FakeEngine(), FAKE_SPEC, max_batch_size=1, max_delay_ms=0.0)  # type: ignore[arg-type]
    await detector.start()
    settings = Settings(gpu_sample_interval_s=0, host=LOOPBACK, grpc_port=grpc_port)
    https_port, http_port, health_port = free_port(), free_port(), free_port()
    closed = f"{LOOPBACK}:{free_port()}"
    env = caddy_env(
        tmp_path,
        https_port,
        http_port,
        health_port,
        FRONT_GRPC_UPSTREAMS=f"{LOOPBACK}:{grpc_port}",
        FRONT_API_UPSTREAMS=closed,
        FRONT_MEDIA_UPSTREAMS=closed,
        FRONT_UI_UPSTREAMS=closed,
        FRONT_GRAFANA_UPSTREAMS=closed,
    )
    log_path = tmp_path / "caddy.log"
    async with serve(create_app(settings, detector=detector)):
        with log_path.open("wb") as log:
            proc = await asyncio.create_subprocess_exec(
                *(caddy, "run", "--config", str(CADDYFILE), "--adapter", "caddyfile"),
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            root = tmp_path / "data" / "caddy" / "pki" / "authorities" / "local" / "root.crt"
            deadline = time.monotonic() + 30
            while not (root.exists() and get_json(f"http://{LOOPBACK}:{health_port}/healthz") is not None):
                assert proc.returncode is None and time.monotonic() < deadline, tail(log_path)
                await asyncio.sleep(0.2)  # polling the front's health URL until a deadline
            target = f"{LOOPBACK}:{https_port}"
            async with AsyncDetectClient(target, root_certificates=root.read_bytes()) as client:
                assert await client.health() == "SERVING"
                response = await client.detect(IMAGE)
                assert [d.label for d in response.detections] == ["person"]
                # Errors keep their status and the server's error code through the proxy.
                with pytest.raises(DetectError) as caught:
                    await client.detect(b"not an image")
                assert (caught.value.status, caught.value.error) == (
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "invalid_image",
                )

                async def frames():  # type: ignore[no-untyped-def]
                    for i in range(5):
                        yield pb.Frame(frame_id=i, image=image_message(IMAGE))
                        await asyncio.sleep(0.05)  # a paced client

                results = [r async for r in client.stream(frames())]
                assert results and results[-1].frame_id == 4
            # Without the front's CA, the TLS handshake fails: the front really serves TLS.
            async with AsyncDetectClient(target, tls=True, timeout_s=5) as untrusted:
                with pytest.raises(DetectError) as caught:
                    await untrusted.health()
                assert caught.value.status == grpc.StatusCode.UNAVAILABLE
        finally:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 10)
            await detector.close()
