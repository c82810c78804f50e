"""The Python client against a real gateway, and against a scripted server for failures.

Everything the gateway can do on request (routing, completions, streams, 400, 404, 413) is
tested against the session's real gateway with the embedded demo model. What it cannot be made
to do (return 503, 401 or 500, stall, drop a connection, break a stream) comes from
:class:`ScriptedServer`, a small HTTP server in a thread of this process that also counts the
requests and connections it received, so retries and connection reuse can be checked.
"""

from __future__ import annotations

import inspect
import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from conftest import ADAPTERS, API_KEYS, BASE_MODEL, MAX_BODY_BYTES
from scripted_server import (
    ROUTER_HEADERS,
    Reply,
    ScriptedServer,
    error_reply,
    json_reply,
    stream_reply,
)
from server_process import ServerProcess, free_port

from router.client import (
    DEFAULT_TIMEOUT,
    AsyncRouterClient,
    AuthenticationError,
    BadRequestError,
    ChatStream,
    NotFoundError,
    RetryPolicy,
    RouterClient,
    RouterConnectionError,
    RouterError,
    RouterTimeoutError,
    ServerError,
)
from router.client._streaming import EventDecoder

MATH_PROMPT = "Solve for x: 3x + 5 = 20"
SQL_PROMPT = "Write a SQL query that returns the ten customers with the most orders"
CHIT_CHAT = "hi, how are you today?"
FALLBACK_REASONS = {"fallback_domain", "low_confidence", "out_of_domain"}

FAST_RETRY = RetryPolicy(max_retries=2, initial_backoff=0.01, max_backoff=0.05)
"""Two retries with waits of a few milliseconds, so retry tests take no noticeable time."""

SHORT_TIMEOUT = httpx.Timeout(0.3, connect=2.0)
"""A read timeout far below the scripted server's stall, so the timeout always fires first."""

ROUTE_BODY = {
    "model": "math",
    "adapter": "math",
    "domain": "math",
    "confidence": 0.91,
    "fallback": False,
    "fallback_reason": None,
    "scores": {"math": 0.91, "code": 0.09},
    "similarity": 0.8,
    "nearest": [],
    "routing_ms": 3.5,
}

CHAT_BODY = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "math",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "x = 5"}, "finish_reason": "stop"}],
}


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def chunk(content: str, finish_reason: str | None = None) -> dict[str, Any]:
    delta = {"content": content} if content else {}
    choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "math", "choices": [choice]}


def stream_text(chunks: list[dict[str, Any]]) -> str:
    return "".join(chunk["choices"][0]["delta"].get("content", "") for chunk in chunks if chunk["choices"])


def pool_connections(client: RouterClient | AsyncRouterClient) -> list[Any]:
    # NOTE: reads httpx internals (the transport's httpcore pool, as in httpx 0.28 and 0.29),
    # because httpx has no public API that lists a client's open connections.
    return list(client._http._transport._pool.connections)  # type: ignore[union-attr]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def client(gateway: ServerProcess) -> Iterator[RouterClient]:
    with RouterClient(gateway.url, timeout=60) as client:
        yield client


# Routing decisions


def test_route_text_returns_decision(client, gateway):
    decision = client.route(MATH_PROMPT)
    raw = httpx.post(f"{gateway.url}/v1/route", json={"text": MATH_PROMPT}, timeout=60).json()

    assert decision.model == "math"
    assert decision.adapter == "math"
    assert decision.domain == "math"
    assert decision.fallback is False
    assert decision.fallback_reason is None
    assert decision.confidence == pytest.approx(raw["confidence"])
    assert decision.confidence >= 0.5
    assert set(decision.scores) == {*ADAPTERS, "general"}
    assert max(decision.scores, key=decision.scores.get) == "math"
    assert decision.nearest[0].domain == "math"
    assert decision.nearest[0].text == raw["nearest"][0]["text"]
    assert -1 <= decision.similarity <= 1
    assert decision.routing_ms > 0
    assert decision.request_id.startswith("req_")


