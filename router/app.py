"""The gateway's HTTP API: thin FastAPI handlers over a :class:`Gateway`."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from pydantic import BaseModel
from starlette.responses import JSONResponse, Response

from router.auth import AdminKeys, ApiKeyMiddleware, admin_api_keys, api_keys
from router.disconnect import ClientDisconnectMiddleware
from router.error_handlers import install_error_handlers
from router.gateway import Gateway
from router.limits import ConcurrencyLimitMiddleware, check_messages, check_text_length
from router.middleware import (
    BodySizeLimitMiddleware,
    RequestIdMiddleware,
    request_id,
    set_response_headers,
)
from router.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    HealthResponse,
    ReadinessResponse,
    RouteRequest,
    RouteResponse,
)
from router.reload import GatewayReloader, RoutingSnapshotMiddleware, request_gateway
from router.responses import backend_response
from router.validation import read_json_object, validate_body

logger = logging.getLogger(__name__)


def create_app(gateway: Gateway, reloader: GatewayReloader | None = None) -> FastAPI:
    """Return the gateway application; its lifespan starts and stops ``gateway``.

    ``reloader`` swaps in new gateway states on ``POST /admin/reload`` and SIGHUP, and each
    request keeps the state current at its start. Without one, a reload is rejected, because the app
    does not know the config file.

    Raises
    ------
    ConfigError
        If an admin key is also an API key.
    """
    reloader = reloader or GatewayReloader(gateway)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await reloader.start()
        logger.info("gateway started: models %s", ", ".join(reloader.gateway.routing.model_names))
        try:
            yield
        finally:
            await reloader.close()
            logger.info("gateway stopped")

    app = FastAPI(
        title="adapter-router",
        summary="Routes each request to the LoRA adapter of its domain",
        lifespan=lifespan,
    )
    admin_keys = _install_middleware(app, gateway, reloader)
    install_error_handlers(app)
    limits = gateway.server

    @app.post("/v1/chat/completions", openapi_extra=_json_body(ChatCompletionRequest))
    async def chat_completions(request: Request) -> Response:
        gateway = request_gateway(request)
        body = await read_json_object(request)
        params = validate_body(ChatCompletionRequest, body)
        check_messages(
            body["messages"], max_messages=limits.max_messages, max_text_chars=limits.max_text_chars
        )
        session_id = gateway.session_id(request.headers, body)
        decision = await gateway.route_chat(params, body, request_id(request), session_id)
        set_response_headers(request, decision.headers())
        result, decision = await gateway.chat_completions(params, body, decision, request_id(request))
        set_response_headers(request, decision.headers())
        return backend_response(result, decision.headers())

    @app.post("/v1/completions", openapi_extra=_json_body(CompletionRequest))
    async def completions(request: Request) -> Response:
        gateway = request_gateway(request)
        body = await read_json_object(request)
        params = validate_body(CompletionRequest, body)
        check_text_length(params.text_prompts, max_text_chars=limits.max_text_chars, param="prompt")
        decision = await gateway.route_completion(params, request_id(request))
        set_response_headers(request, decision.headers())
        result, decision = await gateway.completions(params, body, decision, request_id(request))
        set_response_headers(request, decision.headers())
        return backend_response(result, decision.headers())

    @app.post("/v1/route", openapi_extra=_json_body(RouteRequest))
    async def route(request: Request) -> JSONResponse:
        gateway = request_gateway(request)
        body = await read_json_object(request)
        params = validate_body(RouteRequest, body)
        if params.messages is not None:
            check_messages(
                body["messages"], max_messages=limits.max_messages, max_text_chars=limits.max_text_chars
            )
        elif params.prompt is not None:
            check_text_length(
                _prompt_texts(params.prompt), max_text_chars=limits.max_text_chars, param="prompt"
            )
        else:
            check_text_length([params.text or ""], max_text_chars=limits.max_text_chars, param="text")
        session_id = gateway.session_id(request.headers, body)
        decision = await gateway.route_text(params, body, request_id(request), session_id)
        content = RouteResponse.model_validate(decision.to_dict()).model_dump(mode="json")
        return JSONResponse(content, headers=decision.headers())

    @app.get("/v1/models")
    async def models(request: Request) -> JSONResponse:
        return JSONResponse(request_gateway(request).models().model_dump(mode="json"))

    @app.get("/health")
    async def health() -> JSONResponse:
        return JSONResponse(HealthResponse().model_dump())

    @app.get("/ready")
    async def ready(request: Request) -> JSONResponse:
        gateway = request_gateway(request)
        problems = await gateway.readiness()
        start_problems = getattr(gateway.backend, "start_problems", None)
        content = ReadinessResponse(
            status="not_ready" if problems else "ready", problems=problems, start_problems=start_problems
        )
        if problems:
            logger.info("GET /ready: not ready: %s", "; ".join(problems))
        return JSONResponse(content.model_dump(), status_code=503 if problems else 200)

    @app.post("/admin/reload")
    async def admin_reload(request: Request) -> JSONResponse:
        admin_keys.check(request.headers, request.method, request.url.path, request_id(request))
        report = await reloader.reload("POST /admin/reload")
        return JSONResponse(report.to_dict())

    return app


def _install_middleware(app: FastAPI, gateway: Gateway, reloader: GatewayReloader) -> AdminKeys:
    # Starlette runs the middleware added last first: request ids on every response, then API
    # keys, so requests without a valid key take no concurrency slot, then the limits, and last
    # the gateway state each request keeps to its end.
    settings = gateway.server
    # Innermost, so a client that disconnects cancels only the handler and its upstream request.
    app.add_middleware(ClientDisconnectMiddleware)
    app.add_middleware(RoutingSnapshotMiddleware, reloader=reloader)
    app.add_middleware(BodySizeLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(
        ConcurrencyLimitMiddleware,
        max_concurrent=settings.max_concurrent_requests,
        retry_after_seconds=settings.retry_after_seconds,
        timeout_seconds=settings.request_timeout,
    )
    keys = api_keys(key.get_secret_value() for key in settings.api_keys)
    if keys:
        app.add_middleware(ApiKeyMiddleware, keys=keys)
        logger.info("API keys required: %d keys configured", len(keys))
    admin_keys = AdminKeys(admin_api_keys((key.get_secret_value() for key in settings.admin_api_keys), keys))
    if admin_keys:
        logger.info("admin endpoints enabled: %d admin keys configured", len(admin_keys))
    app.add_middleware(RequestIdMiddleware)
    return admin_keys


def _prompt_texts(prompt: str | list[str]) -> list[str]:
    return [prompt] if isinstance(prompt, str) else prompt


def _json_body(model: type[BaseModel]) -> dict[str, Any]:
    """Return the ``openapi_extra`` that documents ``model`` as an operation's JSON request body.

    The handlers parse the body themselves (``router.validation``), so FastAPI cannot infer it.
    The model's ``$defs`` are inlined, because a ``#/$defs/...`` reference would resolve against
    the whole OpenAPI document.
    """
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})
    content = {"application/json": {"schema": _inline_refs(schema, definitions)}}
    return {"requestBody": {"required": True, "content": content}}


def _inline_refs(node: Any, definitions: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        reference = node.get("$ref")
        if isinstance(reference, str) and reference.startswith("#/$defs/"):
            return _inline_refs(definitions[reference.removeprefix("#/$defs/")], definitions)
        return {key: _inline_refs(value, definitions) for key, value in node.items()}
    if isinstance(node, list):
        return [_inline_refs(item, definitions) for item in node]
    return node
