"""The upstream backend: forward requests to an OpenAI-compatible model server over HTTP.

The client's JSON body is forwarded unchanged except for the fields that select the adapter.
With the vLLM convention, the adapter's served name replaces ``model`` (the base model's name on
fallback). With the LoRAX convention, ``model`` is the base model and ``adapter_id`` names the
adapter. Streams are relayed event by event as they arrive.

A refused or timed-out connection is retried with jittered exponential backoff, because the
upstream received nothing. A request that reached the upstream is never sent again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
from collections.abc import AsyncIterator
from typing import Any

import httpx

from router.backends.base import BackendCall, BackendResult, JSONResult, StreamResult
from router.backends.keepalive_transport import KeepAliveTransport
from router.config import ConfigError, UpstreamBackendSettings
from router.errors import (
    AdapterUnavailableError,
    GatewayError,
    UpstreamError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from router.protocol import ChatCompletionRequest, CompletionRequest
from router.sse import EVENT_STREAM, sse_error

logger = logging.getLogger(__name__)


class UpstreamBackend:
    """Forward completions to the OpenAI-compatible server at ``settings.url``.

    Error statuses: the upstream unreachable is HTTP 503, a timeout 504, an upstream 5xx or an
    invalid body 502; an upstream 4xx passes through with its status, and its body in the OpenAI
    error shape. The exception is the upstream's answer for an adapter it cannot serve (vLLM:
    HTTP 404; LoRAX: HTTP 424, or a stream whose first event is that error) with
    ``adapter_unavailable: fallback``, which raises :class:`AdapterUnavailableError` so the
    gateway can serve the request on the base model.

    Raises
    ------
    ConfigError
        If ``settings.api_key_env`` names an environment variable that is not set.
    """

    def __init__(self, settings: UpstreamBackendSettings) -> None:
        self.settings = settings
        self.url = settings.url.rstrip("/")
        self._headers: dict[str, str] = {}
        if settings.api_key_env is not None:
            api_key = os.environ.get(settings.api_key_env)
            if not api_key:
                raise ConfigError(
                    f"backend.api_key_env names {settings.api_key_env}, which is not set: "
                    "export the upstream's API key in it"
                )
            self._headers["authorization"] = f"Bearer {api_key}"
        self._client: httpx.AsyncClient | None = None
        self.start_problems: list[str] | None = None
        """The problems the model check at start found; ``None`` before it ran."""

    async def start(self) -> None:
        """Open the connection pool and check the upstream's models against the adapter map."""
        self._client = httpx.AsyncClient(
            base_url=self.url + "/",
            headers=self._headers,
            timeout=httpx.Timeout(
                connect=self.settings.connect_timeout,
                read=self.settings.read_timeout,
                write=self.settings.read_timeout,
                pool=self.settings.read_timeout,
            ),
            transport=KeepAliveTransport(max_connections=self.settings.max_connections),
        )
        logger.info("upstream backend started: %s (adapter field %s)", self.url, self.settings.adapter_field)

    async def close(self) -> None:
        """Close the connection pool."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        logger.info("upstream backend stopped")

    async def check_models(self, expected: list[str]) -> list[str]:
        """Check that the upstream serves every model in ``expected``; return the problems found.

        The upstream may start after the gateway, so a missing model or an unreachable
        upstream is logged as a warning here and becomes an error response only when a request
        needs it. The result is kept in :attr:`start_problems` for ``GET /ready``.
        """
        problems = await self.readiness(expected)
        if problems:
            logger.warning("upstream check at start: %s", "; ".join(problems))
        else:
            logger.info("upstream %s serves the base model and every adapter", self.url)
        self.start_problems = problems
        return problems

    async def readiness(self, expected: list[str]) -> list[str]:
        """List the upstream's models now; return why it cannot serve ``expected`` (empty when it can).

        With the LoRAX convention (``adapter_field: adapter_id``) adapters are not listed by the
        upstream, so only its reachability is checked.
        """
        try:
            response = await self._http().get("models", timeout=self.settings.connect_timeout)
            response.raise_for_status()
            served = {model["id"] for model in response.json()["data"]}
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as error:
            return [f"cannot list the models of upstream {self.url}: {error or type(error).__name__}"]

        if self.settings.adapter_field != "model":
            return []
        missing = sorted(set(expected) - served)
        if missing:
            return [f"upstream {self.url} does not serve {', '.join(missing)}"]
        return []

    async def chat_completions(self, call: BackendCall[ChatCompletionRequest]) -> BackendResult:
        """Forward to the upstream's ``/chat/completions``."""
        return await self._forward("chat/completions", call)

    async def completions(self, call: BackendCall[CompletionRequest]) -> BackendResult:
        """Forward to the upstream's ``/completions``."""
        return await self._forward("completions", call)

    async def _forward(self, path: str, call: BackendCall[Any]) -> BackendResult:
        client = self._http()
        request = client.build_request(
            "POST", path, json=self._upstream_body(call), headers={"x-request-id": call.request_id}
        )
        response = await self._send(request, call.request_id)

        streaming = response.status_code < 400 and response.headers.get("content-type", "").startswith(
            EVENT_STREAM
        )
        if streaming and call.params.stream:
            if self._lorax_fallback(call):
                return StreamResult(await self._relay_unless_adapter_error(response, call))
            return StreamResult(self._relay(response, call))
        try:
            content = await response.aread()
        except httpx.HTTPError as error:
            raise self._transport_error(error, call.request_id) from None
        finally:
            await response.aclose()
        return self._json_result(response, content, call)

    async def _send(self, request: httpx.Request, request_id: str) -> httpx.Response:
        """Send ``request`` and return the response once its headers arrived.

        Only ``httpx.ConnectError`` and ``httpx.ConnectTimeout`` are retried: both mean that no
        connection was made, so the upstream received nothing.

        Raises
        ------
        GatewayError
            The error for the client when sending failed (after the last attempt).
        """
        attempts = self.settings.connect_attempts
        attempt = 1
        while True:
            try:
                return await self._http().send(request, stream=True)
            except (httpx.ConnectError, httpx.ConnectTimeout) as error:
                if attempt >= attempts:
                    raise self._transport_error(error, request_id, attempts=attempt) from None
                delay = retry_delay(attempt, self.settings.retry_backoff, self.settings.retry_backoff_max)
                logger.warning(
                    "request %s: connecting to upstream %s failed (%s), attempt %d of %d: retrying in %.2f s",
                    request_id,
                    self.url,
                    error or type(error).__name__,
                    attempt,
                    attempts,
                    delay,
                )
                await asyncio.sleep(delay)
                attempt += 1
            except httpx.HTTPError as error:
                raise self._transport_error(error, request_id) from None

    def _upstream_body(self, call: BackendCall[Any]) -> dict[str, Any]:
        body = dict(call.body)
        if self.settings.adapter_field == "model":
            body["model"] = call.model
        else:
            body["model"] = self.settings.base_model_name
            body.pop("adapter_id", None)
            if call.adapter is not None:
                body["adapter_id"] = call.adapter
        return body

    def _json_result(self, response: httpx.Response, content: bytes, call: BackendCall[Any]) -> JSONResult:
        status = response.status_code
        try:
            body = json.loads(content)
        except (UnicodeDecodeError, json.JSONDecodeError):
            body = None

        if status >= 500:
            detail = _error_message(body) or content[:200].decode("utf-8", "replace")
            logger.error(
                "request %s: upstream %s returned HTTP %d: %s", call.request_id, self.url, status, detail
            )
            raise UpstreamError(f"The upstream model server returned HTTP {status}: {detail}")
        if status == 404 and self._vllm_fallback(call):
            raise AdapterUnavailableError(
                call.adapter or "", f"The upstream model server does not serve the adapter {call.adapter}."
            )
        if status == 424 and self._lorax_fallback(call) and _is_lorax_generation_error(body):
            raise AdapterUnavailableError(
                call.adapter or "",
                f"The upstream model server cannot load the adapter {call.adapter}: {_error_message(body)}",
            )
        if status >= 400:
            logger.info("request %s: upstream %s returned HTTP %d", call.request_id, self.url, status)
            if not (isinstance(body, dict) and isinstance(body.get("error"), dict)):
                # Not the OpenAI shape: plain text, LoRAX's {"error": "<message>"}, or other JSON.
                body = _error_body(_error_text(body, content), status)
            return JSONResult(body, status)
        if call.params.stream:
            logger.error(
                "request %s: upstream %s returned no event stream for a streaming request",
                call.request_id,
                self.url,
            )
            raise UpstreamError("The upstream model server returned no event stream for a streaming request.")
        if not isinstance(body, dict):
            logger.error(
                "request %s: upstream %s returned a body that is not a JSON object", call.request_id, self.url
            )
            raise UpstreamError(
                "The upstream model server returned a response body that is not a JSON object."
            )
        if body.get("model") != call.model:
            body["model"] = call.model
        return JSONResult(body, status)

    def _vllm_fallback(self, call: BackendCall[Any]) -> bool:
        # vLLM returns HTTP 404 for a model it does not serve. With the LoRAX convention the
        # model is always the base model, so a 404 there means something else.
        return (
            call.adapter is not None
            and self.settings.adapter_field == "model"
            and self.settings.adapter_unavailable == "fallback"
        )

    def _lorax_fallback(self, call: BackendCall[Any]) -> bool:
        # LoRAX loads an adapter when a request first names it in adapter_id. When that fails, it
        # ends the request with its generation error: HTTP 424 {"error": ..., "error_type":
        # "generation"}, or that object as the first event of a stream (LoRAX's router,
        # InferError::GenerationError). LoRAX reports any failed generation this way, so the
        # base model gets one try at every such request with an adapter.
        return (
            call.adapter is not None
            and self.settings.adapter_field == "adapter_id"
            and self.settings.adapter_unavailable == "fallback"
        )

    async def _relay_unless_adapter_error(
        self, response: httpx.Response, call: BackendCall[Any]
    ) -> AsyncIterator[bytes]:
        """Read a LoRAX stream's first event; raise if it is LoRAX's generation error, else relay.

        Raises
        ------
        AdapterUnavailableError
            If the first event is the error LoRAX sends when it cannot load the adapter.
        GatewayError
            If the connection fails before the first event.
        """
        events = self._relay(response, call)
        try:
            first = await anext(events)
        except StopAsyncIteration:
            first = b""
        data = _event_data(first)
        if _is_lorax_generation_error(data):
            await events.aclose()
            raise AdapterUnavailableError(
                call.adapter or "",
                f"The upstream model server cannot load the adapter {call.adapter}: {_error_message(data)}",
            )

        async def first_then_rest() -> AsyncIterator[bytes]:
            if first:
                yield first
            async for event in events:
                yield event

        return first_then_rest()

    async def _relay(self, response: httpx.Response, call: BackendCall[Any]) -> AsyncIterator[bytes]:
        """Yield the upstream's events one by one, each with ``model`` set to the served name."""
        lines: list[str] = []
        try:
            async for line in response.aiter_lines():
                if line:
                    lines.append(line)
                elif lines:
                    yield _event_with_model(lines, call.model)
                    lines = []
            if lines:
                yield _event_with_model(lines, call.model)
        except httpx.HTTPError as error:
            yield sse_error(self._transport_error(error, call.request_id))
        finally:
            await response.aclose()

    def _transport_error(self, error: httpx.HTTPError, request_id: str, *, attempts: int = 1) -> GatewayError:
        if isinstance(error, httpx.ConnectError | httpx.ConnectTimeout):
            tries = f" after {attempts} attempts" if attempts > 1 else ""
            gateway_error: GatewayError = UpstreamUnavailableError(
                f"The upstream model server at {self.url} cannot be reached{tries} "
                f"({error or type(error).__name__}). Check that it is running."
            )
        elif isinstance(error, httpx.TimeoutException):
            gateway_error = UpstreamTimeoutError(
                f"The upstream model server at {self.url} did not respond within "
                f"{self.settings.read_timeout:g} s ({type(error).__name__})."
            )
        else:
            gateway_error = UpstreamError(
                f"The connection to the upstream model server at {self.url} failed: "
                f"{error or type(error).__name__}."
            )
        logger.error("request %s: %s", request_id, gateway_error.message)
        return gateway_error

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            raise RuntimeError("the upstream backend is not started: call start() first")
        return self._client