@pytest.mark.parametrize(
    ("text", "model", "expected_model", "classified", "reasons"),
    [
        (CHIT_CHAT, None, BASE_MODEL, True, FALLBACK_REASONS),
        (MATH_PROMPT, "code", "code", False, {None}),
        (MATH_PROMPT, BASE_MODEL, BASE_MODEL, False, {"explicit_model"}),
        ("   ", None, BASE_MODEL, False, {"no_text"}),
    ],
)
def test_route_fallback_and_forced_models(client, text, model, expected_model, classified, reasons):
    decision = client.route(text, model=model)

    assert decision.model == expected_model
    assert decision.fallback_reason in reasons
    assert decision.adapter == (None if decision.fallback else expected_model)
    assert (decision.confidence is not None) is classified
    assert (decision.domain is not None) is classified


@pytest.mark.anyio
async def test_async_route_messages_returns_decision(gateway):
    conversation = [*user(MATH_PROMPT), {"role": "assistant", "content": "x = 5"}, *user(SQL_PROMPT)]

    async with AsyncRouterClient(gateway.url, timeout=60) as client:
        decision = await client.route(conversation)

    # The latest user turn decides, so the SQL question wins over the earlier maths question.
    assert decision.model == "sql"
    assert decision.domain == "sql"
    assert decision.confidence >= 0.5
    assert decision.nearest


# Chat completions


def test_chat_returns_completion_and_decision(client):
    routed = client.route(MATH_PROMPT)
    response = client.chat(user(MATH_PROMPT), max_tokens=6, temperature=0)

    assert response.decision.model == "math"
    assert response.decision.adapter == "math"
    assert response.decision.domain == "math"
    assert response.decision.fallback is False
    assert response.decision.confidence == pytest.approx(routed.confidence, abs=1e-4)
    assert response.decision.request_id.startswith("req_")
    assert response.model == "math"
    assert response.completion["object"] == "chat.completion"
    assert response.completion["choices"][0]["message"]["role"] == "assistant"
    assert response.content
    assert response.finish_reason in ("stop", "length")
    assert 1 <= response.usage["completion_tokens"] <= 6


def test_chat_passes_params_and_forced_model(client):
    response = client.chat(user(MATH_PROMPT), model="legal", max_tokens=3, temperature=0)

    assert response.decision.model == "legal"
    assert response.decision.domain is None
    assert response.decision.confidence is None
    assert response.model == "legal"
    assert response.usage["completion_tokens"] == 3
    assert response.finish_reason == "length"


def test_chat_fallback_decision_has_no_adapter(client):
    response = client.chat(user(CHIT_CHAT), max_tokens=2)

    assert response.decision.model == BASE_MODEL
    assert response.decision.fallback is True
    assert response.decision.adapter is None
    assert response.decision.fallback_reason in FALLBACK_REASONS
    assert response.model == BASE_MODEL


@pytest.mark.anyio
async def test_async_chat_returns_decision(gateway, client):
    expected = client.chat(user(SQL_PROMPT), max_tokens=6, temperature=0)

    async with AsyncRouterClient(gateway.url, timeout=60) as async_client:
        response = await async_client.chat(user(SQL_PROMPT), max_tokens=6, temperature=0)

    assert response.decision.model == "sql"
    assert response.decision.fallback is False
    assert response.model == "sql"
    assert response.content == expected.content
    assert response.usage == expected.usage


# Streaming


def test_chat_stream_yields_chunks(client):
    whole = client.chat(user(MATH_PROMPT), max_tokens=8, temperature=0)

    with client.chat(user(MATH_PROMPT), stream=True, max_tokens=8, temperature=0) as stream:
        assert isinstance(stream, ChatStream)
        assert stream.decision.model == "math"
        assert stream.decision.domain == "math"
        assert stream.request_id.startswith("req_")
        chunks = list(stream)

    assert len(chunks) >= 3
    assert {chunk["model"] for chunk in chunks} == {"math"}
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert stream_text(chunks) == whole.content
    assert chunks[-1]["choices"][0]["finish_reason"] == whole.finish_reason


