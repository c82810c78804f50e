"""Server-sent events as OpenAI streams them: ``data: <json>`` events ending with ``data: [DONE]``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from router.errors import GatewayError

SSE_DONE = b"data: [DONE]\n\n"
"""The last event of an OpenAI stream."""

EVENT_STREAM = "text/event-stream"


def sse_event(data: BaseModel | Mapping[str, Any]) -> bytes:
    """Encode one ``data:`` event carrying ``data`` as compact JSON."""
    payload = (
        data.model_dump_json() if isinstance(data, BaseModel) else json.dumps(data, separators=(",", ":"))
    )
    return f"data: {payload}\n\n".encode()


def sse_error(error: GatewayError) -> bytes:
    """Encode an error that happened after a stream started, as OpenAI and vLLM send it.

    The official SDKs raise an ``APIError`` when an event carries an ``error`` object.
    """
    return sse_event(error.to_body())
