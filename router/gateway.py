"""The serving object behind the gateway's HTTP API: route each request, then call the backend."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import anyio.to_thread

from router.adapter_checksums import check_adapter_checksums
from router.backends.base import Backend, BackendCall, BackendResult
from router.backends.embedded import EmbeddedBackend
from router.backends.upstream import UpstreamBackend
from router.config import ConfigError, EmbeddedBackendSettings, GatewayConfig, ServerSettings
from router.config_checks import check_config_files
from router.errors import AdapterUnavailableError
from router.log_throttle import LogThrottle
from router.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    ModelCard,
    ModelList,
    RouteRequest,
)
from router.router_loader import build_domain_router
from router.routing import RouteDecision, RoutingService
from router.routing_text import completion_routing_text
from router.sessions import SessionStore

logger = logging.getLogger(__name__)

RequestT = TypeVar("RequestT", ChatCompletionRequest, CompletionRequest)

ADAPTER_UNAVAILABLE_LOG_SECONDS = 60.0
"""Minimum time between two log lines about the same unavailable adapter, in seconds."""


class Gateway:
    """Routing plus a backend: what each endpoint of the gateway does, without HTTP.

    Parameters
    ----------
    routing : RoutingService
    backend : Backend
    server : ServerSettings, optional
        The HTTP limits and API keys; the defaults of :class:`ServerSettings` when omitted.
    adapter_sha256 : mapping of str to str, optional
        The sha256 of each embedded adapter file when the backend loaded it. A reload compares
        the files against it to tell whether the backend must load them again.
    """

    def __init__(
        self,
        routing: RoutingService,
        backend: Backend,
        *,
        server: ServerSettings | None = None,
        adapter_sha256: Mapping[str, str] | None = None,
    ) -> None:
        self.routing = routing
        self.backend = backend
        self.server = server or ServerSettings()
        self.adapter_sha256 = dict(adapter_sha256 or {})
        self.max_body_bytes = self.server.max_body_bytes
        self._unavailable_log = LogThrottle(ADAPTER_UNAVAILABLE_LOG_SECONDS)

    async def start(self) -> None:
        """Start the backend; an upstream's model list is checked against the adapters."""
        await self.backend.start()
        if isinstance(self.backend, UpstreamBackend) and self.backend.settings.adapter_field == "model":
            await self.backend.check_models(self.routing.model_names[1:])

    async def readiness(self) -> list[str]:
        """Return why the gateway cannot serve now (backend unreachable, adapters missing).

        An empty list means the gateway is ready.
        """
        return await self.backend.readiness(self.routing.model_names[1:])

    async def close(self) -> None:
        """Stop the backend."""
        await self.backend.close()

    def models(self) -> ModelList:
        """List the routing alias, the base model and every adapter."""
        base = self.routing.base_model
        cards = [ModelCard(id=self.routing.routing_alias), ModelCard(id=base)]
        cards += [ModelCard(id=adapter, parent=base) for adapter in self.routing.adapter_names]
        return ModelList(data=cards)

    async def route(self, model: str, text: str, request_id: str) -> RouteDecision:
        """Decide which model serves a request; the embedding runs on a worker thread.

        Raises
        ------
        ModelNotFoundError
            If ``model`` is neither the routing alias, the base model nor an adapter.
        """
        self.routing.check_model(model)
        if model != self.routing.routing_alias:  # a named model: nothing to embed, so no thread
            return self.routing.route(model, text, request_id=request_id)
        return await anyio.to_thread.run_sync(lambda: self.routing.route(model, text, request_id=request_id))

    async def route_chat(
        self,
        params: ChatCompletionRequest,
        body: dict[str, Any],
        request_id: str,
        session_id: str | None = None,
    ) -> RouteDecision:
        """Route a chat completion request by its conversation (see ``router.routing_text``)."""
        return await self.route_messages(params.model, body["messages"], request_id, session_id)

    async def route_messages(
        self, model: str, messages: list[dict[str, Any]], request_id: str, session_id: str | None
    ) -> RouteDecision:
        """Route a conversation; the embedding runs on a worker thread."""
        self.routing.check_model(model)
        if model != self.routing.routing_alias:  # a named model: nothing to embed, so no thread
            return self.routing.route_conversation(
                model, messages, session_id=session_id, request_id=request_id
            )
        return await anyio.to_thread.run_sync(
            lambda: self.routing.route_conversation(
                model, messages, session_id=session_id, request_id=request_id
            )
        )

    def session_id(self, headers: Mapping[str, str], body: Mapping[str, Any]) -> str | None:
        """Return the request's sticky-session id: the session header, or ``user`` if configured."""
        settings = self.routing.sessions
        if not settings.enabled:
            return None
        session_id = headers.get(settings.header)
        if not session_id and settings.use_user_field and isinstance(body.get("user"), str):
            session_id = body["user"]
        return session_id or None

    async def route_completion(self, params: CompletionRequest, request_id: str) -> RouteDecision:
        """Route a text completion request by its (last) string prompt; token-id prompts fall back."""
        return await self.route(params.model, completion_routing_text(params.text_prompts), request_id)

    async def route_text(
        self, params: RouteRequest, body: dict[str, Any], request_id: str, session_id: str | None = None
    ) -> RouteDecision:
        """Route the conversation or text of a ``POST /v1/route`` request."""
        model = params.model or self.routing.routing_alias
        if params.messages is not None:
            return await self.route_messages(model, body["messages"], request_id, session_id)
        if params.prompt is not None:
            return await self.route(model, completion_routing_text(params.prompt), request_id)
        return await self.route(model, params.text or "", request_id)

    async def chat_completions(
        self, params: ChatCompletionRequest, body: dict[str, Any], decision: RouteDecision, request_id: str
    ) -> tuple[BackendResult, RouteDecision]:
        """Generate a chat completion with the model ``decision`` chose.

        Returns the result and the decision that served it, which differs from ``decision`` when
        the adapter was unavailable and the base model served the request instead.
        """
        return await self._generate(self.backend.chat_completions, params, body, decision, request_id)

    async def completions(
        self, params: CompletionRequest, body: dict[str, Any], decision: RouteDecision, request_id: str
    ) -> tuple[BackendResult, RouteDecision]:
        """Generate a text completion with the model ``decision`` chose.

        Returns the result and the decision that served it, as :meth:`chat_completions` does.
        """
        return await self._generate(self.backend.completions, params, body, decision, request_id)

    async def _generate(
        self,
        method: Callable[[BackendCall[RequestT]], Awaitable[BackendResult]],
        params: RequestT,
        body: dict[str, Any],
        decision: RouteDecision,
        request_id: str,
    ) -> tuple[BackendResult, RouteDecision]:
        try:
            return await method(
                BackendCall(params, body, decision.model, decision.adapter, request_id)
            ), decision
        except AdapterUnavailableError as error:
            fallback = dataclasses.replace(
                decision, model=self.routing.base_model, adapter=None, fallback_reason="adapter_unavailable"
            )
            self._log_adapter_unavailable(error, request_id)
            result = await method(BackendCall(params, body, fallback.model, None, request_id))
            return result, fallback

    def _log_adapter_unavailable(self, error: AdapterUnavailableError, request_id: str) -> None:
        skipped = self._unavailable_log.skipped_if_due(error.adapter)
        if skipped is None:
            return
        logger.warning(
            "request %s: adapter %s is unavailable, so the base model %s serves the request "
            "(fallback adapter_unavailable; %d more such requests since the last line about %s): %s",
            request_id,
            error.adapter,
            self.routing.base_model,
            skipped,
            error.adapter,
            error.message,
        )


