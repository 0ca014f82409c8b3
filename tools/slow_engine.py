"""An engine slower than the frame interval, for the live-path benchmark and tests."""

from __future__ import annotations

import time

import numpy as np

from inference.engines import Engine


class SlowEngine:
    """Wraps an engine and sleeps in every call: simulates an engine slower than the frame interval."""

    def __init__(self, inner: Engine, delay_s: float) -> None:
        self._inner = inner
        self._delay_s = delay_s
        self.backend = inner.backend
        self.precision = inner.precision
        self.gate_score: float | None = None
        self.provider = self._describe()
        self.max_batch_size = inner.max_batch_size
        self.max_concurrency = inner.max_concurrency
        self.on_gpu = inner.on_gpu

    def _describe(self) -> str:
        return f"{self._inner.provider} (+{self._delay_s * 1e3:.0f} ms artificial delay)"

    def load(self) -> None:
        self._inner.load()
        # Both are known only once the inner engine is loaded.
        self.provider = self._describe()
        self.backend, self.precision = self._inner.backend, self._inner.precision
        self.gate_score = getattr(self._inner, "gate_score", None)
        self.max_batch_size = self._inner.max_batch_size
        self.max_concurrency = self._inner.max_concurrency
        self.on_gpu = self._inner.on_gpu

    def warmup(self, batch_sizes: tuple[int, ...] = (1,)) -> None:
        self._inner.warmup(batch_sizes)

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        # A blocking sleep, like a real slow engine: it holds the batcher's worker, not the event loop.
        time.sleep(self._delay_s)
        return self._inner.infer(batch)

    def close(self) -> None:
        self._inner.close()
