"""Logging for failures that repeat: the first occurrence at once, then at most one line per interval per
kind, carrying how many were left out since. A failing engine (a line per batch) or a server at its file
limit (an accept error per try) must not drown the log, yet each kind must still be visible with a count.

No framework imports: the batcher uses it, and so do the servers.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any


class RateLimitedLog:
    """Per-key rate limit on log lines. At most `max_keys` kinds are remembered (oldest forgotten first), so
    keys that come from variable data cannot grow it without bound; a forgotten kind simply logs again."""

    def __init__(
        self,
        logger: logging.Logger,
        interval_s: float,
        *,
        max_keys: int = 256,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self._max_keys = max_keys
        self._clock = clock
        # key -> (time of the last line, occurrences not logged since)
        self._state: OrderedDict[Hashable, tuple[float, int]] = OrderedDict()

    def admit(self, key: Hashable) -> int | None:
        """None when a line for `key` went out less than `interval_s` ago (this one is counted instead);
        otherwise how many were left out since that line: the caller reports now."""
        now = self._clock()
        last = self._state.get(key)
        if last is not None and now - last[0] < self.interval_s:
            self._state[key] = (last[0], last[1] + 1)
            return None
        self._state[key] = (now, 0)
        self._state.move_to_end(key)
        while len(self._state) > self._max_keys:
            self._state.popitem(last=False)
        return last[1] if last is not None else 0

    def log(self, level: int, key: Hashable, msg: str, *args: Any, **kwargs: Any) -> bool:
        """Log `msg % args` unless a line for `key` went out less than `interval_s` ago; True when logged.
        A logged line after suppressed ones ends with "(N more since the last report)"."""
        suppressed = self.admit(key)
        if suppressed is None:
            return False
        if suppressed:
            msg = f"{msg} (%d more since the last report)"
            args = (*args, suppressed)
        self.logger.log(level, msg, *args, **kwargs)
        return True

    def warning(self, key: Hashable, msg: str, *args: Any, **kwargs: Any) -> bool:
        return self.log(logging.WARNING, key, msg, *args, **kwargs)

    def error(self, key: Hashable, msg: str, *args: Any, **kwargs: Any) -> bool:
        return self.log(logging.ERROR, key, msg, *args, **kwargs)