def test_chat_stream_passes_stream_options(client):
    with client.chat(
        user(SQL_PROMPT), stream=True, max_tokens=4, stream_options={"include_usage": True}
    ) as stream:
        chunks = list(stream)

    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 4


@pytest.mark.anyio
async def test_async_chat_stream_yields_chunks(gateway, client):
    whole = client.chat(user(SQL_PROMPT), max_tokens=8, temperature=0)

    async with AsyncRouterClient(gateway.url, timeout=60) as async_client:
        stream = await async_client.chat(user(SQL_PROMPT), stream=True, max_tokens=8, temperature=0)
        async with stream:
            chunks = [chunk async for chunk in stream]
        idle = [connection.is_idle() for connection in pool_connections(async_client)]

    assert stream.decision.model == "sql"
    assert stream.decision.fallback is False
    assert {chunk["model"] for chunk in chunks} == {"sql"}
    assert stream_text(chunks) == whole.content
    assert idle == [True]


# Models and health


def test_models_lists_alias_base_and_adapters(client):
    models = client.models()

    assert [model.id for model in models] == ["auto", BASE_MODEL, *ADAPTERS]
    assert [model.parent for model in models] == [None, None, *[BASE_MODEL] * len(ADAPTERS)]
    assert {model.owned_by for model in models} == {"adapter-router"}


@pytest.mark.anyio
async def test_async_models_and_health(gateway):
    async with AsyncRouterClient(gateway.url, timeout=60) as client:
        models = await client.models()
        health = await client.health()

    assert [model.id for model in models] == ["auto", BASE_MODEL, *ADAPTERS]
    assert health.status == "ok"
    assert health.ok is True


def test_health_reports_ok(client):
    health = client.health()

    assert health.status == "ok"
    assert health.ok is True


# Errors from the real gateway


@pytest.mark.parametrize("stream", [False, True])
def test_unknown_model_raises_not_found(client, stream):
    with pytest.raises(NotFoundError) as caught:
        client.chat(user(MATH_PROMPT), model="gpt-nope", stream=stream)

    assert caught.value.status_code == 404
    assert caught.value.code == "model_not_found"
    assert caught.value.error_type == "invalid_request_error"
    assert caught.value.param == "model"
    assert "gpt-nope" in caught.value.message
    assert caught.value.request_id.startswith("req_")


@pytest.mark.anyio
async def test_async_unknown_model_raises_not_found(gateway):
    async with AsyncRouterClient(gateway.url, timeout=60) as client:
        with pytest.raises(NotFoundError) as caught:
            await client.route(MATH_PROMPT, model="gpt-nope")

    assert caught.value.status_code == 404
    assert caught.value.code == "model_not_found"


def test_invalid_parameter_raises_bad_request(client):
    with pytest.raises(BadRequestError) as caught:
        client.chat(user(MATH_PROMPT), temperature=5)

    assert caught.value.status_code == 400
    assert caught.value.error_type == "invalid_request_error"
    assert caught.value.param == "temperature"
    assert "temperature" in caught.value.message
    assert "HTTP 400" in str(caught.value)


def test_body_over_limit_raises_bad_request(client):
    with pytest.raises(BadRequestError) as caught:
        client.chat(user("x" * (MAX_BODY_BYTES + 1)))

    assert caught.value.status_code == 413
    assert caught.value.code == "request_too_large"


@pytest.mark.anyio
async def test_async_invalid_messages_raise_bad_request(gateway):
    async with AsyncRouterClient(gateway.url, timeout=60) as client:
        with pytest.raises(BadRequestError) as caught:
            await client.chat([{"role": "robot", "content": "hi"}])

    assert caught.value.status_code == 400
    assert caught.value.param == "messages[0].role"


