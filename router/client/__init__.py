"""Python client of the adapter-router gateway, sync and async.

Example::

    from router.client import RouterClient

    with RouterClient("http://127.0.0.1:8000") as client:
        print(client.route("Solve for x: 3x + 5 = 20").adapter)    # math
"""

from router.client._async_client import AsyncRouterClient
from router.client._client import RouterClient
from router.client._config import DEFAULT_BASE_URL, DEFAULT_TIMEOUT
from router.client._exceptions import (
    AuthenticationError,
    BadRequestError,
    NotFoundError,
    RouterConnectionError,
    RouterError,
    RouterTimeoutError,
    ServerError,
)
from router.client._retry import DEFAULT_RETRY, RetryPolicy
from router.client._streaming import AsyncChatStream, ChatStream
from router.client._types import (
    ChatResponse,
    HeaderDecision,
    HealthStatus,
    Message,
    Messages,
    ModelInfo,
    NearestExemplar,
    RouteDecision,
)

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_RETRY",
    "DEFAULT_TIMEOUT",
    "AsyncChatStream",
    "AsyncRouterClient",
    "AuthenticationError",
    "BadRequestError",
    "ChatResponse",
    "ChatStream",
    "HeaderDecision",
    "HealthStatus",
    "Message",
    "Messages",
    "ModelInfo",
    "NearestExemplar",
    "NotFoundError",
    "RetryPolicy",
    "RouteDecision",
    "RouterClient",
    "RouterConnectionError",
    "RouterError",
    "RouterTimeoutError",
    "ServerError",
]
