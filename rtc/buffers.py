"""The drop buffer: a bounded FIFO between a producer and one consumer that never blocks the producer."""

from __future__ import annotations

import asyncio
import collections
from typing import Generic, TypeVar

from aiortc.mediastreams import MediaStreamError

T = TypeVar("T")


class DropBuffer(Generic[T]):
    """A bounded FIFO that drops its oldest item when full (single consumer).

    `latest` is this with room for one item: a new frame replaces the waiting one.
    """

    def __init__(self, capacity: int) -> None:
        self._items: collections.deque[T] = collections.deque()
        self._capacity = capacity
        self._ready = asyncio.Event()
        self._closed = False

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: T) -> int:
        """Add `item`; returns how many items were dropped to make room (0 or 1)."""
        dropped = 0
        if len(self._items) >= self._capacity:
            self._items.popleft()
            dropped = 1
        self._items.append(item)
        self._ready.set()
        return dropped

    async def get(self) -> T:
        """The oldest item; raises MediaStreamError once closed and empty."""
        while not self._items:
            if self._closed:
                raise MediaStreamError("buffer closed")
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()

    def close(self) -> None:
        self._closed = True
        self._ready.set()
