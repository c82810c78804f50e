"""The synchronous client of the gateway."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Literal, overload

import httpx

from router.client import _protocol as protocol
from router.client._config import (
    DEFAULT_BASE_URL,
    DEFAULT_TIMEOUT,
    checked_timeout,
    default_headers,
    gateway_url,
)
from router.client._exceptions import ServerError, error_from_response, error_from_transport
from router.client._retry import DEFAULT_RETRY, RetryPolicy, retry_reason
from router.client._streaming import ChatStream
from router.client._types import ChatResponse, HealthStatus, Messages, ModelInfo, RouteDecision

logger = logging.getLogger(__name__)


class RouterClient:
    """A synchronous client of an adapter-router gateway, reusing connections from one httpx pool.

    Parameters
    ----------
    base_url : str
        The gateway's URL, with or without the ``/v1`` suffix the OpenAI SDKs use.
    api_key : str or None
        Sent as ``Authorization: Bearer <api_key>``. With ``None``, no ``Authorization`` header is sent.
    timeout : float or httpx.Timeout
        Seconds, or separate connect, read, write and pool limits. Every limit must be set.
        Default: 5 s to connect, 120 s for the rest. For a stream, the read limit applies to the
        wait for each chunk.
    retry : RetryPolicy
        Retries with backoff for connection errors and HTTP 503. Default: 2 retries.
    headers : mapping of str to str or None
        Extra headers for every request.
    transport : httpx.BaseTransport or None
        An httpx transport to send through instead of the network (for example
        ``httpx.MockTransport`` in tests).

    Raises ``ValueError`` for an invalid ``base_url``, ``api_key`` or ``timeout``. Use the
    client in a ``with`` block, or call :meth:`close`, to close its connections.

    Example::

        with RouterClient("http://127.0.0.1:8000") as client:
            decision = client.route("Solve for x: 3x + 5 = 20")
            response = client.chat([{"role": "user", "content": "Solve for x: 3x + 5 = 20"}])
            print(decision.adapter, response.decision.model, response.content)
    """

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        *,
        api_key: str | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        retry: RetryPolicy = DEFAULT_RETRY,
        headers: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = gateway_url(base_url)
        self.timeout = checked_timeout(timeout)
        self.retry = retry
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=self.timeout,
            headers=default_headers(api_key, headers),
            transport=transport,
        )

    def route(self, text_or_messages: str | Messages, *, model: str | None = None) -> RouteDecision:
        """Ask the gateway which model would serve a text or a conversation, without generating.

        ``model`` is the routing alias by default. An adapter or base model name shows the
        decision for a request that forces that model.

        Example::

            client.route("Write a SQL query that counts orders per customer").adapter    # 'sql'
        """
        body = protocol.route_body(text_or_messages, model)
        return protocol.parse_route(self._request("POST", "/v1/route", json=body))

    @overload
    def chat(
        self, messages: Messages, model: str = "auto", *, stream: Literal[False] = False, **params: Any
    ) -> ChatResponse: ...

    @overload
    def chat(
        self, messages: Messages, model: str = "auto", *, stream: Literal[True], **params: Any
    ) -> ChatStream: ...

    @overload
    def chat(
        self, messages: Messages, model: str = "auto", *, stream: bool, **params: Any
    ) -> ChatResponse | ChatStream: ...

    def chat(
        self, messages: Messages, model: str = "auto", *, stream: bool = False, **params: Any
    ) -> ChatResponse | ChatStream:
        """Create a chat completion, routed by the gateway when ``model`` is ``"auto"``.

        ``params`` are further fields of the OpenAI request (``max_tokens``, ``temperature``,
        ``tools``, ``stream_options``, ...), sent unchanged. With ``stream=True`` the result is
        a :class:`ChatStream` of chunks, returned as soon as the response headers arrive.

        Example::

            messages = [{"role": "user", "content": "Solve for x: 3x + 5 = 20"}]
            response = client.chat(messages, max_tokens=8)
            response.decision.model, response.content
        """
        body = protocol.chat_body(messages, model, stream, params)
        if stream:
            response = self._request("POST", "/v1/chat/completions", json=body, stream=True)
            try:
                decision = protocol.decision_from_headers(response)
            except ServerError:
                response.close()
                raise
            return ChatStream(response, decision)

        response = self._request("POST", "/v1/chat/completions", json=body)
        return ChatResponse(protocol.json_object(response), protocol.decision_from_headers(response))

    def models(self) -> list[ModelInfo]:
        """List the models the gateway accepts: the routing alias, the base model and every adapter.

        Example::

            [model.id for model in client.models()]    # ['auto', 'demo-base', 'code', ...]
        """
        return protocol.parse_models(self._request("GET", "/v1/models"))

    def health(self) -> HealthStatus:
        """Check that the gateway is up, raising :class:`RouterConnectionError` when it is not.

        Example::

            client.health().ok    # True
        """
        return protocol.parse_health(self._request("GET", "/health"))

    def close(self) -> None:
        """Close the client's connections. The client cannot send requests afterwards."""
        self._http.close()

    def __enter__(self) -> RouterClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _request(
        self, method: str, path: str, *, json: dict[str, Any] | None = None, stream: bool = False
    ) -> httpx.Response:
        """Send a request with retries, and return a successful response or raise the mapped error.

        A streamed response is returned open with its body unread, and the caller must close it.
        """
        request = self._http.build_request(method, path, json=json)
        retry = 0
        while True:
            try:
                response = self._http.send(request, stream=stream)
            except httpx.TransportError as error:
                if self._should_retry(request, error, retry):
                    retry += 1
                    continue
                raise error_from_transport(error, request.url) from error

            if response.status_code < 400:
                return response
            try:
                response.read()
            except httpx.TransportError as error:
                raise error_from_transport(error, request.url) from error
            finally:
                response.close()
            if self._should_retry(request, response, retry):
                retry += 1
                continue
            raise error_from_response(response)

    def _should_retry(
        self, request: httpx.Request, outcome: httpx.Response | httpx.TransportError, retry: int
    ) -> bool:
        """Wait and return ``True`` when ``outcome`` may be retried and retries are left."""
        reason = retry_reason(outcome)
        if reason is None or retry >= self.retry.max_retries:
            return False
        retry_after = outcome.headers.get("retry-after") if isinstance(outcome, httpx.Response) else None
        delay = self.retry.backoff(retry, retry_after)
        logger.warning(
            "%s %s failed (%s): retry %d of %d in %.2f s",
            request.method,
            request.url,
            reason,
            retry + 1,
            self.retry.max_retries,
            delay,
        )
        time.sleep(delay)
        return True
