"""The gateway's keep-alive HTTP transport against real servers on 127.0.0.1.

Most cases use :class:`ScriptedServer` (replies, stalls, dropped and truncated responses on cue).
Chunked and close-delimited bodies come from a raw asyncio server that writes fixed bytes,
because the scripted server always sends a Content-Length.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from scripted_server import Reply, json_reply

from router.backends.keepalive_transport import KeepAliveTransport

pytestmark = pytest.mark.anyio

TIMEOUT = httpx.Timeout(connect=2.0, read=0.5, write=2.0, pool=0.5)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def client(server_url: str, **options: float) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=server_url, timeout=TIMEOUT, transport=KeepAliveTransport(**options))


async def raw_server(response: bytes) -> asyncio.Server:
    """Start a server that reads one request head, writes ``response`` and closes the connection."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(response)
        await writer.drain()
        writer.close()

    return await asyncio.start_server(answer, "127.0.0.1", 0)


def server_url(server: asyncio.Server) -> str:
    host, port = server.sockets[0].getsockname()[:2]
    return f"http://{host}:{port}"


async def test_transport_reuses_one_connection(scripted):
    scripted.script(*(json_reply(200, {"n": n}) for n in range(5)))
    async with client(scripted.url) as http:
        bodies = [(await http.post("/v1/chat/completions", json={"n": n})).json() for n in range(5)]

    assert bodies == [{"n": n} for n in range(5)]
    assert scripted.connections == 1


async def test_transport_sends_method_path_headers_and_body(scripted):
    async with client(scripted.url) as http:
        response = await http.post(
            "/v1/completions?x=1", json={"prompt": "hi"}, headers={"x-request-id": "r1"}
        )

    received = scripted.requests[0]
    assert response.status_code == 200
    assert received.method == "POST"
    assert received.path == "/v1/completions?x=1"
    assert received.headers["x-request-id"] == "r1"
    assert received.body == b'{"prompt":"hi"}'


async def test_transport_passes_error_statuses(scripted):
    scripted.script(json_reply(503, {"error": "busy"}, {"retry-after": "2"}))
    async with client(scripted.url) as http:
        response = await http.get("/v1/models")

    assert response.status_code == 503
    assert response.headers["retry-after"] == "2"
    assert response.json() == {"error": "busy"}


async def test_transport_stall_is_read_timeout(scripted):
    scripted.script(Reply(stall=True))
    async with client(scripted.url) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.get("/v1/models")
        scripted.reset()
        response = await http.get("/v1/models")

    assert response.status_code == 200
    assert scripted.connections == 1  # after the reset: the timed-out connection was not reused


async def test_transport_dropped_connection_is_protocol_error(scripted):
    scripted.script(Reply(drop=True))
    async with client(scripted.url) as http:
        with pytest.raises(httpx.RemoteProtocolError, match="without responding"):
            await http.get("/v1/models")


async def test_transport_truncated_body_is_protocol_error(scripted):
    scripted.script(Reply(body=b"partial", truncate=True))
    async with client(scripted.url) as http:
        with pytest.raises(httpx.RemoteProtocolError, match="mid-response"):
            await http.get("/v1/models")


async def test_transport_refused_connection_is_connect_error(scripted):
    closed = await raw_server(b"")
    url = server_url(closed)
    closed.close()
    await closed.wait_closed()

    async with client(url) as http:
        with pytest.raises(httpx.ConnectError):
            await http.get("/v1/models")


async def test_transport_decodes_chunked_body():
    server = await raw_server(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        b"8\r\ndata: 1\n\r\n8\r\ndata: 2\n\r\n0\r\n\r\n"
    )
    async with server, client(server_url(server)) as http:
        response = await http.post("/v1/chat/completions", json={})

    assert response.text == "data: 1\ndata: 2\n"


async def test_transport_reads_body_until_close():
    server = await raw_server(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\nall of it"
    )
    async with server, client(server_url(server)) as http:
        response = await http.get("/")

    assert response.text == "all of it"


async def test_transport_closes_expired_idle_connections(scripted):
    async with client(scripted.url, keepalive_expiry=0.05) as http:
        await http.get("/v1/models")
        await asyncio.sleep(0.2)
        await http.get("/v1/models")
        await asyncio.sleep(0.2)  # the server thread notices the close

        assert scripted.connections == 2
        assert scripted.open_connections == 1


async def test_transport_bounds_open_connections(scripted):
    scripted.script(Reply(stall=True))
    async with client(scripted.url, max_connections=1) as http:
        stalled = asyncio.create_task(http.get("/v1/models", timeout=httpx.Timeout(5.0)))
        await asyncio.sleep(0.2)
        with pytest.raises(httpx.PoolTimeout):
            await http.get("/v1/models")
        scripted.reset()
        assert (await stalled).status_code == 200


async def test_transport_closes_abandoned_stream(scripted):
    scripted.script(Reply(body=b"data: 1\n\n", stall_body=True))
    async with client(scripted.url) as http:
        async with http.stream("GET", "/v1/models") as response:
            assert response.status_code == 200
        # Leaving the block closes the response before its body ended, so the connection goes.
        deadline = time.monotonic() + 5
        while scripted.open_connections and time.monotonic() < deadline:
            scripted.reset()  # releases the server's stalled write so that its handler detects the close
            await asyncio.sleep(0.05)

    assert scripted.open_connections == 0


def test_transport_rejects_zero_connections():
    with pytest.raises(ValueError, match="max_connections"):
        KeepAliveTransport(max_connections=0)
