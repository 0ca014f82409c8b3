"""Hook through which the core reports events; `observability` implements it with prometheus_client.

The core never imports prometheus: servers pass an observer in, and the default does nothing.
"""

from __future__ import annotations

from typing import Protocol


class InferenceObserver(Protocol):
    def on_batch(self, batch_size: int, inference_seconds: float) -> None:
        """One engine call finished: `batch_size` images in `inference_seconds`."""

    def on_queue_depth(self, depth: int) -> None:
        """Requests waiting in the batcher after a batch was taken."""


class NullObserver:
    def on_batch(self, batch_size: int, inference_seconds: float) -> None:
        return None

    def on_queue_depth(self, depth: int) -> None:
        return None
