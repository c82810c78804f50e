"""Rate-limit repeated log lines: one line per key per interval, with a count of the ones skipped."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable


class LogThrottle:
    """Decide whether an event of a given key is logged now, at most once per ``interval_seconds``.

    Parameters
    ----------
    interval_seconds : float
        Minimum time between two logged events of one key, in seconds.
    clock : callable, optional
        Monotonic time source in seconds; tests may pass their own.
    """

    def __init__(self, interval_seconds: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_seconds = interval_seconds
        self._clock = clock
        self._last_logged: dict[Hashable, float] = {}
        self._skipped: dict[Hashable, int] = {}
        self._lock = threading.Lock()

    def skipped_if_due(self, key: Hashable) -> int | None:
        """Record an event of ``key``; return how many were skipped before it if it is to be logged now.

        Returns ``None`` when the event falls within ``interval_seconds`` of the last logged one of
        ``key`` and so is only counted.
        """
        now = self._clock()
        with self._lock:
            last = self._last_logged.get(key)
            if last is not None and now - last < self.interval_seconds:
                self._skipped[key] = self._skipped.get(key, 0) + 1
                return None
            self._last_logged[key] = now
            return self._skipped.pop(key, 0)
