"""A tiny OpenAI-compatible upstream for the tests: it records each request body and misbehaves on cue.

``adapter-router serve-model`` generates real text but cannot show what body it received, and
it cannot be made to fail on purpose; this server can. It writes every POST body as one JSON
line to the record file, and a request's ``test_behaviour`` field (a field the gateway does
not know, so it passes through) selects the response:

- absent: a chat completion, or with ``stream`` two chunks and ``[DONE]``; the first chunk
  names the model it was sent, the second ``upstream/<model>``
- ``"status:<code>"``: HTTP ``<code>`` with an OpenAI error body
- ``"text:<code>"``: HTTP ``<code>`` with a plain text body
- ``"invalid_json"``: HTTP 200 with a body that is not JSON
- ``"slow"`` or ``"slow:<seconds>"``: the normal response after 5 seconds (or ``<seconds>``)
- ``"drop_stream"``: one stream chunk, then the connection breaks (the body is shorter than
  its ``Content-Length``)
- ``"stall_stream"`` or ``"stall_stream:<seconds>"``: one stream chunk, then the rest after 5
  seconds (or ``<seconds>``)
- ``"adapter_missing"``: HTTP 404 as vLLM sends it for a model it does not serve, unless the
  request names the base model ``demo-base``, which gets the normal answer
- ``"lorax_adapter_missing"``: what LoRAX sends when it cannot load the request's
  ``adapter_id``: HTTP 424 with ``{"error": ..., "error_type": "generation"}``, or for a stream
  HTTP 200 and that object as the only event. A request without ``adapter_id`` gets the normal
  answer.

When a client closes its connection while a slow or stalled response waits, or before a write
reaches it, the server appends ``{"request_id", "path", "behaviour"}`` as one JSON line to the
disconnect file, ``<record file stem>.disconnects.jsonl`` next to the record file.

Run: ``python recording_upstream.py --port PORT --record FILE [--listen-when FILE]``; standard
library only. With ``--listen-when``, the port is bound at once but connections are refused
until that file exists.
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

SLOW_SECONDS = 5.0
BASE_MODEL = "demo-base"
MODELS = [BASE_MODEL, "math", "code", "medical", "legal", "finance", "sql"]
TRIGGER_POLL_SECONDS = 0.02


def disconnect_file(record_file: Path) -> Path:
    """Return the file the server appends its disconnect records to, next to ``record_file``."""
    return record_file.with_name(f"{record_file.stem}.disconnects.jsonl")


class ClientGone(Exception):
    """The client closed its connection before the response was complete."""


class RecordingHandler(BaseHTTPRequestHandler):
    """Handler of the OpenAI endpoints the gateway forwards to."""

    protocol_version = "HTTP/1.1"
    record_file: Path

    def do_GET(self) -> None:
        if self.path in ("/health", "/v1/models"):
            data = [{"id": model, "object": "model", "owned_by": "test"} for model in MODELS]
            self._send_json(
                200, {"status": "ok"} if self.path == "/health" else {"object": "list", "data": data}
            )
        else:
            self._send_json(404, _error("not found"))

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
        record = {"path": self.path, "headers": dict(self.headers.items()), "body": body}
        with self.record_file.open("a", encoding="utf-8") as file:
            file.write(json.dumps(record) + "\n")

        behaviour = str(body.get("test_behaviour", ""))
        try:
            self._respond(behaviour, body)
        except (ClientGone, BrokenPipeError, ConnectionResetError):
            self._record_disconnect(behaviour)
            self.close_connection = True

    def _respond(self, behaviour: str, body: dict[str, Any]) -> None:
        name, _, argument = behaviour.partition(":")
        if name == "status":
            self._send_json(int(argument), _error(f"upstream says {behaviour}"))
        elif name == "text":
            self._send(int(argument), b"plain text failure", "text/plain")
        elif behaviour == "invalid_json":
            self._send(200, b"this is not json", "application/json")
        elif behaviour == "adapter_missing" and body.get("model") != BASE_MODEL:
            error = _error(f"The model `{body.get('model')}` does not exist.")
            error["error"].update(type="NotFoundError", code=404)
            self._send_json(404, error)
        elif behaviour == "lorax_adapter_missing" and "adapter_id" in body:
            self._send_lorax_adapter_error(body["adapter_id"], stream=bool(body.get("stream")))
        else:
            if name == "slow":
                self._hold(float(argument or SLOW_SECONDS))
            if body.get("stream"):
                stall = float(argument or SLOW_SECONDS) if name == "stall_stream" else None
                self._send_stream(body["model"], drop=behaviour == "drop_stream", stall=stall)
            else:
                self._send_json(200, _completion(body["model"]))

    def _hold(self, seconds: float) -> None:
        """Wait ``seconds``; raise :class:`ClientGone` as soon as the client closes its connection."""
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select([self.connection], [], [], remaining)
            if not readable:
                return
            try:
                peeked = self.connection.recv(1, socket.MSG_PEEK)
            except OSError:
                peeked = b""
            if not peeked:
                raise ClientGone
            # The client sent more bytes (no client here pipelines requests): keep waiting without
            # spinning on the readable socket.
            time.sleep(min(remaining, 0.05))

    def _record_disconnect(self, behaviour: str) -> None:
        record = {"request_id": self.headers.get("x-request-id"), "path": self.path, "behaviour": behaviour}
        with disconnect_file(self.record_file).open("a", encoding="utf-8") as file:
            file.write(json.dumps(record) + "\n")

    def _send_stream(self, model: str, *, drop: bool, stall: float | None = None) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("connection", "close")
        if drop:
            # A promised length that never arrives: the client sees a broken connection, not an
            # orderly end of the stream.
            self.send_header("content-length", "100000")
        self.end_headers()
        # json.dumps' default separators (with spaces) make an event relayed byte for byte
        # distinguishable from one the gateway re-encoded.
        first = _chunk(model, {"role": "assistant", "content": "Hello"}, None)
        self.wfile.write(f"data: {json.dumps(first)}\n\n".encode())
        self.wfile.flush()
        if drop:
            self.close_connection = True
            return
        if stall is not None:
            self._hold(stall)
        second = _chunk(f"upstream/{model}", {"content": " world"}, "stop")
        self.wfile.write(f"data: {json.dumps(second)}\n\ndata: [DONE]\n\n".encode())
        self.close_connection = True

    def _send_lorax_adapter_error(self, adapter_id: str, *, stream: bool) -> None:
        # LoRAX loads an adapter when a request first names it. A failed download or load ends
        # the request with InferError::GenerationError, which LoRAX's router returns as HTTP 424
        # with error_type "generation", or as one error event in a stream.
        error = {
            "error": f"Request failed during generation: Server error: adapter {adapter_id} not found",
            "error_type": "generation",
        }
        if not stream:
            self._send_json(424, error)
            return
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("connection", "close")
        self.end_headers()
        self.wfile.write(f"data:{json.dumps(error)}\n\n".encode())
        self.close_connection = True

    def _send_json(self, status: int, body: dict[str, Any]) -> None:
        self._send(status, json.dumps(body).encode(), "application/json")

    def _send(self, status: int, content: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)

    def log_message(self, format: str, *args: Any) -> None:
        print(format % args, flush=True)


def _completion(model: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-recorded",
        "object": "chat.completion",
        "created": 0,
        "model": f"upstream/{model}",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "Hello world"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }


def _chunk(model: str, delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-recorded",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }


def _error(message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": "test"}}


class ListeningServer(ThreadingHTTPServer):
    # The default accept backlog of 5 overflows when the load test opens 50 connections at once,
    # and the kernel then resets some of them, which the gateway reports as upstream failures.
    request_queue_size = 256


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="port to listen on, on 127.0.0.1")
    parser.add_argument("--record", type=Path, required=True, help="JSONL file to append request bodies to")
    parser.add_argument(
        "--listen-when",
        type=Path,
        help="bind the port at once, but refuse connections until this file exists",
    )
    args = parser.parse_args()

    RecordingHandler.record_file = args.record
    server = ListeningServer(("127.0.0.1", args.port), RecordingHandler, bind_and_activate=False)
    server.daemon_threads = True
    server.server_bind()
    if args.listen_when is not None:
        # A bound socket that does not listen makes the kernel refuse connections to the port.
        print(f"recording upstream bound to port {args.port}, waiting for {args.listen_when}", flush=True)
        while not args.listen_when.exists():
            time.sleep(TRIGGER_POLL_SECONDS)
    server.server_activate()
    print(f"recording upstream on 127.0.0.1:{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
