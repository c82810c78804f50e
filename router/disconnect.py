"""Cancel a request's handling when its client disconnects before the response is complete.

uvicorn (0.55) does not cancel a handler whose client went away. It only returns
``http.disconnect`` from the handler's next ``receive()``. Starlette's ``StreamingResponse``
listens for that, so a stream already stops at a disconnect. A non-streaming handler never reads
again after the body, so without this middleware it keeps waiting for its upstream response (or
its generation) to the end, and keeps a concurrency slot and an upstream connection meanwhile.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger(__name__)


class ClientDisconnectMiddleware:
    """Cancel the handling of a request under ``path_prefix`` when its client disconnects.

    Once the handler has read the whole request body, a watcher task waits for
    ``http.disconnect``. If it arrives before the last response bytes were sent, the handler's
    task is cancelled, which closes its upstream connection. The request is logged with its id,
    and the client gets nothing, because it is gone.

    The watcher cancels the task with asyncio directly, because an anyio task group per request
    costs several times more CPU. Only the cancellation it caused is absorbed here
    (``Task.uncancel``, Python 3.11+). Any other, such as the total timeout's, propagates.

    Parameters
    ----------
    app : ASGI application
    path_prefix : str
        Only requests whose path starts with it are watched.
    """

    def __init__(self, app: ASGIApp, *, path_prefix: str = "/v1/") -> None:
        self.app = app
        self.path_prefix = path_prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.path_prefix):
            await self.app(scope, receive, send)
            return

        handler = asyncio.current_task()
        assert handler is not None
        body_read = asyncio.Event()
        response_complete = False
        client_left = False

        async def receive_tracked() -> Message:
            message = await receive()
            if not message.get("more_body", False):  # the last body part, or a disconnect
                body_read.set()
            return message

        async def send_tracked(message: Message) -> None:
            nonlocal response_complete
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                response_complete = True
            await send(message)

        async def cancel_on_disconnect() -> None:
            nonlocal client_left
            await body_read.wait()
            # uvicorn also returns http.disconnect once the response is complete, so only a
            # disconnect before that means the client left.
            while (await receive())["type"] != "http.disconnect":
                pass
            if not response_complete:
                client_left = True
                handler.cancel()

        # The watcher runs only while the handler awaits the app below, so its cancellation is
        # always raised inside this try.
        watcher = asyncio.create_task(cancel_on_disconnect())
        try:
            await self.app(scope, receive_tracked, send_tracked)
        except asyncio.CancelledError:
            if not client_left or handler.uncancel() > 0:
                raise
            request_id = scope.get("state", {}).get("request_id", "-")
            logger.info("request %s: the client disconnected, so its handling was cancelled", request_id)
        finally:
            watcher.cancel()
