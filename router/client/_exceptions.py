"""The client's exceptions, and how HTTP error responses and transport failures map to them.

Hierarchy::

    RouterError
    ├── RouterConnectionError      the gateway could not be reached, or the connection broke
    │   └── RouterTimeoutError     connecting, sending or reading took longer than the timeout
    ├── BadRequestError            HTTP 400, and any other 4xx without its own class (405, 413, 429, ...)
    ├── AuthenticationError        HTTP 401 and 403: missing, wrong or insufficient API key
    ├── NotFoundError              HTTP 404: unknown model (code ``model_not_found``) or path
    └── ServerError                HTTP 5xx, an error event inside a stream, or an invalid response

Every error carries ``status_code`` (``None`` when no HTTP status applies), and the OpenAI
error fields ``error_type``, ``code`` and ``param`` from the body ``{"error": {"message",
"type", "param", "code"}}``. Errors the gateway raised after routing also carry the decision.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from router.client._types import HeaderDecision


class RouterError(Exception):
    """Base class of every error the client raises.

    Example::

        try:
            client.chat([{"role": "user", "content": "hi"}], model="gpt-nope")
        except RouterError as error:
            print(error.status_code, error.code, error.message)    # 404 model_not_found ...
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        error_type: str | None = None,
        code: str | None = None,
        param: str | None = None,
        request_id: str | None = None,
        decision: HeaderDecision | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.error_type = error_type
        self.code = code
        self.param = param
        self.request_id = request_id
        self.decision = decision

    def __str__(self) -> str:
        details = [
            f"HTTP {self.status_code}" if self.status_code is not None else None,
            self.code or self.error_type,
            f"request id {self.request_id}" if self.request_id else None,
        ]
        shown = ", ".join(detail for detail in details if detail)
        return f"{self.message} ({shown})" if shown else self.message


class RouterConnectionError(RouterError):
    """The gateway could not be reached, or the connection broke before the response was complete."""


class RouterTimeoutError(RouterConnectionError):
    """Connecting, sending the request or waiting for response data took longer than the timeout."""


class BadRequestError(RouterError):
    """The gateway rejected the request (HTTP 400, or another 4xx without its own class)."""


class AuthenticationError(RouterError):
    """The API key is missing, wrong or not allowed to do this (HTTP 401 or 403)."""


class NotFoundError(RouterError):
    """The model or path does not exist (HTTP 404). An unknown model has code ``model_not_found``."""


class ServerError(RouterError):
    """The gateway or its upstream failed (HTTP 5xx, an error event in a stream, or an invalid response)."""


def error_for_status(status_code: int) -> type[RouterError]:
    """Return the exception class for an HTTP error status.

    Example::

        error_for_status(404)    # NotFoundError
    """
    if status_code in (401, 403):
        return AuthenticationError
    if status_code == 404:
        return NotFoundError
    if 400 <= status_code < 500:
        return BadRequestError
    return ServerError


def error_from_response(response: httpx.Response) -> RouterError:
    """Build the error for an HTTP error response whose body has been read.

    The message, type, code and param come from the OpenAI error body. A body of another
    shape (a proxy's HTML page, plain text) becomes the message, cut to 500 characters.
    """
    fields = _error_fields(response.content)
    message = fields.get("message") or _fallback_message(response)
    error_class = error_for_status(response.status_code)
    return error_class(
        message,
        status_code=response.status_code,
        error_type=fields.get("type"),
        code=fields.get("code"),
        param=fields.get("param"),
        request_id=response.headers.get("x-request-id"),
        decision=decision_or_none(response.headers),
    )


def error_from_event(error: Any, response: httpx.Response) -> ServerError:
    """Build the error for an ``{"error": {...}}`` event that arrived inside a stream.

    The stream's HTTP status was 200, so ``status_code`` is ``None``.
    """
    fields = error if isinstance(error, dict) else {"message": str(error)}
    return ServerError(
        str(fields.get("message") or "The gateway sent an error event without a message."),
        error_type=_optional_str(fields.get("type")),
        code=_optional_str(fields.get("code")),
        param=_optional_str(fields.get("param")),
        request_id=response.headers.get("x-request-id"),
        decision=decision_or_none(response.headers),
    )


def error_from_transport(error: httpx.TransportError, url: httpx.URL | str) -> RouterConnectionError:
    """Build the error for an httpx transport failure (connect, read, write, protocol, timeout)."""
    reason = str(error) or type(error).__name__
    if isinstance(error, httpx.TimeoutException):
        return RouterTimeoutError(f"The request to {url} timed out ({type(error).__name__}: {reason}).")
    return RouterConnectionError(
        f"The connection to {url} failed ({type(error).__name__}: {reason}). "
        "Check that the gateway is running at that address."
    )


def decision_or_none(headers: httpx.Headers) -> HeaderDecision | None:
    """Read the ``x-router-*`` headers of a failed response, ignoring invalid ones.

    An error is being reported already, so an invalid header must not replace it.
    """
    try:
        return HeaderDecision.from_headers(headers)
    except ValueError:
        return None


def _error_fields(content: bytes) -> dict[str, str | None]:
    try:
        body = json.loads(content)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, str):
        return {"message": error}
    if not isinstance(error, dict):
        return {}
    return {key: _optional_str(error.get(key)) for key in ("message", "type", "code", "param")}


def _fallback_message(response: httpx.Response) -> str:
    text = response.content[:500].decode("utf-8", "replace").strip()
    reason = response.reason_phrase or "error"
    return f"HTTP {response.status_code} {reason}" + (f": {text}" if text else "")


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)