def test_wrong_api_key_raises_authentication_error(guarded_gateway):
    with (
        RouterClient(guarded_gateway.url, api_key="wrong-key") as client,
        pytest.raises(AuthenticationError) as caught,
    ):
        client.models()

    assert caught.value.status_code == 401


def test_right_api_key_is_accepted(guarded_gateway):
    with RouterClient(guarded_gateway.url, api_key=API_KEYS[0]) as client:
        models = client.models()

    assert "math" in [model.id for model in models]


# Connection reuse


def test_many_calls_leave_one_idle_connection(client):
    client.health()
    [first] = pool_connections(client)
    for _ in range(8):
        client.route(MATH_PROMPT)
        client.chat(user(SQL_PROMPT), max_tokens=2)
        with pytest.raises(NotFoundError):
            client.chat(user(MATH_PROMPT), model="gpt-nope")
        with pytest.raises(BadRequestError):
            client.chat(user(MATH_PROMPT), temperature=5)
        with client.chat(user(SQL_PROMPT), stream=True, max_tokens=2) as stream:
            list(stream)
    after_loop = pool_connections(client)
    idle_after_loop = first.is_idle()
    # A stream left after its first chunk closes its connection instead of returning it.
    with client.chat(user(SQL_PROMPT), stream=True, max_tokens=8) as stream:
        next(stream)
    after_abandoned_stream = pool_connections(client)
    client.models()
    final = pool_connections(client)
    idle_at_end = [connection.is_idle() for connection in final]

    client.close()

    assert after_loop == [first]
    assert idle_after_loop
    assert after_abandoned_stream == []
    assert len(final) == 1
    assert idle_at_end == [True]
    assert pool_connections(client) == []


@pytest.mark.anyio
async def test_async_many_calls_reuse_connection(gateway):
    async with AsyncRouterClient(gateway.url, timeout=60) as client:
        await client.health()
        [first] = pool_connections(client)
        for _ in range(8):
            await client.route(SQL_PROMPT)
            with pytest.raises(NotFoundError):
                await client.chat(user(MATH_PROMPT), model="gpt-nope")
            async with await client.chat(user(MATH_PROMPT), stream=True, max_tokens=2) as stream:
                [chunk async for chunk in stream]
        after_loop = pool_connections(client)
        idle_after_loop = first.is_idle()

    assert after_loop == [first]
    assert idle_after_loop
    assert pool_connections(client) == []


def test_connection_reused_then_closed(scripted):
    scripted.script(error_reply(503, "busy", "server_error"))

    with RouterClient(scripted.url, retry=FAST_RETRY) as client:
        for _ in range(20):
            client.health()
        scripted.script(error_reply(404, "no such model", "invalid_request_error", "model_not_found"))
        with pytest.raises(NotFoundError):
            client.health()
        opened = scripted.connections

    closed = wait_until(lambda: scripted.open_connections == 0)

    assert opened == 1
    assert len(scripted.requests) == 22
    assert closed


def wait_until(condition: Any, seconds: float = 5.0) -> bool:
    """Poll ``condition`` until it is true or ``seconds`` pass, and return its last value.

    The server's thread notices a closed connection a moment after the client closes it.
    """
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


# Retries


def test_503_is_retried_until_success(scripted, caplog):
    scripted.script(
        error_reply(503, "upstream down", "upstream_error"), Reply(503, b"busy"), json_reply(200, ROUTE_BODY)
    )

    with (
        caplog.at_level(logging.WARNING, logger="router.client"),
        RouterClient(scripted.url, retry=FAST_RETRY) as client,
    ):
        decision = client.route(MATH_PROMPT)

    assert decision.adapter == "math"
    assert len(scripted.requests) == 3
    assert [request.path for request in scripted.requests] == ["/v1/route"] * 3
    retries = [record.getMessage() for record in caplog.records if "retry" in record.getMessage()]
    assert len(retries) == 2
    assert "HTTP 503" in retries[0]
    assert "retry 1 of 2" in retries[0]


