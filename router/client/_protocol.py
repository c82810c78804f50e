"""Request bodies for the gateway's endpoints, and the parsing of its successful responses.

Both clients build their requests and read their responses here, so they cannot drift apart.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import httpx

from router.client._exceptions import ServerError
from router.client._types import HeaderDecision, HealthStatus, Messages, ModelInfo, RouteDecision


def route_body(text_or_messages: str | Messages, model: str | None) -> dict[str, Any]:
    """Return the body of ``POST /v1/route`` for a text or a conversation."""
    body: dict[str, Any] = (
        {"text": text_or_messages}
        if isinstance(text_or_messages, str)
        else {"messages": checked_messages(text_or_messages)}
    )
    if model is not None:
        body["model"] = model
    return body


def chat_body(messages: Messages, model: str, stream: bool, params: Mapping[str, Any]) -> dict[str, Any]:
    """Return the body of ``POST /v1/chat/completions``, with ``params`` passed through unchanged."""
    return {"model": model, "messages": checked_messages(messages), **params, "stream": stream}


def checked_messages(messages: Messages) -> list[dict[str, Any]]:
    """Return ``messages`` as a list of dicts, raising ``TypeError`` for a string or a non-mapping item.

    The gateway validates the messages themselves (roles, content) and returns HTTP 400 for invalid ones.
    """
    if isinstance(messages, str | bytes) or not all(isinstance(message, Mapping) for message in messages):
        raise TypeError(
            "messages must be a list of message objects such as "
            f'[{{"role": "user", "content": "..."}}], got {type(messages).__name__}'
        )
    return [dict(message) for message in messages]


def parse_route(response: httpx.Response) -> RouteDecision:
    """Read the decision from a ``POST /v1/route`` response."""
    body = json_object(response)
    try:
        return RouteDecision.from_json(body, request_id=response.headers.get("x-request-id"))
    except (KeyError, TypeError, ValueError) as error:
        raise invalid_response(
            response, f"the routing decision has a missing or invalid field ({error!r})"
        ) from None


def parse_models(response: httpx.Response) -> list[ModelInfo]:
    """Read the model list from a ``GET /v1/models`` response."""
    data = json_object(response).get("data")
    if not isinstance(data, list):
        raise invalid_response(response, "the model list has no 'data' array")
    try:
        return [ModelInfo.from_json(item) for item in data]
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise invalid_response(
            response, f"a model entry has a missing or invalid field ({error!r})"
        ) from None


def parse_health(response: httpx.Response) -> HealthStatus:
    """Read the status from a ``GET /health`` response."""
    return HealthStatus(status=str(json_object(response).get("status")))


def decision_from_headers(response: httpx.Response) -> HeaderDecision:
    """Read the routing decision from a completion response's ``x-router-*`` headers."""
    try:
        decision = HeaderDecision.from_headers(response.headers)
    except ValueError as error:
        raise invalid_response(response, f"an x-router-* header is invalid ({error})") from None
    if decision is None:
        raise invalid_response(
            response,
            "it has no x-router-adapter header. Check that base_url points at an adapter-router gateway",
        )
    return decision


def json_object(response: httpx.Response) -> dict[str, Any]:
    """Return the response body as a JSON object, raising :class:`ServerError` if it is not one."""
    try:
        body = json.loads(response.content)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise invalid_response(response, "its body is not valid JSON") from None
    if not isinstance(body, dict):
        raise invalid_response(response, f"its body is a JSON {type(body).__name__}, not an object")
    return body


def invalid_response(response: httpx.Response, problem: str) -> ServerError:
    """Return the error for a successful response the client cannot read."""
    return ServerError(
        f"The response to {response.request.method} {response.request.url.path} is invalid: {problem}.",
        status_code=response.status_code,
        code="invalid_response",
        request_id=response.headers.get("x-request-id"),
    )
