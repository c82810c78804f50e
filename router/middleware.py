"""ASGI middleware of the HTTP servers: request ids, the body size limit, and the last-resort 500.

Both are plain ASGI middleware rather than Starlette's ``BaseHTTPMiddleware``, so streaming
responses pass through them untouched.
"""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any

from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from router.errors import GatewayError, RequestTooLargeError

logger = logging.getLogger(__name__)

_CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def request_id(request: Request) -> str:
    """Return the id :class:`RequestIdMiddleware` gave ``request``."""
    return str(getattr(request.state, "request_id", "-"))


def set_response_headers(request: Request, headers: dict[str, str]) -> None:
    """Remember headers that every response to ``request`` carries, error responses included.

    The handlers call this with the routing decision's ``x-router-*`` headers as soon as the
    decision is made, so a backend failure after routing still reports the decision.
    """
    request.state.response_headers = headers


def response_headers(scope_or_request: Scope | Request) -> dict[str, str]:
    """Return the headers recorded by :func:`set_response_headers` (empty when none)."""
    state = (
        scope_or_request.get("state", {})
        if isinstance(scope_or_request, dict)
        else scope_or_request.scope.get("state", {})
    )
    return dict(state.get("response_headers", {}))


class RequestIdMiddleware:
    """Give every request an id, send it back as ``x-request-id``, and turn crashes into HTTP 500.

    A client's own ``x-request-id`` is kept when it is a plain token of up to 128 characters.
    An exception that no handler caught is logged with the request id, and the client gets an
    OpenAI-shaped 500. When the response has already started (a stream), the connection is
    closed instead. Either way the server keeps serving.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        given = Headers(scope=scope).get("x-request-id", "")
        request_id = given if _CLIENT_REQUEST_ID.fullmatch(given) else f"req_{uuid.uuid4().hex}"
        scope.setdefault("state", {})["request_id"] = request_id
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
                MutableHeaders(scope=message)["x-request-id"] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            logger.exception(
                "request %s: unexpected error in %s %s", request_id, scope["method"], scope["path"]
            )
            if response_started:
                return
            error = GatewayError(f"The server failed to process the request (request id {request_id}).")
            response = JSONResponse(
                error.to_body(), status_code=error.status_code, headers=response_headers(scope)
            )
            await response(scope, receive, send_with_id)


class BodySizeLimitMiddleware:
    """Reject request bodies larger than ``max_body_bytes`` with an OpenAI-shaped HTTP 413.

    A ``Content-Length`` over the limit is rejected before the body is read; a body without
    one (chunked transfer) is counted as it arrives. Accepted bodies are buffered (at most
    ``max_body_bytes``) and handed to the application unchanged.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._reject(scope, receive, send, declared=int(declared))
            return

        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await self._reject(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send, declared: int | None = None) -> None:
        request_id = scope.get("state", {}).get("request_id", "-")
        size = f"{declared} bytes" if declared is not None else f"over {self.max_body_bytes} bytes"
        logger.info("request %s: rejected a body of %s (limit %d)", request_id, size, self.max_body_bytes)
        error = RequestTooLargeError(
            f"The request body is {size}, larger than this server's limit of {self.max_body_bytes} bytes "
            "(server.max_body_bytes)."
        )
        response = JSONResponse(error.to_body(), status_code=error.status_code)
        await response(scope, receive, send)


def install_middleware(app: Any, *, max_body_bytes: int) -> None:
    """Add the body size limit and, around it, the request id middleware to ``app``."""
    # Starlette runs the middleware added last first, so the 413 also carries x-request-id.
    app.add_middleware(BodySizeLimitMiddleware, max_body_bytes=max_body_bytes)
    app.add_middleware(RequestIdMiddleware)