def test_503_exhausting_retries_raises(scripted):
    scripted.script(*[error_reply(503, "upstream down", "upstream_error", "upstream_unavailable")] * 4)

    with RouterClient(scripted.url, retry=FAST_RETRY) as client, pytest.raises(ServerError) as caught:
        client.chat(user(MATH_PROMPT))

    assert len(scripted.requests) == 3
    assert caught.value.status_code == 503
    assert caught.value.code == "upstream_unavailable"
    assert caught.value.error_type == "upstream_error"
    assert caught.value.message == "upstream down"


def test_no_retries_when_disabled(scripted):
    scripted.script(Reply(503, b"busy"))

    with RouterClient(scripted.url, retry=RetryPolicy(max_retries=0)) as client, pytest.raises(ServerError):
        client.health()

    assert len(scripted.requests) == 1


@pytest.mark.anyio
async def test_async_503_is_retried_until_success(scripted):
    scripted.script(Reply(503, b"busy"), json_reply(200, CHAT_BODY, ROUTER_HEADERS))

    async with AsyncRouterClient(scripted.url, retry=FAST_RETRY) as client:
        response = await client.chat(user(MATH_PROMPT))

    assert response.content == "x = 5"
    assert response.decision.model == "math"
    assert len(scripted.requests) == 2


@pytest.mark.parametrize(
    ("status", "error_class"),
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (403, AuthenticationError),
        (404, NotFoundError),
        (409, BadRequestError),
        (422, BadRequestError),
        (429, BadRequestError),
    ],
)
def test_4xx_is_not_retried(scripted, status, error_class):
    scripted.script(
        *[error_reply(status, f"rejected with {status}", "invalid_request_error", "some_code")] * 3
    )

    with RouterClient(scripted.url, retry=FAST_RETRY) as client, pytest.raises(error_class) as caught:
        client.chat(user(MATH_PROMPT))

    assert len(scripted.requests) == 1
    assert type(caught.value) is error_class
    assert caught.value.status_code == status
    assert caught.value.code == "some_code"
    assert caught.value.message == f"rejected with {status}"


@pytest.mark.anyio
async def test_async_401_raises_authentication_error(scripted):
    scripted.script(
        error_reply(401, "Incorrect API key provided", "invalid_request_error", "invalid_api_key")
    )

    async with AsyncRouterClient(scripted.url, api_key="sk-wrong", retry=FAST_RETRY) as client:
        with pytest.raises(AuthenticationError) as caught:
            await client.models()

    assert len(scripted.requests) == 1
    assert caught.value.code == "invalid_api_key"


@pytest.mark.parametrize("status", [500, 502, 504])
def test_other_5xx_not_retried(scripted, status):
    scripted.script(Reply(status, b"<html>proxy failure</html>", {"content-type": "text/html"}))

    with RouterClient(scripted.url, retry=FAST_RETRY) as client, pytest.raises(ServerError) as caught:
        client.route(MATH_PROMPT)

    assert len(scripted.requests) == 1
    assert caught.value.status_code == status
    assert caught.value.error_type is None
    assert "<html>proxy failure</html>" in caught.value.message


def test_dropped_connection_is_retried(scripted):
    scripted.script(Reply(drop=True), json_reply(200, ROUTE_BODY))

    with RouterClient(scripted.url, retry=FAST_RETRY) as client:
        decision = client.route(MATH_PROMPT)

    assert decision.model == "math"
    assert len(scripted.requests) == 2


@pytest.mark.anyio
async def test_async_dropped_connection_is_retried(scripted):
    scripted.script(Reply(drop=True), Reply(drop=True), json_reply(200, ROUTE_BODY))

    async with AsyncRouterClient(scripted.url, retry=FAST_RETRY) as client:
        decision = await client.route(MATH_PROMPT)

    assert decision.model == "math"
    assert len(scripted.requests) == 3


