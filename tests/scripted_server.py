"""A tiny HTTP server on 127.0.0.1 that sends scripted replies and counts what it receives.

The real gateway cannot be made to return HTTP 503, 401 or 500, to stall, or to break a
connection on cue, and the client's retry, timeout and error mapping need exactly that. Each
request takes the next :class:`Reply` from the script (a default reply once the script is
used up), and the server records every request and every connection it accepted.

It runs in a thread of the test process, standard library only.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

STALL_SECONDS = 10.0
"""Maximum time a stalled reply keeps its connection, in seconds. A reset of the server ends it sooner."""

ROUTER_HEADERS = {
    "x-router-adapter": "math",
    "x-router-domain": "math",
    "x-router-confidence": "0.9100",
    "x-router-fallback": "none",
}


@dataclass
class Reply:
    """One scripted reply.

    ``stall`` waits (until the server is reset, at most :data:`STALL_SECONDS`) before replying,
    and ``stall_body`` waits the same way after sending the headers and ``body``. ``drop``
    closes the connection without a reply. ``truncate`` promises a longer body than it sends
    and then closes the connection, which breaks a stream in the middle.
    """

    status: int = 200
    body: bytes = b'{"status": "ok"}'
    headers: dict[str, str] = field(default_factory=lambda: {"content-type": "application/json"})
    stall: bool = False
    stall_body: bool = False
    drop: bool = False
    truncate: bool = False


def json_reply(status: int, body: Any, headers: dict[str, str] | None = None) -> Reply:
    """Return a reply with ``body`` as JSON and ``headers`` added."""
    return Reply(status, json.dumps(body).encode(), {"content-type": "application/json", **(headers or {})})


def error_reply(status: int, message: str, error_type: str, code: str | None = None) -> Reply:
    """Return a reply in the OpenAI error shape."""
    error = {"message": message, "type": error_type, "param": None, "code": code}
    return json_reply(status, {"error": error})


def stream_reply(events: list[Any], *, done: bool = True, truncate: bool = False) -> Reply:
    """Return a server-sent event stream of ``events`` (JSON-encoded), ending with ``[DONE]`` if ``done``."""
    body = b"".join(f"data: {json.dumps(event)}\n\n".encode() for event in events)
    if done:
        body += b"data: [DONE]\n\n"
    headers = {"content-type": "text/event-stream", **ROUTER_HEADERS}
    return Reply(200, body, headers, truncate=truncate)


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out has closed its end, so writing the late reply fails with
        # BrokenPipeError or ConnectionResetError: expected here, and not worth a traceback.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@dataclass
class ReceivedRequest:
    """A request as the server received it."""

    method: str
    path: str
    headers: dict[str, str]
    """Header names in lower case."""
    body: bytes


class ScriptedServer:
    """An HTTP/1.1 server with keep-alive that replies from a script. Use :meth:`start` and :meth:`stop`."""

    def __init__(self) -> None:
        self.requests: list[ReceivedRequest] = []
        self.connections = 0
        """Connections accepted since the last reset."""
        self.open_connections = 0
        """Connections accepted and not yet closed, counting from the server's start."""
        self._script: list[Reply] = []
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._stopped = False
        self._server = _QuietServer(("127.0.0.1", 0), self._handler_class())
        # A short poll interval makes stop() return within about 50 ms instead of 0.5 s.
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        """The server's base URL."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> ScriptedServer:
        """Serve in a background thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close the listening socket and shut down every open connection."""
        if self._stopped:
            return
        self._stopped = True
        self._release.set()
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def script(self, *replies: Reply) -> None:
        """Respond to the next requests with ``replies``, in order."""
        with self._lock:
            self._script = list(replies)

    def reset(self) -> None:
        """Release stalled replies, then forget the script and what was received."""
        self._release.set()
        with self._lock:
            self._script = []
            self.requests = []
            self.connections = 0
        self._release = threading.Event()

    def _next_reply(self, request: ReceivedRequest) -> tuple[Reply, threading.Event]:
        with self._lock:
            self.requests.append(request)
            reply = self._script.pop(0) if self._script else Reply()
            return reply, self._release

    def _count_connection(self, sock: socket.socket, opened: bool) -> None:
        with self._lock:
            self.connections += int(opened)
            self.open_connections += 1 if opened else -1
            if opened:
                self._sockets.add(sock)
            else:
                self._sockets.discard(sock)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in separate writes. Without TCP_NODELAY, Nagle's algorithm
            # and delayed ACKs held each reply back by about 40 ms on Linux loopback.
            disable_nagle_algorithm = True

            def setup(self) -> None:
                super().setup()
                server._count_connection(self.connection, opened=True)

            def finish(self) -> None:
                try:
                    super().finish()
                finally:
                    server._count_connection(self.connection, opened=False)

            def do_GET(self) -> None:
                self._reply()

            def do_POST(self) -> None:
                self._reply()

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _reply(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                headers = {name.lower(): value for name, value in self.headers.items()}
                request = ReceivedRequest(self.command, self.path, headers, body)
                reply, release = server._next_reply(request)

                if reply.stall:
                    release.wait(STALL_SECONDS)
                if reply.drop:
                    self.close_connection = True
                    return
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                # A longer promised body keeps the client reading after ``body``.
                unfinished = reply.truncate or reply.stall_body
                declared = len(reply.body) + (1000 if unfinished else 0)
                self.send_header("content-length", str(declared))
                if unfinished:
                    self.send_header("connection", "close")
                    self.close_connection = True
                self.end_headers()
                self.wfile.write(reply.body)
                if reply.stall_body:
                    self.wfile.flush()
                    release.wait(STALL_SECONDS)
                    self.close_connection = True

        return Handler
