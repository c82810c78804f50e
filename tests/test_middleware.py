"""The HTTP middleware: a crash in a handler becomes an OpenAI-shaped 500, and serving goes on.

No endpoint of the real servers crashes on demand, so these tests mount a handler that raises
on purpose in a small FastAPI app with the same middleware and error handlers, and call it in
process through httpx's ASGI transport.
"""

from __future__ import annotations

import asyncio
import logging

import httpx
from fastapi import FastAPI, Request

from router.error_handlers import install_error_handlers
from router.middleware import install_middleware, set_response_headers


def crashing_app() -> FastAPI:
    app = FastAPI()
    install_middleware(app, max_body_bytes=1024)
    install_error_handlers(app)

    @app.post("/crash")
    async def crash(request: Request) -> None:
        set_response_headers(request, {"x-router-adapter": "math"})
        raise ZeroDivisionError("deliberate failure")

    @app.get("/ok")
    async def ok() -> dict[str, str]:
        return {"status": "ok"}

    return app


def call(app: FastAPI, method: str, path: str) -> httpx.Response:
    async def send() -> httpx.Response:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://test"
        ) as client:
            return await client.request(method, path, headers={"x-request-id": "crash-1"})

    return asyncio.run(send())


def test_unexpected_exception_is_logged_500(caplog):
    app = crashing_app()

    with caplog.at_level(logging.ERROR, logger="router.middleware"):
        response = call(app, "POST", "/crash")

    assert response.status_code == 500
    assert response.json() == {
        "error": {
            "message": "The server failed to process the request (request id crash-1).",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    }
    assert response.headers["x-request-id"] == "crash-1"
    assert response.headers["x-router-adapter"] == "math"
    assert "request crash-1: unexpected error in POST /crash" in caplog.text
    assert "ZeroDivisionError" in caplog.text


def test_app_serves_after_unexpected_exception():
    app = crashing_app()

    call(app, "POST", "/crash")
    response = call(app, "GET", "/ok")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