def test_backoff_grows_and_honours_retry_after():
    policy = RetryPolicy(max_retries=5, initial_backoff=0.5, max_backoff=3.0)

    assert 0.375 <= policy.backoff(0) <= 0.5
    assert 0.75 <= policy.backoff(1) <= 1.0
    assert 1.5 <= policy.backoff(2) <= 2.0
    assert 2.25 <= policy.backoff(4) <= 3.0
    assert policy.backoff(0, retry_after="2") == 2.0
    assert policy.backoff(0, retry_after="120") == 3.0
    assert 0.375 <= policy.backoff(0, retry_after="Wed, 21 Oct 2099 07:28:00 GMT") <= 0.5


@pytest.mark.parametrize(
    "settings",
    [{"max_retries": -1}, {"initial_backoff": -0.1}, {"initial_backoff": 2.0, "max_backoff": 1.0}],
)
def test_invalid_retry_policy_is_rejected(settings):
    with pytest.raises(ValueError, match="must be"):
        RetryPolicy(**settings)


# Connection failures and timeouts


def test_closed_port_retries_then_raises(caplog):
    url = f"http://127.0.0.1:{free_port()}"

    with (
        caplog.at_level(logging.WARNING, logger="router.client"),
        RouterClient(url, retry=FAST_RETRY) as client,
        pytest.raises(RouterConnectionError) as caught,
    ):
        client.health()

    assert type(caught.value) is RouterConnectionError
    assert caught.value.status_code is None
    assert url in caught.value.message
    assert "ConnectError" in caught.value.message
    assert [record.getMessage().count("ConnectError") for record in caught_retries(caplog)] == [1, 1]


def caught_retries(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if "retry" in record.getMessage()]


def test_stopped_server_raises_connection_error():
    server = ScriptedServer().start()
    client = RouterClient(server.url, retry=FAST_RETRY)
    try:
        assert client.health().ok is True
        server.stop()

        with pytest.raises(RouterConnectionError):
            client.health()
    finally:
        client.close()
        server.stop()


@pytest.mark.anyio
async def test_async_closed_port_raises_connection_error():
    async with AsyncRouterClient(f"http://127.0.0.1:{free_port()}", retry=FAST_RETRY) as client:
        with pytest.raises(RouterConnectionError) as caught:
            await client.models()

    assert "ConnectError" in caught.value.message


def test_slow_reply_times_out_once(scripted):
    # The server delays the reply for up to STALL_SECONDS, or until the test ends. The client's
    # read timeout is 0.3 s, so it gives up long before and must not send the request again.
    scripted.script(Reply(stall=True), Reply(stall=True), Reply(stall=True))

    with (
        RouterClient(scripted.url, timeout=SHORT_TIMEOUT, retry=FAST_RETRY) as client,
        pytest.raises(RouterTimeoutError) as caught,
    ):
        client.chat(user(MATH_PROMPT))

    assert isinstance(caught.value, RouterConnectionError)
    assert "ReadTimeout" in caught.value.message
    assert len(scripted.requests) == 1


@pytest.mark.anyio
async def test_async_slow_reply_times_out_once(scripted):
    scripted.script(Reply(stall=True), Reply(stall=True), Reply(stall=True))

    async with AsyncRouterClient(scripted.url, timeout=SHORT_TIMEOUT, retry=FAST_RETRY) as client:
        with pytest.raises(RouterTimeoutError):
            await client.route(MATH_PROMPT)

    assert len(scripted.requests) == 1


