"""An engine slower than the frame interval, for the live-path benchmark and tests."""

from __future__ import annotations

import time

import numpy as np

from inference.engines import Engine


class SlowEngine:
    """Wraps an engine and sleeps in every call: simulates an engine slower than the frame interval.

    `pad=False`: `delay_s` added to every call (tools.bench). `pad=True`: every call takes `delay_s` in all,
    the real inference included (the sleep is what remains after it; none if inference took longer), as an
    engine that needs that long per frame (tools.live_bench: "the engine at 40 ms")."""

    def __init__(self, inner: Engine, delay_s: float, *, pad: bool = False) -> None:
        self._inner = inner
        self._delay_s = delay_s
        self._pad = pad
        self.backend = inner.backend
        self.precision = inner.precision
        self.gate_score: float | None = None
        self.provider = self._describe()
        self.max_batch_size = inner.max_batch_size
        self.max_concurrency = inner.max_concurrency
        self.on_gpu = inner.on_gpu

    def _describe(self) -> str:
        if self._pad:
            return f"{self._inner.provider} (padded to {self._delay_s * 1e3:.0f} ms per call)"
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
        if not self._pad:
            time.sleep(self._delay_s)
            return self._inner.infer(batch)
        start = time.perf_counter()
        out = self._inner.infer(batch)
        time.sleep(max(0.0, start + self._delay_s - time.perf_counter()))
        return out

    def close(self) -> None:
        self._inner.close()