def build_gateway(config: GatewayConfig) -> Gateway:
    """Build the router, the routing policy and the backend that ``config`` describes.

    Blocking: trains or loads the router, and loads the model of an embedded backend.

    Raises
    ------
    ConfigError
        If model names collide, a domain has no adapter, an adapter file is missing or does not
        match its sha256 pin, or the backend cannot be set up.
    """
    adapter_sha256 = check_gateway_config(config)
    routing = build_routing(config)
    backend = build_backend(config, routing.adapter_names)
    return Gateway(routing, backend, server=config.server, adapter_sha256=adapter_sha256)


def check_gateway_config(config: GatewayConfig) -> dict[str, str]:
    """Run the checks that load no model, and return the sha256 of each embedded adapter file.

    Blocking: reads the router's domains and hashes the adapter files.

    Raises
    ------
    ConfigError
        If model names collide, a domain has no adapter, or an adapter file is missing or does
        not match its sha256 pin.
    """
    _check_model_names(config)
    check_config_files(config)
    return check_adapter_checksums(config)


def build_routing(config: GatewayConfig, *, session_store: SessionStore | None = None) -> RoutingService:
    """Train or load the router ``config`` describes and wrap it in the routing policy.

    Blocking: loads the embedding model and the router. ``session_store`` keeps the sticky
    sessions of a previous routing service. Without it, a new in-memory store is made.
    """
    logger.info(
        "building the router (%s)", config.router.artifact or f"exemplars in {config.router.exemplars}"
    )
    domain_router = build_domain_router(
        config.router, config.adapters, max_chunks=config.conversation.max_chunks
    )
    domain_router.predict(["warm-up"])  # loads the embedding model's lazy parts before the first request
    logger.info("router ready: domains %s", ", ".join(domain_router.domains))
    return RoutingService(
        domain_router,
        config.adapters,
        base_model=config.backend.base_model_name,
        routing_alias=config.server.routing_alias,
        log_prompts=config.server.log_prompts,
        conversation=config.conversation,
        sessions=config.sessions,
        session_store=session_store,
    )


def build_backend(config: GatewayConfig, adapter_names: list[str]) -> Backend:
    """Make the backend ``config`` describes. An embedded backend loads its model and ``adapter_names``.

    Blocking for the embedded backend, which dry-runs every adapter. The backend is not started.
    """
    if isinstance(config.backend, EmbeddedBackendSettings):
        logger.info(
            "loading the embedded backend: %s with adapters %s",
            config.backend.model,
            ", ".join(adapter_names),
        )
        return EmbeddedBackend.from_settings(config.backend, adapter_names)
    logger.info("using the upstream backend at %s", config.backend.url)
    return UpstreamBackend(config.backend)


def _check_model_names(config: GatewayConfig) -> None:
    alias, base = config.server.routing_alias, config.backend.base_model_name
    adapters = {adapter for adapter in config.adapters.values() if adapter is not None}
    if alias == base or alias in adapters:
        raise ConfigError(
            f"server.routing_alias '{alias}' is also a model name: choose an alias that is neither "
            "backend.base_model_name nor an adapter"
        )
    if base in adapters:
        raise ConfigError(f"backend.base_model_name '{base}' is also an adapter name: rename one of them")
