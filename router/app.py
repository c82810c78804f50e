"""The gateway's HTTP API: thin FastAPI handlers over a :class:`Gateway`."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from starlette.responses import JSONResponse, Response

from router.auth import ApiKeyMiddleware, api_keys
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
from router.responses import backend_response
from router.validation import read_json_object, validate_body

logger = logging.getLogger(__name__)


def create_app(gateway: Gateway) -> FastAPI:
    """Return the gateway application; its lifespan starts and stops ``gateway``."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await gateway.start()
        logger.info("gateway started: models %s", ", ".join(gateway.routing.model_names))
        try:
            yield
        finally:
            await gateway.close()
            logger.info("gateway stopped")

    app = FastAPI(
        title="adapter-router",
        summary="Routes each request to the LoRA adapter of its domain",
        lifespan=lifespan,
    )
    _install_middleware(app, gateway)
    install_error_handlers(app)
    limits = gateway.server

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
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

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        body = await read_json_object(request)
        params = validate_body(CompletionRequest, body)
        check_text_length(params.text_prompts, max_text_chars=limits.max_text_chars, param="prompt")
        decision = await gateway.route_completion(params, request_id(request))
        set_response_headers(request, decision.headers())
        result, decision = await gateway.completions(params, body, decision, request_id(request))
        set_response_headers(request, decision.headers())
        return backend_response(result, decision.headers())

    @app.post("/v1/route")
    async def route(request: Request) -> JSONResponse:
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
    async def models() -> JSONResponse:
        return JSONResponse(gateway.models().model_dump(mode="json"))

    @app.get("/health")
    async def health() -> JSONResponse:
        return JSONResponse(HealthResponse().model_dump())

    @app.get("/ready")
    async def ready() -> JSONResponse:
        problems = await gateway.readiness()
        start_problems = getattr(gateway.backend, "start_problems", None)
        content = ReadinessResponse(
            status="not_ready" if problems else "ready", problems=problems, start_problems=start_problems
        )
        if problems:
            logger.info("GET /ready: not ready: %s", "; ".join(problems))
        return JSONResponse(content.model_dump(), status_code=503 if problems else 200)

    return app


def _install_middleware(app: FastAPI, gateway: Gateway) -> None:
    # Starlette runs the middleware added last first: request ids on every response, then API
    # keys, so requests without a valid key take no concurrency slot, then the limits.
    settings = gateway.server
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
    app.add_middleware(RequestIdMiddleware)


def _prompt_texts(prompt: str | list[str]) -> list[str]:
    return [prompt] if isinstance(prompt, str) else prompt
