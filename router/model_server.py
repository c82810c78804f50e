"""``adapter-router serve-model``: an onnxruntime-genai model and its adapters as an OpenAI server.

No routing happens here: a request's ``model`` names the adapter to use (the vLLM convention),
and the base model's name selects none. The gateway's upstream backend can point at it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from starlette.responses import JSONResponse, Response

from router.backends.base import BackendCall
from router.backends.embedded import EmbeddedBackend
from router.config import ConfigError, EmbeddedBackendSettings, ServerSettings, resolve_path
from router.error_handlers import install_error_handlers
from router.errors import ModelNotFoundError
from router.middleware import install_middleware, request_id
from router.protocol import ChatCompletionRequest, CompletionRequest, HealthResponse, ModelCard, ModelList
from router.responses import backend_response
from router.serving import serve_app
from router.validation import read_json_object, validate_body

logger = logging.getLogger(__name__)

ADAPTER_SUFFIX = ".onnx_adapter"


def create_model_app(
    backend: EmbeddedBackend, *, base_model_name: str, max_body_bytes: int = ServerSettings().max_body_bytes
) -> FastAPI:
    """Return the model server application for ``backend``; its lifespan starts and stops it."""
    adapters = backend.engine.adapter_names

    def served(model: str) -> str | None:
        """Return the adapter ``model`` selects (``None`` for the base model)."""
        if model == base_model_name:
            return None
        if model in adapters:
            return model
        raise ModelNotFoundError(
            f"The model '{model}' does not exist: use {', '.join([base_model_name, *adapters])}",
            param="model",
        )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await backend.start()
        logger.info("model server started: models %s", ", ".join([base_model_name, *adapters]))
        try:
            yield
        finally:
            await backend.close()
            logger.info("model server stopped")

    app = FastAPI(title="adapter-router model server", lifespan=lifespan)
    install_middleware(app, max_body_bytes=max_body_bytes)
    install_error_handlers(app)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        body = await read_json_object(request)
        params = validate_body(ChatCompletionRequest, body)
        call = BackendCall(params, body, params.model, served(params.model), request_id(request))
        return backend_response(await backend.chat_completions(call), {})

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        body = await read_json_object(request)
        params = validate_body(CompletionRequest, body)
        call = BackendCall(params, body, params.model, served(params.model), request_id(request))
        return backend_response(await backend.completions(call), {})

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        cards = [ModelCard(id=base_model_name)]
        cards += [ModelCard(id=adapter, parent=base_model_name) for adapter in adapters]
        return JSONResponse(ModelList(data=cards).model_dump(mode="json"))

    @app.get("/health")
    async def health() -> JSONResponse:
        return JSONResponse(HealthResponse().model_dump())

    return app


def find_adapters(folder: Path) -> dict[str, Path]:
    """Return adapter name to file for every ``NAME.onnx_adapter`` in ``folder``."""
    return {
        path.name.removesuffix(ADAPTER_SUFFIX): path for path in sorted(folder.glob(f"*{ADAPTER_SUFFIX}"))
    }


def run_model_server(*, model: str, adapters: str | None, base_model_name: str, host: str, port: int) -> None:
    """Load ``model`` with every adapter in ``adapters`` and serve them until SIGINT or SIGTERM.

    ``model`` and ``adapters`` are folders, and ``data:NAME`` names bundled data. ``adapters``
    defaults to ``<model>/adapters``. When that default folder does not exist, the base model is
    served alone.

    Raises
    ------
    ConfigError
        If a folder is missing, an adapter is named like the base model, or the model or an
        adapter fails to load.
    """
    model_dir = resolve_path(model, Path.cwd())
    if not model_dir.is_dir():
        raise ConfigError(
            f"model folder not found: {model_dir}: pass a folder exported by the onnxruntime-genai "
            "model builder to --model"
        )
    adapter_dir = resolve_path(adapters, Path.cwd()) if adapters else model_dir / "adapters"
    if adapters and not adapter_dir.is_dir():
        raise ConfigError(f"adapter folder not found: {adapter_dir}: pass a folder of {ADAPTER_SUFFIX} files")
    adapter_files = find_adapters(adapter_dir) if adapter_dir.is_dir() else {}
    if not adapter_files:
        logger.warning("no %s files in %s: serving the base model only", ADAPTER_SUFFIX, adapter_dir)
    if base_model_name in adapter_files:
        raise ConfigError(
            f"the base model name '{base_model_name}' is also an adapter in {adapter_dir}: "
            "pass another --base-model-name"
        )

    settings = EmbeddedBackendSettings(
        model=str(model_dir),
        base_model_name=base_model_name,
        adapter_files={name: str(path) for name, path in adapter_files.items()},
    )
    backend = EmbeddedBackend.from_settings(settings, adapter_files)
    serve_app(
        create_model_app(backend, base_model_name=base_model_name), host=host, port=port, name="model server"
    )
