"""Repeated failures are logged once per interval with a count: the helper, and the batcher with a failing
engine (before: one warning per failed batch)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from inference.batcher import MicroBatcher
from inference.errors import InferenceError
from inference.ratelog import RateLimitedLog


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_one_line_per_interval_per_key_with_the_count(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    limited = RateLimitedLog(logging.getLogger("test.ratelog"), 10.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger="test.ratelog"):
        assert limited.warning("a", "failed: %s", "x")
        for _ in range(50):
            clock.now += 0.1
            assert not limited.warning("a", "failed: %s", "x")
        assert limited.warning("b", "other kind")  # another key is not held back by the first
        clock.now += 6.0  # 11 s after the first line
        assert limited.warning("a", "failed: %s", "y")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["failed: x", "other kind", "failed: y (50 more since the last report)"]


def test_keys_are_bounded() -> None:
    limited = RateLimitedLog(logging.getLogger("test.ratelog"), 10.0, max_keys=4, clock=Clock())
    for key in range(100):
        limited.warning(key, "k")
    assert len(limited._state) == 4


async def test_failing_engine_logs_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    def broken(batch: np.ndarray) -> dict[str, np.ndarray]:
        raise RuntimeError("engine on fire")

    batcher = MicroBatcher(broken, max_batch_size=1, max_delay_ms=0.0, failure_log_interval_s=60.0)
    await batcher.start()
    try:
        with caplog.at_level(logging.WARNING, logger="rtdetect.inference"):
            for _ in range(20):
                with pytest.raises(InferenceError, match="engine on fire"):
                    await batcher.submit(np.zeros((3, 4, 4), np.float32))
    finally:
        await batcher.close()
    failures = [r for r in caplog.records if "inference failed" in r.getMessage()]
    assert len(failures) == 1, [r.getMessage() for r in failures]
