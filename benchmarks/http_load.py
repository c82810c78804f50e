"""A minimal HTTP/1.1 load generator for the benchmarks: keep-alive connections, fixed concurrency.

httpx spends about a millisecond of CPU per request, which on a small machine caps the load
at a few hundred requests per second and hides what the server under test costs. This client
writes each request as raw bytes on an open connection and reads the response by its
``Content-Length``. It supports only what the benchmarks need: JSON POSTs to servers that
respond with a ``Content-Length`` (no chunked responses, no TLS).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import numpy as np


class LoadError(RuntimeError):
    """A request of the load run failed: a non-200 status or a malformed response."""


@dataclass(frozen=True)
class LoadResult:
    """Latencies of one load run, in milliseconds, and its wall time in seconds."""

    latencies_ms: np.ndarray
    elapsed_seconds: float

    @property
    def requests_per_second(self) -> float:
        """Completed requests per second of wall time."""
        return len(self.latencies_ms) / self.elapsed_seconds


def encode_post(host: str, path: str, body: dict) -> bytes:
    """Encode a keep-alive JSON POST request."""
    payload = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Read one response; return its status code and body."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    status = int(head[0].split(" ")[1])
    length = None
    for line in head[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    if length is None:
        raise LoadError(f"response without content-length (status {status}): only sized bodies are supported")
    return status, await reader.readexactly(length)


async def run_load(url: str, make_body: Callable[[int], dict], concurrency: int, count: int) -> LoadResult:
    """POST ``count`` requests to ``url`` over ``concurrency`` keep-alive connections.

    ``make_body(i)`` returns the JSON body of request ``i``. The connections are opened before
    the clock starts, so connection setup is not part of the figures.

    Raises
    ------
    LoadError
        On the first response whose status is not 200.
    """
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    connections = [await asyncio.open_connection(host, port) for _ in range(concurrency)]
    latencies = np.empty(count)
    next_index = 0

    async def worker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal next_index
        while next_index < count:
            index = next_index
            next_index += 1
            started = time.perf_counter()
            writer.write(encode_post(parts.netloc, parts.path, make_body(index)))
            status, body = await read_response(reader)
            latencies[index] = (time.perf_counter() - started) * 1000
            if status != 200:
                raise LoadError(f"request {index} to {url} returned HTTP {status}: {body[:200]!r}")

    try:
        started = time.perf_counter()
        await asyncio.gather(*(worker(reader, writer) for reader, writer in connections))
        elapsed = time.perf_counter() - started
    finally:
        for _, writer in connections:
            writer.close()
    return LoadResult(latencies, elapsed)