def retry_delay(attempt: int, backoff: float, backoff_max: float) -> float:
    """Return the seconds to wait after failed attempt number ``attempt`` (counted from 1).

    The wait doubles with each attempt from ``backoff`` up to ``backoff_max``, and a random
    0-50% is taken off, so that gateways that lost the same upstream do not all retry at once.
    """
    ceiling = min(backoff_max, backoff * 2 ** (attempt - 1))
    return ceiling * random.uniform(0.5, 1.0)


def _event_with_model(lines: list[str], model: str) -> bytes:
    """Return one event with the ``model`` of its JSON data set to ``model``.

    An event whose data already names ``model``, or is not a JSON object (``[DONE]``), is
    returned byte for byte.
    """
    for index, line in enumerate(lines):
        if not line.startswith("data:"):
            continue
        try:
            data = json.loads(line[5:])
        except json.JSONDecodeError:
            continue
        if isinstance(data, dict) and "model" in data and data["model"] != model:
            data["model"] = model
            lines = [*lines[:index], "data: " + json.dumps(data, separators=(",", ":")), *lines[index + 1 :]]
    return ("\n".join(lines) + "\n\n").encode()


def _error_message(body: Any) -> str | None:
    """Return the message of an OpenAI error body, or LoRAX's ``{"error": "<message>"}``."""
    if not isinstance(body, dict):
        return None
    error = body.get("error")
    if isinstance(error, dict):
        message = error.get("message")
        return str(message) if message is not None else None
    return error if isinstance(error, str) else None


def _error_text(body: Any, content: bytes) -> str:
    return _error_message(body) or content[:500].decode("utf-8", "replace")


def _is_lorax_generation_error(body: Any) -> bool:
    return isinstance(body, dict) and body.get("error_type") == "generation" and "error" in body


def _event_data(event: bytes) -> Any:
    """Return the JSON data of one server-sent event, or ``None`` when it has none."""
    for line in event.decode("utf-8", "replace").splitlines():
        if line.startswith("data:"):
            try:
                return json.loads(line[5:])
            except json.JSONDecodeError:
                return None
    return None


def _error_body(message: str, status: int) -> dict[str, Any]:
    return {
        "error": {
            "message": message or f"The upstream model server returned HTTP {status}.",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }
