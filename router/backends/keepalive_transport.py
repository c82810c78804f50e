"""A lean HTTP/1.1 keep-alive transport for httpx, used for the gateway's calls to its upstream.

httpx's default transport (httpcore) costs about 0.5 ms of CPU per request on one core of a
2-vCPU VM, and about 1.1 ms with 32 requests in flight, because each request scans the whole
connection pool (measured in docs/benchmarks.md). A gateway that forwards every request pays that
on all its traffic. :class:`KeepAliveTransport` keeps idle connections on a stack per origin and
parses responses with httptools, the C parser uvicorn uses, on plain asyncio protocols.

It plugs in below ``httpx.AsyncClient``, so timeouts, headers, content decoding and error types
stay httpx's: connect failures raise ``httpx.ConnectError`` or ``httpx.ConnectTimeout``, a silent
upstream ``httpx.ReadTimeout``, and a connection closed early ``httpx.RemoteProtocolError`` or
``httpx.ReadError``. It speaks plain ``http://`` only: other schemes go to httpx's own transport.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator
from typing import cast

import httptools
import httpx

logger = logging.getLogger(__name__)

PAUSE_READING_BYTES = 256 * 1024
"""Unread response bytes above which the socket stops being read until the caller catches up."""

Origin = tuple[str, int]


class _Connection(asyncio.Protocol):
    """One keep-alive connection to an upstream, carrying one request at a time."""

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.keep_alive = False
        self.complete = False
        self.error: httpx.TransportError | None = None
        self._headers_done = False
        self._length_known = False
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._paused = False
        self._changed = asyncio.Event()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not derive from asyncio.Transport but have the same methods.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as error:
            self._fail(httpx.RemoteProtocolError(f"invalid HTTP response from the upstream: {error}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.complete:
            return
        if self._headers_done and not self._length_known and exc is None:
            # A response without Content-Length or chunked encoding ends when the server closes.
            self.complete = True
            self._changed.set()
        elif exc is not None:
            self._fail(httpx.ReadError(f"connection to the upstream failed: {exc}"))
        elif self._headers_done:
            self._fail(httpx.RemoteProtocolError("the upstream closed the connection mid-response"))
        else:
            self._fail(httpx.RemoteProtocolError("the upstream closed the connection without responding"))

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))
        lowered = name.lower()
        if lowered == b"content-length" or (lowered == b"transfer-encoding" and b"chunked" in value.lower()):
            self._length_known = True

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        self.keep_alive = self._parser.should_keep_alive()
        self._headers_done = True
        self._changed.set()

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > PAUSE_READING_BYTES and not self._paused and self.transport is not None:
            self.transport.pause_reading()
            self._paused = True
        self._changed.set()

    def on_message_complete(self) -> None:
        self.complete = True
        self._length_known = True
        self._changed.set()

    # used by the transport

    def send(self, data: bytes) -> None:
        """Start a request: clear the previous response's state and write ``data``."""
        self._reset()
        assert self.transport is not None
        self.transport.write(data)

    async def wait_for_headers(self, timeout: float | None) -> None:
        """Wait until the response's status and headers arrived; raise on failure or timeout."""
        while not self._headers_done:
            self._raise_if_failed()
            await self._wait(timeout)
        self._raise_if_failed()

    async def read_chunk(self, timeout: float | None) -> bytes:
        """Return the next part of the body, or ``b""`` at its end."""
        while True:
            if self._chunks:
                chunk = b"".join(self._chunks)
                self._chunks.clear()
                self._buffered = 0
                if self._paused and self.transport is not None:
                    self.transport.resume_reading()
                    self._paused = False
                return chunk
            if self.complete:
                return b""
            self._raise_if_failed()
            await self._wait(timeout)

    def reusable(self, expiry: float) -> bool:
        """Return whether the connection can carry another request now."""
        return (
            not self.closed
            and self.transport is not None
            and not self.transport.is_closing()
            and time.monotonic() - self.idle_since < expiry
        )

    def close(self) -> None:
        """Close the connection; a response still being read fails."""
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    async def _wait(self, timeout: float | None) -> None:
        self._changed.clear()
        try:
            async with asyncio.timeout(timeout):
                await self._changed.wait()
        except TimeoutError:
            raise httpx.ReadTimeout(f"the upstream sent nothing for {timeout} s") from None

    def _fail(self, error: httpx.TransportError) -> None:
        if self.error is None:
            self.error = error
        self._changed.set()

    def _raise_if_failed(self) -> None:
        if self.error is not None:
            raise self.error


