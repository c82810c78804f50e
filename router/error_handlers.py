"""The one place where exceptions become OpenAI-shaped error responses.

Every error leaves as ``{"error": {"message", "type", "param", "code"}}`` with its HTTP
status: gateway errors with their own, request validation errors as 400, unknown paths as 404
and wrong methods as 405. Errors after routing carry the decision's ``x-router-*`` headers.
Unexpected exceptions are handled by :class:`router.middleware.RequestIdMiddleware`.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from router.errors import GatewayError, MethodNotAllowedError, NotFoundError
from router.middleware import request_id, response_headers
from router.validation import describe_validation_error

logger = logging.getLogger(__name__)


def error_response(
    request: Request, error: GatewayError, headers: dict[str, str] | None = None
) -> JSONResponse:
    """Return ``error`` as an OpenAI error response with the request's recorded headers."""
    if error.status_code >= 500:
        logger.warning("request %s: HTTP %d: %s", request_id(request), error.status_code, error.message)
    else:
        # Messages of 4xx errors may quote the offending input, which can be prompt text.
        logger.info(
            "request %s: HTTP %d %s (param %s)",
            request_id(request),
            error.status_code,
            error.code or error.error_type,
            error.param,
        )
    return JSONResponse(
        error.to_body(),
        status_code=error.status_code,
        headers={**response_headers(request), **(headers or {})},
    )


async def _gateway_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, GatewayError)
    return error_response(request, error)


async def _validation_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    return error_response(request, describe_validation_error(error.errors()))


async def _http_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, HTTPException)
    path = f"{request.method} {request.url.path}"
    if error.status_code == 404:
        return error_response(
            request, NotFoundError(f"Not found: {path}. See GET /v1/models and the API docs.")
        )
    if error.status_code == 405:
        allowed = (error.headers or {}).get("Allow", "")
        return error_response(
            request,
            MethodNotAllowedError(f"Method not allowed: {path}. Allowed: {allowed or 'none'}."),
            headers={"Allow": allowed} if allowed else None,
        )
    wrapped = GatewayError(str(error.detail))
    wrapped.status_code = error.status_code
    wrapped.error_type = "invalid_request_error" if error.status_code < 500 else "server_error"
    return error_response(request, wrapped, headers=dict(error.headers or {}))


def install_error_handlers(app: FastAPI) -> None:
    """Register the OpenAI-shaped error responses on ``app``."""
    app.add_exception_handler(GatewayError, _gateway_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