def test_stalled_stream_chunk_raises_timeout(scripted):
    # The headers arrive, the body never does: the read timeout applies to each chunk.
    headers = {"content-type": "text/event-stream", **ROUTER_HEADERS}
    scripted.script(Reply(200, b'data: {"choices": []}\n\n', headers, stall_body=True))

    with RouterClient(scripted.url, timeout=SHORT_TIMEOUT, retry=FAST_RETRY) as client:
        stream = client.chat(user(MATH_PROMPT), stream=True)
        first = next(stream)
        with pytest.raises(RouterTimeoutError):
            next(stream)

    assert first == {"choices": []}
    assert len(scripted.requests) == 1


@pytest.mark.parametrize("timeout", [None, httpx.Timeout(None), httpx.Timeout(5.0, read=None), 0, -1.0, "5"])
def test_timeout_must_be_set(timeout):
    with pytest.raises((ValueError, TypeError), match="timeout"):
        RouterClient(timeout=timeout)
    with pytest.raises((ValueError, TypeError), match="timeout"):
        AsyncRouterClient(timeout=timeout)


def test_timeouts_default_and_configurable():
    with RouterClient() as default, RouterClient(timeout=7.5) as custom:
        assert default.timeout == DEFAULT_TIMEOUT
        assert default._http.timeout == httpx.Timeout(120.0, connect=5.0)
        assert custom._http.timeout == httpx.Timeout(7.5)


# Streams from the scripted server


def test_stream_broken_midway_is_not_retried(scripted):
    scripted.script(stream_reply([chunk("x ="), chunk(" 5")], truncate=True), stream_reply([chunk("again")]))

    with RouterClient(scripted.url, retry=FAST_RETRY) as client:
        stream = client.chat(user(MATH_PROMPT), stream=True)
        received = []
        with pytest.raises(RouterConnectionError) as caught:
            for item in stream:
                received.append(item)

    assert stream_text(received) == "x = 5"
    assert len(scripted.requests) == 1
    assert caught.value.decision.model == "math"


@pytest.mark.anyio
async def test_async_broken_stream_not_retried(scripted):
    scripted.script(stream_reply([chunk("x =")], truncate=True), stream_reply([chunk("again")]))

    async with AsyncRouterClient(scripted.url, retry=FAST_RETRY) as client:
        stream = await client.chat(user(MATH_PROMPT), stream=True)
        received = []
        with pytest.raises(RouterConnectionError):
            async for item in stream:
                received.append(item)

    assert stream_text(received) == "x ="
    assert len(scripted.requests) == 1


def test_stream_without_done_raises(scripted):
    scripted.script(stream_reply([chunk("x =")], done=False))

    with RouterClient(scripted.url) as client:
        stream = client.chat(user(MATH_PROMPT), stream=True)
        received = []
        with pytest.raises(RouterConnectionError, match=r"ended before 'data: \[DONE\]'"):
            for item in stream:
                received.append(item)

    assert stream_text(received) == "x ="


def test_stream_error_event_raises_server_error(scripted):
    error = {
        "message": "Generation failed.",
        "type": "server_error",
        "param": None,
        "code": "generation_failed",
    }
    scripted.script(stream_reply([chunk("x"), {"error": error}]))

    with RouterClient(scripted.url) as client:
        stream = client.chat(user(MATH_PROMPT), stream=True)
        first = next(stream)
        with pytest.raises(ServerError) as caught:
            next(stream)

    assert stream_text([first]) == "x"
    assert caught.value.status_code is None
    assert caught.value.code == "generation_failed"
    assert caught.value.message == "Generation failed."
    assert caught.value.decision.model == "math"


@pytest.mark.anyio
async def test_async_stream_503_is_retried(scripted):
    scripted.script(Reply(503, b"busy"), stream_reply([chunk("x ="), chunk(" 5", "stop")]))

    async with (
        AsyncRouterClient(scripted.url, retry=FAST_RETRY) as client,
        await client.chat(user(MATH_PROMPT), stream=True) as stream,
    ):
        chunks = [item async for item in stream]

    assert stream_text(chunks) == "x = 5"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert len(scripted.requests) == 2


