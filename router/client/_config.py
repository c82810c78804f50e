"""Connection settings shared by the sync and async clients: base URL, timeouts and headers."""

from __future__ import annotations

from collections.abc import Mapping
from importlib import metadata

import httpx

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
"""Default address of ``adapter-router serve``."""

# A completion without streaming arrives only when generation ends, so the read timeout must
# cover a whole generation of a real-sized model. Connecting to a running gateway is quick.
DEFAULT_TIMEOUT = httpx.Timeout(120.0, connect=5.0)
"""Default timeouts: 5 s to connect, 120 s for each read, write and pool wait."""


def gateway_url(base_url: str | httpx.URL) -> httpx.URL:
    """Return the gateway's root URL, without a trailing ``/`` or ``/v1``.

    The OpenAI SDKs take ``.../v1`` as their base URL. This client takes either form, because it
    also calls ``/health``, which is not under ``/v1``.

    Example::

        gateway_url("http://127.0.0.1:8000/v1/")    # URL('http://127.0.0.1:8000')
    """
    url = httpx.URL(str(base_url))
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"base_url must be an http:// or https:// URL with a host, got {str(base_url)!r}")
    path = url.path.rstrip("/").removesuffix("/v1")
    return url.copy_with(path=path or "/")


def checked_timeout(timeout: float | httpx.Timeout) -> httpx.Timeout:
    """Return ``timeout`` as an :class:`httpx.Timeout` in which every limit is set.

    Raises ``ValueError`` for a limit that is ``None`` (no timeout) or not positive, so a
    request can never wait forever.

    Example::

        checked_timeout(10)    # Timeout(timeout=10)
    """
    if isinstance(timeout, bool) or not isinstance(timeout, int | float | httpx.Timeout):
        raise TypeError(f"timeout must be a number of seconds or an httpx.Timeout, got {timeout!r}")
    result = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(float(timeout))
    limits = {"connect": result.connect, "read": result.read, "write": result.write, "pool": result.pool}
    for name, seconds in limits.items():
        if seconds is None or seconds <= 0:
            raise ValueError(f"every timeout must be a positive number of seconds, got {name}={seconds}")
    return result


def default_headers(api_key: str | None, headers: Mapping[str, str] | None) -> dict[str, str]:
    """Return the headers every request sends: user agent, API key as a bearer token, and ``headers``."""
    result = {"user-agent": f"adapter-router-client/{_version()}"}
    if api_key is not None:
        if not api_key or api_key != api_key.strip():
            raise ValueError("api_key must be a non-empty string without surrounding whitespace")
        result["authorization"] = f"Bearer {api_key}"
    result.update(headers or {})
    return result


def _version() -> str:
    try:
        return metadata.version("adapter-router")
    except metadata.PackageNotFoundError:
        return "unknown"
