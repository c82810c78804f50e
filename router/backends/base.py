"""The backend interface: the request a backend receives and the result it returns."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from router.protocol import ChatCompletionRequest, CompletionRequest

RequestT = TypeVar("RequestT", ChatCompletionRequest, CompletionRequest)


@dataclass(frozen=True)
class BackendCall(Generic[RequestT]):
    """One completion request on its way to a backend.

    ``body`` is the JSON object the client sent, unchanged; ``params`` is its validated form.
    ``model`` is the served name the backend must use: the adapter's name, or the base model's
    name when ``adapter`` is ``None``.
    """

    params: RequestT
    body: dict[str, Any]
    model: str
    adapter: str | None
    request_id: str


@dataclass(frozen=True)
class JSONResult:
    """A complete JSON response body and its HTTP status."""

    body: dict[str, Any]
    status_code: int = 200


@dataclass(frozen=True)
class StreamResult:
    """A streaming response: server-sent events, each one complete (``data: ...`` and a blank line).

    A backend returns this only once the stream has started without error, so failures before
    the first event still get an HTTP error status.
    """

    events: AsyncIterator[bytes]


BackendResult = JSONResult | StreamResult


class Backend(Protocol):
    """A model server that completes requests with a given adapter or the base model."""

    async def start(self) -> None:
        """Acquire what serving needs (connections, threads); called once before serving."""
        ...

    async def close(self) -> None:
        """Release what :meth:`start` acquired; called once after serving."""
        ...

    async def readiness(self, expected: list[str]) -> list[str]:
        """Return why the backend cannot serve the models in ``expected`` now; empty when it can."""
        ...

    async def chat_completions(self, call: BackendCall[ChatCompletionRequest]) -> BackendResult:
        """Complete a chat conversation (``POST /v1/chat/completions``)."""
        ...

    async def completions(self, call: BackendCall[CompletionRequest]) -> BackendResult:
        """Complete text prompts (``POST /v1/completions``)."""
        ...