def test_chat_sends_body_and_api_key(scripted):
    scripted.script(json_reply(200, CHAT_BODY, ROUTER_HEADERS))

    with RouterClient(scripted.url + "/v1/", api_key="sk-test", headers={"x-team": "search"}) as client:
        client.chat(user(MATH_PROMPT), max_tokens=5, tools=[{"type": "function"}], user="u-1")

    request = scripted.requests[0]
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer sk-test"
    assert request.headers["x-team"] == "search"
    assert request.headers["user-agent"].startswith("adapter-router-client/")
    assert json.loads(request.body) == {
        "model": "auto",
        "messages": user(MATH_PROMPT),
        "max_tokens": 5,
        "tools": [{"type": "function"}],
        "user": "u-1",
        "stream": False,
    }


def test_no_authorization_header_without_api_key(scripted):
    with RouterClient(scripted.url) as client:
        client.health()

    assert "authorization" not in scripted.requests[0].headers


def test_missing_router_headers_raise(scripted):
    scripted.script(json_reply(200, CHAT_BODY))

    with RouterClient(scripted.url) as client, pytest.raises(ServerError) as caught:
        client.chat(user(MATH_PROMPT))

    assert caught.value.code == "invalid_response"
    assert "x-router-adapter" in caught.value.message


def test_invalid_json_body_raises_server_error(scripted):
    scripted.script(Reply(200, b"not json"))

    with RouterClient(scripted.url) as client, pytest.raises(ServerError) as caught:
        client.models()

    assert caught.value.code == "invalid_response"
    assert "not valid JSON" in caught.value.message


# Arguments and API shape


@pytest.mark.parametrize("messages", ["hello", [["user", "hello"]]])
def test_messages_must_be_message_objects(messages):
    with RouterClient() as client, pytest.raises(TypeError, match="messages must be a list"):
        client.chat(messages)


@pytest.mark.parametrize("url", ["127.0.0.1:8000", "ftp://127.0.0.1", "http://"])
def test_invalid_base_url_is_rejected(url):
    with pytest.raises(ValueError, match="base_url"):
        RouterClient(url)


def test_base_url_accepts_v1_suffix():
    with RouterClient("http://127.0.0.1:8000/v1/") as client:
        assert str(client.base_url) == "http://127.0.0.1:8000/"


def test_async_client_mirrors_sync_methods():
    def public_methods(cls: type) -> dict[str, inspect.Signature]:
        return {
            name: inspect.signature(member)
            for name, member in vars(cls).items()
            if callable(member) and not name.startswith("_") and name not in ("close", "aclose")
        }

    sync_methods = public_methods(RouterClient)
    async_methods = public_methods(AsyncRouterClient)

    assert sorted(sync_methods) == ["chat", "health", "models", "route"]
    assert sorted(async_methods) == sorted(sync_methods)
    for name, signature in sync_methods.items():
        assert list(async_methods[name].parameters) == list(signature.parameters), name
        assert inspect.iscoroutinefunction(getattr(AsyncRouterClient, name)), name
    assert inspect.signature(RouterClient.__init__).parameters.keys() == (
        inspect.signature(AsyncRouterClient.__init__).parameters.keys()
    )


def test_every_error_is_a_router_error():
    for error_class in (
        RouterConnectionError,
        RouterTimeoutError,
        BadRequestError,
        AuthenticationError,
        NotFoundError,
        ServerError,
    ):
        assert issubclass(error_class, RouterError)
    assert issubclass(RouterTimeoutError, RouterConnectionError)


def test_event_decoder_joins_data_lines():
    decoder = EventDecoder()
    lines = [": keep-alive", "event: message", 'data: {"a":', "data: 1}", "id: 7", "", "", "data:[DONE]", ""]

    events = [decoder.feed(line) for line in lines]

    assert [event for event in events if event is not None] == ['{"a":\n1}', "[DONE]"]
