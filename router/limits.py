"""Request limits: the number of messages and the text length of a request, concurrent requests,
and the total time of one request.

The size limits are checked by the handlers after the body is validated. The concurrency limit
and the total timeout apply to the ``/v1/*`` endpoints as one ASGI middleware, so a stream
counts as in flight, and is timed, until its last event is sent.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import anyio
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from router.errors import InvalidRequestError, RequestTimeoutError, ServerOverloadedError
from router.log_throttle import LogThrottle
from router.middleware import response_headers
from router.routing_text import message_text
from router.sse import EVENT_STREAM, sse_error

logger = logging.getLogger(__name__)

LIMITED_PATH_PREFIX = "/v1/"


def check_messages(messages: Sequence[Any], *, max_messages: int, max_text_chars: int) -> None:
    """Check a conversation against the message count and text length limits.

    Raises
    ------
    InvalidRequestError
        If there are more than ``max_messages`` messages, or their text is longer than
        ``max_text_chars`` characters in total.
    """
    if len(messages) > max_messages:
        raise InvalidRequestError(
            f"The request has {len(messages)} messages, more than this server's limit of {max_messages} "
            "(server.max_messages): shorten the conversation.",
            param="messages",
            code="too_many_messages",
        )
    texts = (message_text(message.get("content")) for message in messages if isinstance(message, dict))
    check_text_length(texts, max_text_chars=max_text_chars, param="messages")


def check_text_length(texts: Iterable[str], *, max_text_chars: int, param: str) -> None:
    """Check that ``texts`` hold at most ``max_text_chars`` characters in total.

    Raises
    ------
    InvalidRequestError
        If they hold more; ``param`` names the request field in the error.
    """
    total = sum(len(text) for text in texts)
    if total > max_text_chars:
        raise InvalidRequestError(
            f"The request's text is {total} characters long, more than this server's limit of "
            f"{max_text_chars} (server.max_text_chars): send less text.",
            param=param,
            code="text_too_long",
        )


class ConcurrencyLimitMiddleware:
    """Limit the ``/v1/*`` requests served at once and the total time of each.

    A request over ``max_concurrent`` gets an OpenAI-shaped 503 with ``Retry-After`` at once; it
    does not wait in a queue. A request that runs longer than ``timeout_seconds`` is cancelled.
    Its client gets a 504 if no response has started, or, for a stream already started, a
    final SSE error event and the end of the stream.
    """

    def __init__(
        self, app: ASGIApp, *, max_concurrent: int, retry_after_seconds: int, timeout_seconds: float
    ) -> None:
        self.app = app
        self.max_concurrent = max_concurrent
        self.retry_after_seconds = retry_after_seconds
        self.timeout_seconds = timeout_seconds
        self.in_flight = 0
        self._rejections = LogThrottle(60.0)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(LIMITED_PATH_PREFIX):
            await self.app(scope, receive, send)
            return

        request_id = scope.get("state", {}).get("request_id", "-")
        if self.in_flight >= self.max_concurrent:
            await self._reject(scope, receive, send, request_id)
            return

        self.in_flight += 1
        try:
            await self._call_with_timeout(scope, receive, send, request_id)
        finally:
            self.in_flight -= 1

    async def _call_with_timeout(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        started: Headers | None = None

        async def send_tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = Headers(raw=message.get("headers", []))
            await send(message)

        with anyio.move_on_after(self.timeout_seconds) as scope_timer:
            await self.app(scope, receive, send_tracked)
        if not scope_timer.cancelled_caught:
            return

        error = RequestTimeoutError(
            f"The request took longer than this server's limit of {self.timeout_seconds:g} s "
            "(server.request_timeout)."
        )
        logger.warning("request %s: %s", request_id, error.message)
        if started is None:
            response = JSONResponse(
                error.to_body(), status_code=error.status_code, headers=response_headers(scope)
            )
            await response(scope, receive, send)
        elif started.get("content-type", "").startswith(EVENT_STREAM):
            await send({"type": "http.response.body", "body": sse_error(error), "more_body": False})
        else:
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _reject(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        skipped = self._rejections.skipped_if_due("overloaded")
        if skipped is not None:
            logger.warning(
                "request %s: HTTP 503, %d requests already in flight (server.max_concurrent_requests); "
                "%d more rejected since the last such line",
                request_id,
                self.in_flight,
                skipped,
            )
        error = ServerOverloadedError(
            f"The server is serving its limit of {self.max_concurrent} concurrent requests: "
            f"retry after {self.retry_after_seconds} s."
        )
        response = JSONResponse(
            error.to_body(),
            status_code=error.status_code,
            headers={"retry-after": str(self.retry_after_seconds)},
        )
        await response(scope, receive, send)
