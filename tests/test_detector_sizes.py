"""How the Detector sizes its batches and runs in flight: by the engine's device unless set, capped by the
engine. Fake engines (one layer under test); the real model's batching is in test_model_real.py."""

from __future__ import annotations

import asyncio
import logging

import numpy as np
import pytest

from inference.pipeline import CPU_BATCH, CPU_WORKERS, GPU_BATCH, GPU_WORKERS, Detector
from tests.detect_api_support import FAKE_SPEC, FakeEngine


def fake_engine(*, on_gpu: bool, max_concurrency: int = 64, max_batch_size: int = 64) -> FakeEngine:
    engine = FakeEngine()
    engine.on_gpu = on_gpu
    engine.max_concurrency = max_concurrency
    engine.max_batch_size = max_batch_size
    return engine


@pytest.mark.parametrize(
    ("on_gpu", "expected"), [(False, (CPU_BATCH, CPU_WORKERS)), (True, (GPU_BATCH, GPU_WORKERS))]
)
async def test_defaults_follow_the_engines_device(on_gpu: bool, expected: tuple[int, int]) -> None:
    detector = Detector(fake_engine(on_gpu=on_gpu), FAKE_SPEC)
    await detector.start()
    try:
        assert (detector.max_batch_size, detector.workers) == expected
        info = detector.info()
        assert (info["max_batch_size"], info["workers"]) == expected
    finally:
        await detector.close()


async def test_settings_win_but_the_engine_caps_them(caplog: pytest.LogCaptureFixture) -> None:
    engine = fake_engine(on_gpu=True, max_concurrency=1, max_batch_size=4)
    detector = Detector(engine, FAKE_SPEC, max_batch_size=16, workers=3)
    assert (detector.max_batch_size, detector.workers) == (16, 3)  # not loaded yet: the settings
    with caplog.at_level(logging.WARNING, logger="rtdetect.inference"):
        await detector.start()
    try:
        assert (detector.max_batch_size, detector.workers) == (4, 1)
        assert "3 inference workers asked for, 1 used" in caplog.text
    finally:
        await detector.close()


async def test_cpu_default_keeps_two_requests_in_the_engine() -> None:
    engine = fake_engine(on_gpu=False)
    engine.gate.clear()
    detector = Detector(engine, FAKE_SPEC, max_delay_ms=0)
    await detector.start()
    try:
        image = np.full((64, 64, 3), 127, np.uint8)
        calls = [asyncio.create_task(detector.detect(image)) for _ in range(3)]
        async with asyncio.timeout(10):
            while engine.calls < CPU_WORKERS:  # noqa: ASYNC110 - the fake engine has no async signal
                await asyncio.sleep(0.01)
        # The third call is submitted and held in the batcher's queue (it gathers only for a free worker):
        # waiting for that, not for a while, so a slow machine cannot pass this before the call arrives.
        batcher = detector._require_batcher()
        async with asyncio.timeout(10):
            while batcher.queue_depth < 1:  # noqa: ASYNC110 - the queue has no async signal
                await asyncio.sleep(0.01)
        await asyncio.sleep(0)  # one more turn of the loop for the batcher, were a slot free
        assert engine.calls == CPU_WORKERS and batcher.queue_depth == 1
        engine.gate.set()
        results = await asyncio.wait_for(asyncio.gather(*calls), 10)
    finally:
        engine.gate.set()
        await detector.close()
    assert [r.batch_size for r in results] == [1, 1, 1]
    assert all(r.detections[0].label == "person" for r in results)


def test_rejects_sizes_below_one() -> None:
    with pytest.raises(ValueError, match="workers"):
        Detector(fake_engine(on_gpu=False), FAKE_SPEC, workers=0)
    with pytest.raises(ValueError, match="max_batch_size"):
        Detector(fake_engine(on_gpu=False), FAKE_SPEC, max_batch_size=0)
