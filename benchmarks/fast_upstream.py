"""An OpenAI-compatible upstream that responds immediately, to measure what the gateway adds.

It serves ``GET /health``, ``GET /v1/models`` (the names given with ``--models``) and
``POST /v1/chat/completions`` / ``POST /v1/completions`` with a fixed one-word completion that
names the requested model. There is no generation, no framework and no thread per request: one
asyncio protocol parses HTTP/1.1 keep-alive requests by ``Content-Length``, so the upstream's own
cost stays far below the gateway's. It is a benchmark fixture, not a server for real traffic:
chunked request bodies and ``stream: true`` are not supported.

Run: ``python benchmarks/fast_upstream.py --port 8101``; standard library only (uvloop if installed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time

DEFAULT_MODELS = "demo-base,math,code,medical,legal,finance,sql"
MAX_HEADER_BYTES = 65_536


def completion_body(path: str, model: str) -> dict:
    """Return a minimal completion for ``path`` in the OpenAI shape."""
    usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
    if path == "/v1/completions":
        choice = {"index": 0, "text": "ok", "finish_reason": "stop", "logprobs": None}
        kind = "text_completion"
    else:
        choice = {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
        kind = "chat.completion"
    return {
        "id": "cmpl-fast",
        "object": kind,
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": usage,
    }


def http_response(status: int, body: dict) -> bytes:
    """Encode an HTTP/1.1 keep-alive response with a JSON body."""
    payload = json.dumps(body).encode()
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found"}.get(status, "Error")
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


class FastUpstream(asyncio.Protocol):
    """One keep-alive connection: parse each request from the buffer and send its response."""

    def __init__(self, models: list[str]) -> None:
        self.models = models
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_HEADER_BYTES:
                    self.transport.close()
                return
            head = self.buffer[:end].decode("latin-1").split("\r\n")
            length = 0
            for line in head[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            method, path = head[0].split(" ")[:2]
            self.transport.write(self.respond(method, path, body))

    def respond(self, method: str, path: str, body: bytes) -> bytes:
        """Return the encoded response to one request."""
        if method == "GET" and path == "/health":
            return http_response(200, {"status": "ok"})
        if method == "GET" and path == "/v1/models":
            data = [{"id": model, "object": "model", "owned_by": "benchmark"} for model in self.models]
            return http_response(200, {"object": "list", "data": data})
        if method == "POST" and path in ("/v1/chat/completions", "/v1/completions"):
            try:
                model = str(json.loads(body).get("model", ""))
            except (ValueError, AttributeError):
                error = {"message": "invalid JSON body", "type": "invalid_request_error"}
                return http_response(400, {"error": error})
            return http_response(200, completion_body(path, model))
        return http_response(404, {"error": {"message": f"no route {method} {path}", "type": "not_found"}})


async def serve(host: str, port: int, models: list[str]) -> None:
    """Serve until cancelled."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: FastUpstream(models), host, port, backlog=1024)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8101, help="port to listen on (default: 8101)")
    parser.add_argument(
        "--models",
        default=DEFAULT_MODELS,
        help=f"comma-separated model names listed by /v1/models (default: {DEFAULT_MODELS})",
    )
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        uvloop = None
    runner = uvloop.run if uvloop is not None else asyncio.run
    with contextlib.suppress(KeyboardInterrupt):
        runner(serve(args.host, args.port, args.models.split(",")))


if __name__ == "__main__":
    main()
