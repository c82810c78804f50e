"""The gateway's HTTP API: thin FastAPI handlers over a :class:`Gateway`."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from starlette.responses import JSONResponse, Response

from router.error_handlers import install_error_handlers
from router.gateway import Gateway
from router.middleware import install_middleware, request_id, set_response_headers
from router.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    HealthResponse,
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
    install_middleware(app, max_body_bytes=gateway.max_body_bytes)
    install_error_handlers(app)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        body = await read_json_object(request)
        params = validate_body(ChatCompletionRequest, body)
        session_id = gateway.session_id(request.headers, body)
        decision = await gateway.route_chat(params, body, request_id(request), session_id)
        set_response_headers(request, decision.headers())
        result = await gateway.chat_completions(params, body, decision, request_id(request))
        return backend_response(result, decision.headers())

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        body = await read_json_object(request)
        params = validate_body(CompletionRequest, body)
        decision = await gateway.route_completion(params, request_id(request))
        set_response_headers(request, decision.headers())
        result = await gateway.completions(params, body, decision, request_id(request))
        return backend_response(result, decision.headers())

    @app.post("/v1/route")
    async def route(request: Request) -> JSONResponse:
        body = await read_json_object(request)
        params = validate_body(RouteRequest, body)
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

    return app
