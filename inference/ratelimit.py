"""A per-client token bucket with a bounded client table: the servers' rate limits (per key or per address).

Single-threaded by design (each server calls it from its event loop). No framework imports.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable


class RateLimiter:
    """`burst` requests at once, refilled at `rate_per_s`; `take(client)` answers 0.0 (allowed) or the
    seconds until the next request would be allowed.

    At most `max_clients` buckets are kept (least recently used dropped first), so clients that come and go
    (addresses, when auth is off) cannot grow it without bound; a dropped client starts again with a full
    bucket, which only ever errs towards allowing.
    """

    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        *,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate_per_s <= 0 or burst < 1 or max_clients < 1:
            raise ValueError("rate_per_s must be > 0, burst and max_clients >= 1")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.max_clients = max_clients
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # client -> (tokens, time)

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, client: str) -> float:
        now = self._clock()
        tokens, then = self._buckets.pop(client, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - then) * self.rate_per_s)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate_per_s
        self._buckets[client] = (tokens, now)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return wait


def retry_after(wait_s: float) -> str:
    """A Retry-After header value (whole seconds, at least 1) for a wait from `RateLimiter.take`."""
    return str(max(1, math.ceil(wait_s)))
