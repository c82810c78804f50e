"""Sticky-session state: the adapter each conversation is on, in a bounded in-memory store.

:class:`SessionStore` is the interface; a shared store (Redis, for example) can implement it
so that many gateway replicas agree on a conversation's adapter.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class SessionState:
    """The model a session is on: its served name, adapter (``None`` for base) and domain."""

    model: str
    adapter: str | None
    domain: str | None


class SessionStore(Protocol):
    """Storage for sticky-session state. Implementations must be safe to call from many threads."""

    def get(self, session_id: str) -> SessionState | None:
        """Return the session's state, or ``None`` if it is unknown or expired."""
        ...

    def put(self, session_id: str, state: SessionState) -> None:
        """Store the session's state and restart its time to live."""
        ...


class InMemorySessionStore:
    """A store bounded in size, with a time to live; state is lost on restart.

    The gateway stores a session's state on each of its requests, so the least recently stored
    session is the least recently used one.

    Parameters
    ----------
    max_sessions : int
        Sessions kept; storing one more drops the least recently stored.
    ttl_seconds : float
        Seconds after its last ``put`` that a session expires.
    clock : callable, optional
        Monotonic clock in seconds; tests pass a fake one.
    """

    def __init__(
        self,
        max_sessions: int = 100_000,
        ttl_seconds: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be at least 1, got {max_sessions}")
        if ttl_seconds <= 0:
            raise ValueError(f"ttl_seconds must be positive, got {ttl_seconds}")
        self.max_sessions = max_sessions
        self.ttl_seconds = ttl_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._sessions: OrderedDict[str, tuple[float, SessionState]] = OrderedDict()

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    def get(self, session_id: str) -> SessionState | None:
        """Return the session's state, or ``None`` if it is unknown or expired."""
        now = self._clock()
        with self._lock:
            entry = self._sessions.get(session_id)
            if entry is None:
                return None
            expires, state = entry
            if expires <= now:
                del self._sessions[session_id]
                return None
            return state

    def put(self, session_id: str, state: SessionState) -> None:
        """Store the session's state and restart its time to live."""
        now = self._clock()
        with self._lock:
            self._sessions[session_id] = (now + self.ttl_seconds, state)
            self._sessions.move_to_end(session_id)
            self._drop_expired(now)
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)

    def _drop_expired(self, now: float) -> None:
        # Entries are in order of their last put, and every put sets the same time to live, so
        # the expired ones are at the front.
        while self._sessions:
            session_id, (expires, _) = next(iter(self._sessions.items()))
            if expires > now:
                return
            del self._sessions[session_id]
