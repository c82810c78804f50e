"""HTTP responses for backend results."""

from __future__ import annotations

from collections.abc import Mapping

from starlette.responses import JSONResponse, Response, StreamingResponse

from router.backends.base import BackendResult, StreamResult
from router.sse import EVENT_STREAM


def backend_response(result: BackendResult, headers: Mapping[str, str]) -> Response:
    """Return ``result`` as a JSON response or a server-sent event stream, with ``headers``."""
    if isinstance(result, StreamResult):
        return StreamingResponse(
            result.events,
            media_type=EVENT_STREAM,
            # X-Accel-Buffering stops nginx-style proxies from holding events back.
            headers={**headers, "cache-control": "no-cache", "x-accel-buffering": "no"},
        )
    return JSONResponse(result.body, status_code=result.status_code, headers=dict(headers))
