"""Gateway errors, each with its HTTP status and OpenAI error type and code.

Handlers raise these; ``router.error_handlers`` turns every one into the OpenAI error shape
``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base class of errors returned to API callers."""

    status_code = 500
    error_type = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def to_body(self) -> dict[str, dict[str, str | None]]:
        """Return the OpenAI error body."""
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequestError(GatewayError):
    """The request body or a parameter is invalid (HTTP 400)."""

    status_code = 400
    error_type = "invalid_request_error"


class ModelNotFoundError(GatewayError):
    """The requested model is neither the routing alias, the base model nor an adapter (HTTP 404)."""

    status_code = 404
    error_type = "invalid_request_error"
    code = "model_not_found"


class NotFoundError(GatewayError):
    """No endpoint exists at the requested path (HTTP 404)."""

    status_code = 404
    error_type = "invalid_request_error"
    code = "not_found"


class MethodNotAllowedError(GatewayError):
    """The endpoint exists but does not accept the request's HTTP method (HTTP 405)."""

    status_code = 405
    error_type = "invalid_request_error"
    code = "method_not_allowed"


class RequestTooLargeError(GatewayError):
    """The request body exceeds the configured size limit (HTTP 413)."""

    status_code = 413
    error_type = "invalid_request_error"
    code = "request_too_large"


class UpstreamError(GatewayError):
    """The upstream model server failed or returned an invalid response (HTTP 502)."""

    status_code = 502
    error_type = "upstream_error"


class UpstreamTimeoutError(UpstreamError):
    """The upstream model server did not respond in time (HTTP 504)."""

    status_code = 504
    code = "upstream_timeout"


class UpstreamUnavailableError(UpstreamError):
    """The upstream model server cannot be reached (HTTP 503)."""

    status_code = 503
    code = "upstream_unavailable"


class GenerationError(GatewayError):
    """The embedded model failed while generating (HTTP 500)."""

    status_code = 500
    error_type = "server_error"
    code = "generation_failed"


class AuthenticationError(GatewayError):
    """The request has no API key or a wrong one (HTTP 401)."""

    status_code = 401
    error_type = "invalid_request_error"
    code = "invalid_api_key"


class ServerOverloadedError(GatewayError):
    """The gateway is already serving its maximum number of concurrent requests (HTTP 503)."""

    status_code = 503
    error_type = "server_error"
    code = "server_overloaded"


class RequestTimeoutError(GatewayError):
    """The request took longer than the gateway's total time limit (HTTP 504)."""

    status_code = 504
    error_type = "server_error"
    code = "request_timeout"


class AdapterUnavailableError(GatewayError):
    """The backend cannot serve the adapter a request was routed to (HTTP 404).

    Backends raise it only when ``backend.adapter_unavailable`` is ``fallback``, and the gateway
    catches it and serves the request on the base model.
    """

    status_code = 404
    error_type = "invalid_request_error"
    code = "adapter_unavailable"

    def __init__(self, adapter: str, message: str) -> None:
        super().__init__(message)
        self.adapter = adapter


class AdapterFailedError(GatewayError):
    """The embedded backend cannot use the adapter a request was routed to (HTTP 503).

    Raised instead of :class:`AdapterUnavailableError` when ``backend.adapter_unavailable`` is
    ``error``, so the request is not served on the base model.
    """

    status_code = 503
    error_type = "server_error"
    code = "adapter_unavailable"
