"""Run an ASGI application with uvicorn until SIGINT or SIGTERM stops it; SIGHUP can ask for a reload."""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from types import FrameType
from typing import Any

import uvicorn

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

GRACEFUL_SHUTDOWN_SECONDS = 30
"""How long open connections (streams in progress) may finish after a stop signal."""


def serve_app(
    app: Any, *, host: str, port: int, name: str, on_hangup: Callable[[], None] | None = None
) -> None:
    """Serve ``app`` on ``host``:``port`` until SIGINT or SIGTERM, then return normally.

    uvicorn shuts down gracefully on either signal, and the application's lifespan logs its stop.
    uvicorn (0.55) then raises the signal again for the previous handler. The handler installed here
    records it, so a stop by signal ends the process with status 0 instead of a
    ``KeyboardInterrupt`` or a kill by SIGTERM.

    ``on_hangup`` is called on each SIGHUP, inside the signal handler. It must only schedule work,
    for example with ``loop.call_soon_threadsafe``, because the handler interrupts whatever the
    main thread (the event loop) was doing. Without it, SIGHUP keeps its previous handler.
    """
    received: list[int] = []

    def remember(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    def hang_up(signum: int, frame: FrameType | None) -> None:
        assert on_hangup is not None
        on_hangup()

    previous = {stop_signal: signal.signal(stop_signal, remember) for stop_signal in STOP_SIGNALS}
    if on_hangup is not None:
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, hang_up)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,  # log through the handlers the command line configured
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )
    logger.info("%s starting on http://%s:%d%s", name, host, port, "; SIGHUP reloads it" if on_hangup else "")
    try:
        uvicorn.Server(config).run()
    finally:
        for stop_signal, handler in previous.items():
            signal.signal(stop_signal, handler)
    if received:
        logger.info("%s stopped by %s", name, signal.Signals(received[0]).name)