class _ResponseStream(httpx.AsyncByteStream):
    """The body of one response; closing it hands the connection back to the transport."""

    def __init__(self, transport: KeepAliveTransport, connection: _Connection, timeout: float | None) -> None:
        self._transport = transport
        self._connection = connection
        self._timeout = timeout
        self._released = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            while chunk := await self._connection.read_chunk(self._timeout):
                yield chunk
        except BaseException:
            self._release()
            raise

    async def aclose(self) -> None:
        self._release()

    def _release(self) -> None:
        if not self._released:
            self._released = True
            self._transport.release(self._connection)


class KeepAliveTransport(httpx.AsyncBaseTransport):
    """An httpx transport with a keep-alive connection pool per origin, for ``http://`` URLs.

    Parameters
    ----------
    max_connections : int
        Most connections open at once over all origins; further requests wait for one to free
        up, for at most the request's ``pool`` timeout (``httpx.PoolTimeout``).
    keepalive_expiry : float
        Seconds an idle connection is kept. Keep it below the upstream's own idle timeout (5 s
        for uvicorn, the server of vLLM and this project), so that the upstream rarely closes a
        connection just as a request is sent on it.

    Examples
    --------
    >>> client = httpx.AsyncClient(transport=KeepAliveTransport(max_connections=64))
    """

    def __init__(self, *, max_connections: int = 256, keepalive_expiry: float = 4.0) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {max_connections}")
        self.max_connections = max_connections
        self.keepalive_expiry = keepalive_expiry
        self._idle: defaultdict[Origin, deque[_Connection]] = defaultdict(deque)
        self._slots: asyncio.Semaphore | None = None
        self._other_schemes: httpx.AsyncHTTPTransport | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` on an idle or new connection; return once the headers arrived."""
        if request.url.scheme != "http":
            if self._other_schemes is None:
                self._other_schemes = httpx.AsyncHTTPTransport()
            return await self._other_schemes.handle_async_request(request)

        timeouts = request.extensions.get("timeout", {})
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_connections)
        try:
            async with asyncio.timeout(timeouts.get("pool")):
                await self._slots.acquire()
        except TimeoutError:
            raise httpx.PoolTimeout("no free connection to the upstream in time") from None

        connection: _Connection | None = None
        try:
            body = await request.aread()
            origin = (request.url.host, request.url.port or 80)
            connection = self._idle_connection(origin) or await self._connect(origin, timeouts.get("connect"))
            connection.send(_request_head(request, len(body)) + body)
            await connection.wait_for_headers(timeouts.get("read"))
        except BaseException:
            if connection is not None:
                connection.close()
            self._slots.release()
            raise

        return httpx.Response(
            connection.status,
            headers=connection.headers,
            stream=_ResponseStream(self, connection, timeouts.get("read")),
            extensions={"http_version": b"HTTP/1.1"},
        )

    def release(self, connection: _Connection) -> None:
        """Take back ``connection`` after its response: keep it for reuse, or close it."""
        if connection.complete and connection.keep_alive and not connection.closed:
            connection.idle_since = time.monotonic()
            self._idle[connection.origin].append(connection)
        else:
            connection.close()
        assert self._slots is not None
        self._slots.release()

    async def aclose(self) -> None:
        """Close every idle connection."""
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()
        if self._other_schemes is not None:
            await self._other_schemes.aclose()

    def _idle_connection(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        if not idle:
            return None
        # The stack's bottom contains the connections idle the longest. Closing the expired ones
        # there keeps connections opened for a burst of load from staying open after it.
        while idle and not idle[0].reusable(self.keepalive_expiry):
            idle.popleft().close()
        while idle:
            connection = idle.pop()  # the most recently used one is the least likely to expire
            if connection.reusable(self.keepalive_expiry):
                return connection
            connection.close()
        return None

    async def _connect(self, origin: Origin, timeout: float | None) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                _, connection = await loop.create_connection(lambda: _Connection(origin), *origin)
        except TimeoutError:
            raise httpx.ConnectTimeout(
                f"connecting to {origin[0]}:{origin[1]} timed out: check that the upstream is up"
            ) from None
        except OSError as error:
            raise httpx.ConnectError(
                f"connection to {origin[0]}:{origin[1]} failed: {error}: check the upstream is running"
            ) from None
        return connection


def _request_head(request: httpx.Request, body_length: int) -> bytes:
    target = request.url.raw_path or b"/"
    lines = [request.method.encode("ascii") + b" " + target + b" HTTP/1.1"]
    for name, value in request.headers.raw:
        if name.lower() not in (b"content-length", b"transfer-encoding"):
            lines.append(name + b": " + value)
    if body_length or request.method not in ("GET", "HEAD"):
        lines.append(b"content-length: " + str(body_length).encode("ascii"))
    return b"\r\n".join(lines) + b"\r\n\r\n"
