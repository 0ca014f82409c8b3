"""Least-loaded placement of new peers across media-server replicas (docs/scale.md, "Replicas behind the front").

The front (docker/Caddyfile) sends a new peer's offer only to replicas whose `GET /room` answers 200. On its
own a replica says 200 while it has room; with a fleet configured (`RTDETECT_MEDIA_FLEET`, the replicas' base
URLs as this replica reaches them, itself included or not) it says 200 only while no other replica that is
ready and has room holds fewer live peers. New peers therefore land on the least loaded replicas (the front
picks at random among ties), from the peer counts as they were at the front's last health check.

Each replica reads the others' `GET /load` (always 200: peer count, limit, readiness, and an instance id, so
a replica recognises itself in a shared list). A replica that does not answer within the timeout is left out
of the comparison: it cannot take peers either, and one down replica must not close the fleet.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass

import aiohttp

from inference.ratelog import RateLimitedLog

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReplicaLoad:
    """What `GET /load` answers."""

    instance: str
    peers: int
    max_peers: int
    ready: bool

    @property
    def has_room(self) -> bool:
        return self.ready and self.peers < self.max_peers

    def as_json(self) -> dict[str, object]:
        return {
            "instance": self.instance,
            "peers": self.peers,
            "max_peers": self.max_peers,
            "ready": self.ready,
        }

    @classmethod
    def from_json(cls, data: object) -> ReplicaLoad:
        if not isinstance(data, dict):
            raise ValueError("expected an object")
        instance, peers, max_peers, ready = (data.get(k) for k in ("instance", "peers", "max_peers", "ready"))
        if not (isinstance(instance, str) and isinstance(peers, int) and isinstance(max_peers, int)):
            raise ValueError("missing instance, peers or max_peers")
        return cls(instance, peers, max_peers, ready is True)


class Fleet:
    """This replica's view of the others' loads, read at most once per `cache_s` (the front's health check
    and a burst of offers share one round of requests)."""

    def __init__(
        self, urls: list[str], *, timeout_s: float, cache_s: float, log_interval_s: float = 10.0
    ) -> None:
        self.urls = [u.rstrip("/") for u in urls]
        self.instance = uuid.uuid4().hex  # this process, so it can skip itself in a shared list
        self.timeout_s = timeout_s
        self.cache_s = cache_s
        self._session: aiohttp.ClientSession | None = None
        self._loads: list[ReplicaLoad] = []
        self._read_at = -float("inf")
        self._lock = asyncio.Lock()
        self._errors = RateLimitedLog(logger, log_interval_s)

    @property
    def configured(self) -> bool:
        return bool(self.urls)

    async def others(self) -> list[ReplicaLoad]:
        """The other replicas that answered, from a read at most `cache_s` old."""
        async with self._lock:
            if time.monotonic() - self._read_at >= self.cache_s:
                answers = await asyncio.gather(*(self._read(url) for url in self.urls))
                self._loads = [a for a in answers if a is not None and a.instance != self.instance]
                self._read_at = time.monotonic()
            return self._loads

    async def least_loaded_peers(self) -> int | None:
        """The fewest live peers on another replica that could take a new one (None: no such replica)."""
        candidates = [load.peers for load in await self.others() if load.has_room]
        return min(candidates) if candidates else None

    async def _read(self, url: str) -> ReplicaLoad | None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        try:
            async with self._session.get(f"{url}/load") as resp:
                resp.raise_for_status()
                return ReplicaLoad.from_json(await resp.json())
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            self._errors.log(logging.WARNING, url, "fleet replica %s gave no load (%s): left out", url, exc)
            return None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
