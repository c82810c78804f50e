"""When the client retries a request, and how long it waits in between.

Only failures where the gateway did not process the request, or reported that it cannot right now,
are retried: connection errors (no response arrived) and HTTP 503 (the upstream model server
is unavailable). A 4xx is the caller's mistake and fails the same way again. A read timeout
means the gateway may still be generating, so repeating the request would double the work.
A stream is never retried once its response has begun, because the caller has seen chunks.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import httpx

RETRYABLE_STATUS = 503
"""The one HTTP status that is retried: service unavailable."""

RETRYABLE_TRANSPORT_ERRORS: tuple[type[httpx.TransportError], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.ReadError,
    httpx.WriteError,
    httpx.RemoteProtocolError,
)
"""Connection failures before a response arrived: refused, reset, or closed without a response."""


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently the client retries connection errors and HTTP 503.

    The wait before retry ``n`` (from 0) is ``initial_backoff * 2**n`` seconds, at most
    ``max_backoff``, less up to a quarter at random so that many clients do not retry in step.
    A 503 with a ``Retry-After`` of a number of seconds waits that long instead, also at most
    ``max_backoff``.

    Parameters
    ----------
    max_retries : int
        Retries after the first attempt. 0 disables retrying.
    initial_backoff : float
        Wait before the first retry, in seconds.
    max_backoff : float
        Maximum wait between two attempts, in seconds.

    Example::

        RouterClient("http://127.0.0.1:8000", retry=RetryPolicy(max_retries=5, initial_backoff=0.2))
    """

    max_retries: int = 2
    initial_backoff: float = 0.5
    max_backoff: float = 8.0

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be 0 or more, got {self.max_retries}")
        if self.initial_backoff < 0:
            raise ValueError(f"initial_backoff must be 0 or more seconds, got {self.initial_backoff}")
        if self.max_backoff < self.initial_backoff:
            raise ValueError(
                f"max_backoff ({self.max_backoff} s) must be at least initial_backoff "
                f"({self.initial_backoff} s)"
            )

    def backoff(self, retry: int, retry_after: str | None = None) -> float:
        """Return the seconds to wait before retry number ``retry`` (0 for the first retry).

        Example::

            RetryPolicy(initial_backoff=0.5).backoff(2)    # between 1.5 and 2.0
        """
        if retry_after is not None and _is_seconds(retry_after):
            return min(float(retry_after), self.max_backoff)
        delay = min(self.initial_backoff * 2.0**retry, self.max_backoff)
        return delay * (1 - 0.25 * random.random())


DEFAULT_RETRY = RetryPolicy()
"""Default retry policy: 2 retries, waiting about 0.5 s and then 1 s."""


def retry_reason(outcome: httpx.Response | httpx.TransportError) -> str | None:
    """Describe why ``outcome`` may be retried, or return ``None`` when it must not be.

    Example::

        retry_reason(httpx.ConnectError("refused"))    # 'ConnectError: refused'
    """
    if isinstance(outcome, httpx.Response):
        return f"HTTP {outcome.status_code}" if outcome.status_code == RETRYABLE_STATUS else None
    if isinstance(outcome, RETRYABLE_TRANSPORT_ERRORS):
        return f"{type(outcome).__name__}: {outcome}" if str(outcome) else type(outcome).__name__
    return None


def _is_seconds(value: str) -> bool:
    # Retry-After may also be an HTTP date, which falls back to the exponential backoff.
    try:
        return float(value) >= 0
    except ValueError:
        return False
