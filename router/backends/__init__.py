"""Backends: where the gateway's requests are generated."""

from router.backends.base import Backend, BackendCall, BackendResult, JSONResult, StreamResult

__all__ = ["Backend", "BackendCall", "BackendResult", "JSONResult", "StreamResult"]
