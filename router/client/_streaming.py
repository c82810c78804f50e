"""Streamed chat completions: server-sent events decoded into chunks, sync and async.

The gateway streams as OpenAI does: each event's ``data`` is one ``chat.completion.chunk``
JSON object, an error after the stream began arrives as an ``{"error": {...}}`` event, and
``data: [DONE]`` ends the stream. A stream is never retried, because the caller has already
seen its first chunks.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator
from types import TracebackType
from typing import Any

import httpx

from router.client._exceptions import (
    RouterConnectionError,
    RouterError,
    decision_or_none,
    error_from_event,
    error_from_transport,
)
from router.client._protocol import invalid_response
from router.client._types import HeaderDecision

logger = logging.getLogger(__name__)

DONE = "[DONE]"


class EventDecoder:
    """Collect the ``data`` lines of server-sent events and return each event's data when it ends.

    Follows the event-stream format of the HTML standard: lines starting with ``:`` are
    comments, ``event``, ``id`` and ``retry`` fields are ignored, several ``data`` lines join
    with a newline, and a blank line ends the event.

    Example::

        decoder = EventDecoder()
        [decoder.feed(line) for line in ['data: {"a": 1}', ""]]    # [None, '{"a": 1}']
    """

    def __init__(self) -> None:
        self._data: list[str] = []

    def feed(self, line: str) -> str | None:
        """Take one line without its line ending, and return the event's data when ``line`` ends an event."""
        if not line:
            data = "\n".join(self._data) if self._data else None
            self._data = []
            return data
        field, _, value = line.partition(":")
        if field == "data":
            self._data.append(value.removeprefix(" "))
        return None


class ChunkReader:
    """Turn a stream's lines into chunks, and record whether ``data: [DONE]`` arrived.

    Events after ``[DONE]`` are ignored. The caller still reads those lines, so the response
    ends cleanly and its connection returns to the pool.
    """

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.done = False
        self._decoder = EventDecoder()

    def read(self, line: str) -> dict[str, Any] | None:
        """Take one line, and return a chunk when the line completes one.

        Pass ``""`` at the end of the stream, so an event without its closing blank line still counts.
        """
        data = self._decoder.feed(line)
        if data is None or self.done:
            return None
        if data == DONE:
            self.done = True
            return None
        return chunk_from_event(data, self.response)


def chunk_from_event(data: str, response: httpx.Response) -> dict[str, Any]:
    """Parse one event's data into a chunk, or raise the error that an ``{"error": ...}`` event carries."""
    try:
        chunk = json.loads(data)
    except json.JSONDecodeError:
        raise invalid_response(response, f"a stream event is not valid JSON: {data[:200]!r}") from None
    if not isinstance(chunk, dict):
        raise invalid_response(response, f"a stream event is a JSON {type(chunk).__name__}, not an object")
    if "error" in chunk and "choices" not in chunk:
        raise error_from_event(chunk["error"], response)
    return chunk


def _unfinished(response: httpx.Response) -> RouterConnectionError:
    return RouterConnectionError(
        f"The stream from {response.request.url} ended before 'data: [DONE]': the connection closed early.",
        request_id=response.headers.get("x-request-id"),
        decision=decision_or_none(response.headers),
    )


class ChatStream:
    """The chunks of a streamed chat completion, and the routing decision that serves it.

    Iterate to receive each ``chat.completion.chunk`` as a dict. The connection is released
    when the stream ends, when :meth:`close` is called, or when a ``with`` block exits. Close a
    stream you stop reading early, or the connection stays open until it is garbage collected.

    Example::

        with client.chat(messages, stream=True) as stream:
            print(stream.decision.model)
            for chunk in stream:
                print(chunk["choices"][0]["delta"].get("content", ""), end="")
    """

    def __init__(self, response: httpx.Response, decision: HeaderDecision) -> None:
        self.response = response
        self.decision = decision
        self._chunks = self._iter_chunks()

    @property
    def request_id(self) -> str | None:
        """The gateway's ``x-request-id`` for this request."""
        request_id: str | None = self.response.headers.get("x-request-id")
        return request_id

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self._chunks

    def __next__(self) -> dict[str, Any]:
        return next(self._chunks)

    def close(self) -> None:
        """Stop the stream and release its connection. Calling it again does nothing."""
        self._chunks.close()
        self.response.close()

    def __enter__(self) -> ChatStream:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _iter_chunks(self) -> Generator[dict[str, Any], None, None]:
        reader = ChunkReader(self.response)
        try:
            for line in self.response.iter_lines():
                chunk = reader.read(line)
                if chunk is not None:
                    yield chunk
            chunk = reader.read("")
            if chunk is not None:
                yield chunk
        except httpx.TransportError as error:
            raise _stream_error(error, self.response) from error
        finally:
            self.response.close()
        if not reader.done:
            raise _unfinished(self.response)


class AsyncChatStream:
    """The chunks of a streamed chat completion from :class:`AsyncRouterClient`, and its decision.

    The async twin of :class:`ChatStream`: iterate with ``async for``, release with
    :meth:`aclose` or ``async with``.

    Example::

        async with await client.chat(messages, stream=True) as stream:
            async for chunk in stream:
                print(chunk["choices"][0]["delta"].get("content", ""), end="")
    """

    def __init__(self, response: httpx.Response, decision: HeaderDecision) -> None:
        self.response = response
        self.decision = decision
        self._chunks = self._iter_chunks()

    @property
    def request_id(self) -> str | None:
        """The gateway's ``x-request-id`` for this request."""
        request_id: str | None = self.response.headers.get("x-request-id")
        return request_id

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._chunks

    async def __anext__(self) -> dict[str, Any]:
        return await self._chunks.__anext__()

    async def aclose(self) -> None:
        """Stop the stream and release its connection. Calling it again does nothing."""
        await self._chunks.aclose()
        await self.response.aclose()

    async def __aenter__(self) -> AsyncChatStream:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _iter_chunks(self) -> AsyncGenerator[dict[str, Any], None]:
        reader = ChunkReader(self.response)
        try:
            async for line in self.response.aiter_lines():
                chunk = reader.read(line)
                if chunk is not None:
                    yield chunk
            chunk = reader.read("")
            if chunk is not None:
                yield chunk
        except httpx.TransportError as error:
            raise _stream_error(error, self.response) from error
        finally:
            await self.response.aclose()
        if not reader.done:
            raise _unfinished(self.response)


def _stream_error(error: httpx.TransportError, response: httpx.Response) -> RouterError:
    result = error_from_transport(error, response.request.url)
    result.request_id = response.headers.get("x-request-id")
    result.decision = decision_or_none(response.headers)
    logger.warning("stream of request %s broke and is not retried: %s", result.request_id or "-", error)
    return result
