"""Optional bearer API keys: every request except the health and readiness probes must carry one.

Keys come from ``server.api_keys`` in the config and from the ``ADAPTER_ROUTER_API_KEYS``
environment variable (comma-separated); with neither, the gateway is open. Keys are compared in
constant time and never logged.
"""

from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Iterable, Mapping

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from router.errors import AuthenticationError

logger = logging.getLogger(__name__)

API_KEYS_ENV = "ADAPTER_ROUTER_API_KEYS"
"""Environment variable with extra API keys, separated by commas."""

OPEN_PATHS = frozenset({"/health", "/ready"})
"""Paths served without a key, so load balancers and orchestrators can probe the gateway."""


def api_keys(configured: Iterable[str], environ: Mapping[str, str] | None = None) -> list[str]:
    """Return the configured keys plus those in ``ADAPTER_ROUTER_API_KEYS``, without blanks."""
    environ = os.environ if environ is None else environ
    from_env = environ.get(API_KEYS_ENV, "").split(",")
    return [key.strip() for key in [*configured, *from_env] if key.strip()]


class ApiKeyMiddleware:
    """Reject requests without a valid ``Authorization: Bearer <key>`` with an OpenAI-shaped 401.

    Each key is compared with :func:`hmac.compare_digest`, and every key is compared, so the
    response time does not tell which key a guess came close to.
    """

    def __init__(self, app: ASGIApp, keys: list[str]) -> None:
        self.app = app
        self._keys = [key.encode() for key in keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return

        scheme, _, given = Headers(scope=scope).get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and self._matches(given.strip().encode()):
            await self.app(scope, receive, send)
            return

        request_id = scope.get("state", {}).get("request_id", "-")
        reason = "a wrong API key" if given else "no API key"
        logger.info("request %s: HTTP 401, %s for %s %s", request_id, reason, scope["method"], scope["path"])
        error = AuthenticationError(
            "Missing API key: send it as 'Authorization: Bearer <key>'."
            if not given
            else "Invalid API key: check the key sent in 'Authorization: Bearer <key>'."
        )
        response = JSONResponse(
            error.to_body(), status_code=error.status_code, headers={"www-authenticate": "Bearer"}
        )
        await response(scope, receive, send)

    def _matches(self, given: bytes) -> bool:
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(given, key)
        return matched
