"""Optional bearer API keys: every request except the health and readiness probes must carry one.

Keys come from ``server.api_keys`` in the config and from the ``ADAPTER_ROUTER_API_KEYS``
environment variable (comma-separated); with neither, the gateway is open. Keys are compared in
constant time and never logged.

The admin endpoints (``/admin/*``) take admin keys instead, from ``server.admin_api_keys`` and
``ADAPTER_ROUTER_ADMIN_KEYS``; with neither, they return 404. An API key never grants admin.
"""

from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Iterable, Mapping

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from router.config import ConfigError
from router.errors import AuthenticationError, NotFoundError

logger = logging.getLogger(__name__)

API_KEYS_ENV = "ADAPTER_ROUTER_API_KEYS"
"""Environment variable with extra API keys, separated by commas."""

ADMIN_KEYS_ENV = "ADAPTER_ROUTER_ADMIN_KEYS"
"""Environment variable with extra admin keys, separated by commas."""

OPEN_PATHS = frozenset({"/health", "/ready"})
"""Paths served without a key, so load balancers and orchestrators can probe the gateway."""

ADMIN_PATH_PREFIX = "/admin/"
"""Paths that check admin keys (:class:`AdminKeys`) instead of API keys."""


def api_keys(configured: Iterable[str], environ: Mapping[str, str] | None = None) -> list[str]:
    """Return the configured keys plus those in ``ADAPTER_ROUTER_API_KEYS``, without blanks."""
    return _keys(configured, API_KEYS_ENV, environ)


def admin_api_keys(
    configured: Iterable[str], api: Iterable[str] = (), environ: Mapping[str, str] | None = None
) -> list[str]:
    """Return the configured admin keys plus those in ``ADAPTER_ROUTER_ADMIN_KEYS``, without blanks.

    Raises
    ------
    ConfigError
        If an admin key is also one of the API keys ``api``, which would let every API client
        reload the gateway.
    """
    keys = _keys(configured, ADMIN_KEYS_ENV, environ)
    if set(keys) & set(api):
        raise ConfigError(
            f"an admin key (server.admin_api_keys or {ADMIN_KEYS_ENV}) is also an API key "
            f"(server.api_keys or {API_KEYS_ENV}): give admins keys of their own"
        )
    return keys


def _keys(configured: Iterable[str], variable: str, environ: Mapping[str, str] | None) -> list[str]:
    environ = os.environ if environ is None else environ
    from_env = environ.get(variable, "").split(",")
    return [key.strip() for key in [*configured, *from_env] if key.strip()]


def _matches_any(token: bytes, keys: list[bytes]) -> bool:
    """Compare ``token`` with every key in constant time per key, so the time taken does not tell
    which key a guess came close to."""
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(token, key)
    return matched


def _bearer_token(headers: Headers) -> str:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


class AdminKeys:
    """The admin keys, and the check of a request's bearer token against them."""

    def __init__(self, keys: list[str]) -> None:
        self._keys = [key.encode() for key in keys]

    def __len__(self) -> int:
        return len(self._keys)

    def check(self, headers: Headers, method: str, path: str, request_id: str) -> None:
        """Raise unless ``headers`` carry an admin key as ``Authorization: Bearer <key>``.

        Raises
        ------
        NotFoundError
            If no admin key is configured, so the admin endpoints do not exist.
        AuthenticationError
            If the key is missing or is not an admin key (an API key is not one).
        """
        if not self._keys:
            raise NotFoundError(
                f"Not found: {method} {path}. Admin endpoints are enabled by server.admin_api_keys "
                f"or {ADMIN_KEYS_ENV}."
            )
        token = _bearer_token(headers)
        if _matches_any(token.encode(), self._keys):
            return

        logger.warning(
            "request %s: HTTP 401, %s for %s %s",
            request_id,
            "a wrong admin key" if token else "no admin key",
            method,
            path,
        )
        raise AuthenticationError(
            "Invalid admin key: send an admin key (server.admin_api_keys) as 'Authorization: Bearer <key>'."
            if token
            else "Missing admin key: send it as 'Authorization: Bearer <key>'."
        )


class ApiKeyMiddleware:
    """Reject requests without a valid ``Authorization: Bearer <key>`` with an OpenAI-shaped 401.

    Each key is compared with :func:`hmac.compare_digest`, and every key is compared, so the
    response time does not tell which key a guess came close to. The health probes and the
    admin endpoints, which check admin keys, pass without an API key.
    """

    def __init__(self, app: ASGIApp, keys: list[str]) -> None:
        self.app = app
        self._keys = [key.encode() for key in keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path in OPEN_PATHS or path.startswith(ADMIN_PATH_PREFIX):
            await self.app(scope, receive, send)
            return

        scheme, _, token = Headers(scope=scope).get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and _matches_any(token.strip().encode(), self._keys):
            await self.app(scope, receive, send)
            return

        request_id = scope.get("state", {}).get("request_id", "-")
        reason = "a wrong API key" if token else "no API key"
        logger.info("request %s: HTTP 401, %s for %s %s", request_id, reason, scope["method"], scope["path"])
        error = AuthenticationError(
            "Missing API key: send it as 'Authorization: Bearer <key>'."
            if not token
            else "Invalid API key: check the key sent in 'Authorization: Bearer <key>'."
        )
        response = JSONResponse(
            error.to_body(), status_code=error.status_code, headers={"www-authenticate": "Bearer"}
        )
        await response(scope, receive, send)
