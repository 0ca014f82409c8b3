"""API keys and the rate limit on the gRPC service: the REST settings (inference/apikeys.py), sent as
`authorization: Bearer <key>` metadata. In process, on a fake engine."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import httpx
import numpy as np
import pytest

from detect_api.app import create_app
from detect_api.client import AsyncDetectClient, DetectError, image_message
from detect_api.proto import detect_pb2 as pb
from detect_api.proto import detect_pb2_grpc as pb_grpc
from detect_api.settings import Settings
from inference.apikeys import hash_key, new_key
from inference.pipeline import Detector
from tests.detect_api_support import FAKE_SPEC, FakeEngine, encode, metric_value, serve
from tests.grpc_support import ReflectionClient, error_code
from tools.servers import LOOPBACK, free_port

pytestmark = pytest.mark.asyncio

KEY = new_key()
IMAGE = encode(np.full((96, 96, 3), 127, np.uint8), ".png")


@asynccontextmanager
async def api(**overrides: Any) -> AsyncIterator[tuple[str, httpx.AsyncClient]]:
    port = free_port()
    values: dict[str, Any] = {
        "gpu_sample_interval_s": 0,
        "host": LOOPBACK,
        "grpc_port": port,
        "auth": True,
        "api_key_hashes": [hash_key(KEY)],
        "metrics_auth": False,
    }
    values.update(overrides)
    detector = Detector(FakeEngine(), FAKE_SPEC, max_batch_size=1, max_delay_ms=0.0, max_queue=8)  # type: ignore[arg-type]
    await detector.start()
    try:
        async with serve(create_app(Settings(**values), detector=detector)) as http:
            yield f"{LOOPBACK}:{port}", http
    finally:
        await detector.close()


async def one_frame() -> AsyncIterator[pb.Frame]:
    yield pb.Frame(frame_id=7, image=image_message(IMAGE))


async def calls(client: AsyncDetectClient) -> dict[str, DetectError | None]:
    """Every DetectService method once: the error each one got (None: it succeeded)."""
    outcome: dict[str, DetectError | None] = {}

    async def stream() -> None:
        results = [r async for r in client.stream(one_frame())]
        assert [r.frame_id for r in results] == [7]

    for name, call in (
        ("Detect", lambda: client.detect(IMAGE)),
        ("GetModel", client.model),
        ("DetectStream", stream),
    ):
        try:
            await call()
            outcome[name] = None
        except DetectError as e:
            outcome[name] = e
    return outcome


@pytest.mark.parametrize(("key", "error"), [(None, "unauthorized"), ("rtd_not-the-key", "invalid_api_key")])
async def test_missing_or_wrong_key_is_unauthenticated_on_every_method(key: str | None, error: str) -> None:
    async with api() as (target, http), AsyncDetectClient(target, api_key=key) as client:
        for method, e in (await calls(client)).items():
            assert e is not None, f"{method} answered without a valid key"
            assert (e.status, e.error) == (grpc.StatusCode.UNAUTHENTICATED, error), method
        # Counted like any other outcome.
        text = (await http.get("/metrics")).text
        labels = {"grpc_method": "Detect", "grpc_code": "UNAUTHENTICATED"}
        assert metric_value(text, "grpc_server_handled_total", labels) == 1


async def test_the_right_key_is_accepted_and_health_needs_none() -> None:
    async with api() as (target, _):
        async with AsyncDetectClient(target, api_key=KEY) as client:
            assert all(e is None for e in (await calls(client)).values())
        async with AsyncDetectClient(target) as anonymous:
            assert await anonymous.health() == "SERVING"  # probes carry no credentials


async def test_reflection_needs_the_key_too() -> None:
    async with api() as (target, _):

        def list_services() -> list[str]:
            reflection = ReflectionClient(target)
            try:
                return reflection.services()
            finally:
                reflection.close()

        with pytest.raises(grpc.RpcError) as caught:
            await asyncio.to_thread(list_services)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]


async def test_auth_off_needs_no_key() -> None:
    async with api(auth=False) as (target, _), AsyncDetectClient(target) as client:
        assert all(e is None for e in (await calls(client)).values())


async def test_rate_limit_is_resource_exhausted_with_retry_after() -> None:
    async with (
        api(rate_limit_per_s=0.5, rate_limit_burst=2) as (target, _),
        grpc.aio.insecure_channel(target) as channel,
    ):
        stub = pb_grpc.DetectServiceStub(channel)
        request = pb.DetectRequest(image=image_message(IMAGE))
        metadata = (("authorization", f"Bearer {KEY}"),)
        await stub.Detect(request, metadata=metadata)
        await stub.Detect(request, metadata=metadata)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Detect(request, metadata=metadata)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error_code(caught.value) == "rate_limited"
        trailing = dict(caught.value.trailing_metadata() or ())
        assert 1 <= int(trailing["retry-after"]) <= 2
        await stub.GetModel(pb.GetModelRequest(), metadata=metadata)  # not rate-limited, as /model over REST
