"""``adapter-router serve``: build the gateway from its config and serve it over HTTP."""

from __future__ import annotations

import logging

from router.app import create_app
from router.config import GatewayConfig
from router.gateway import build_gateway
from router.reload import GatewayReloader
from router.serving import serve_app

logger = logging.getLogger(__name__)


def run_gateway(config: GatewayConfig, *, host: str | None = None, port: int | None = None) -> None:
    """Build the gateway ``config`` describes and serve it until SIGINT or SIGTERM.

    ``host`` and ``port`` override ``server.host`` and ``server.port`` of the config. SIGHUP and
    ``POST /admin/reload`` reload the config file (see ``router.reload``).

    Raises
    ------
    ConfigError
        If the gateway cannot be built from ``config`` (the message names the setting).
    """
    logger.info("starting the gateway from %s", config.source or "a config object")
    gateway = build_gateway(config)
    reloader = GatewayReloader(gateway, config)
    serve_app(
        create_app(gateway, reloader),
        host=host or config.server.host,
        port=config.server.port if port is None else port,
        name="gateway",
        on_hangup=reloader.reload_from_signal,
    )
