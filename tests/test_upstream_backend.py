"""The upstream backend: what reaches the upstream, and how upstream failures reach the client.

The real model server cannot show the body it received or fail on purpose, so these tests use
``recording_upstream.py``, a small OpenAI-compatible server in its own process that records
each request and misbehaves on cue. Generation through the real ``serve-model`` process is
covered by the ``any_gateway`` tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
from conftest import BASE_MODEL, Recorder, start_gateway, write_gateway_config
from openai import OpenAI
from server_process import ServerProcess

from router.backends.base import BackendCall, BackendResult, JSONResult, StreamResult
from router.backends.upstream import UpstreamBackend
from router.config import UpstreamBackendSettings
from router.errors import AdapterUnavailableError
from router.protocol import ChatCompletionRequest

READ_TIMEOUT_SECONDS = 2  # below the recorder's "slow" delay
MATH_PROMPT = "Solve for x: 3x + 5 = 20"
CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def recorder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Recorder]:
    recorder = Recorder(tmp_path_factory.mktemp("recorder"))
    recorder.server.start()
    yield recorder
    recorder.server.stop()


@pytest.fixture(scope="module")
def recording_gateway(
    tmp_path_factory: pytest.TempPathFactory, recorder: Recorder, gateway: ServerProcess, router_cache: Path
) -> Iterator[ServerProcess]:
    """A gateway in front of the recorder; starts after ``gateway`` so the router is cached."""
    folder = tmp_path_factory.mktemp("gateway-recording")
    backend = {
        "type": "upstream",
        "url": f"{recorder.url}/v1",
        "base_model_name": BASE_MODEL,
        "read_timeout": READ_TIMEOUT_SECONDS,
    }
    server = start_gateway(
        "gateway (recording upstream)", folder, write_gateway_config(folder, backend, router_cache)
    )
    yield server
    server.stop()


def post(server: ServerProcess, body: dict, path: str = CHAT) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=30)


def test_unknown_fields_pass_through_untouched(recording_gateway, recorder):
    body = {
        "model": "auto",
        "messages": [
            {"role": "system", "content": "Be brief.", "x_note": {"keep": [1, 2.5, None, True]}},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": MATH_PROMPT},
                    {"type": "image_url", "image_url": {"url": "data:,"}},
                ],
            },
        ],
        "temperature": 0.25,
        "logit_bias": {"50256": -100},
        "tools": [{"type": "function", "function": {"name": "calc", "parameters": {"type": "object"}}}],
        "response_format": {"type": "json_object"},
        "guided_choice": ["a", "b"],
        "vendor_extension": {"nested": {"deep": ["x", 1]}},
        "adapter_id": "client-sent",
    }

    response = post(recording_gateway, body)
    received = recorder.last_request()

    assert response.status_code == 200, response.text
    assert received["path"] == CHAT
    assert received["body"] == {**body, "model": "math"}
    assert received["headers"]["x-request-id"] == response.headers["x-request-id"]


def test_fallback_sends_base_model_name(recording_gateway, recorder):
    response = post(
        recording_gateway,
        {"model": "auto", "messages": [{"role": "user", "content": "hi, how are you today?"}]},
    )

    assert response.status_code == 200
    assert recorder.last_request()["body"]["model"] == BASE_MODEL
    assert response.headers["x-router-adapter"] == BASE_MODEL


def test_response_model_is_rewritten_to_served_name(recording_gateway):
    raw = OpenAI(
        base_url=f"{recording_gateway.url}/v1", api_key="unused", max_retries=0
    ).chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": MATH_PROMPT}]
    )

    assert raw.parse().model == "math"
    assert raw.parse().choices[0].message.content == "Hello world"
    assert raw.headers["x-router-adapter"] == "math"


def test_stream_is_relayed_event_by_event(recording_gateway, recorder):
    body = {"model": "auto", "stream": True, "messages": [{"role": "user", "content": MATH_PROMPT}]}

    with httpx.stream("POST", recording_gateway.url + CHAT, json=body, timeout=30) as response:
        events = [line for line in response.iter_lines() if line]

    assert response.status_code == 200
    assert response.headers["x-router-adapter"] == "math"
    assert len(events) == 3
    first = {
        "id": "chatcmpl-recorded",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "math",
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hello"}, "finish_reason": None}],
    }
    assert events[0] == f"data: {json.dumps(first)}"  # already the served name: relayed byte for byte
    second = json.loads(events[1].removeprefix("data: "))
    assert second["model"] == "math"  # the upstream sent "upstream/math"
    assert second["choices"][0]["delta"] == {"content": " world"}
    assert events[2] == "data: [DONE]"


def test_upstream_4xx_passes_through(recording_gateway):
    body = {
        "model": "auto",
        "messages": [{"role": "user", "content": MATH_PROMPT}],
        "test_behaviour": "status:422",
    }

    response = post(recording_gateway, body)

    assert response.status_code == 422
    assert response.json() == {
        "error": {
            "message": "upstream says status:422",
            "type": "invalid_request_error",
            "param": None,
            "code": "test",
        }
    }
    assert response.headers["x-router-adapter"] == "math"


def test_upstream_4xx_text_body_becomes_openai_error(recording_gateway):
    body = {
        "model": "auto",
        "messages": [{"role": "user", "content": MATH_PROMPT}],
        "test_behaviour": "text:429",
    }

    response = post(recording_gateway, body)

    assert response.status_code == 429
    assert response.json()["error"]["message"] == "plain text failure"
    assert response.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("behaviour", "status", "code", "words"),
    [
        ("status:500", 502, None, "HTTP 500"),
        ("text:503", 502, None, "HTTP 503"),
        ("invalid_json", 502, None, "not a JSON object"),
        ("slow", 504, "upstream_timeout", "did not respond"),
    ],
)
def test_upstream_failure_is_5xx_error(recording_gateway, behaviour, status, code, words):
    body = {
        "model": "auto",
        "messages": [{"role": "user", "content": MATH_PROMPT}],
        "test_behaviour": behaviour,
    }

    response = post(recording_gateway, body)
    error = response.json()["error"]

    assert response.status_code == status
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "upstream_error"
    assert error["code"] == code
    assert words in error["message"]
    assert response.headers["x-router-adapter"] == "math"


def test_broken_stream_ends_with_error_event(recording_gateway):
    client = OpenAI(base_url=f"{recording_gateway.url}/v1", api_key="unused", max_retries=0)
    stream = client.chat.completions.create(
        model="auto",
        messages=[{"role": "user", "content": MATH_PROMPT}],
        stream=True,
        extra_body={"test_behaviour": "drop_stream"},
    )

    received = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            received.append(chunk)

    assert [chunk.choices[0].delta.content for chunk in received] == ["Hello"]
    assert "upstream model server" in caught.value.message


@pytest.fixture
def stopped_recorder(recorder: Recorder) -> Iterator[Recorder]:
    """The recorder stopped for one test, then started again on the same port."""
    recorder.server.stop()
    yield recorder
    recorder.server.start()


def test_upstream_down_is_503(recording_gateway, stopped_recorder):
    for stream in (False, True):
        body = {"model": "auto", "stream": stream, "messages": [{"role": "user", "content": MATH_PROMPT}]}

        response = post(recording_gateway, body)
        error = response.json()["error"]

        assert response.status_code == 503
        assert set(error) == {"message", "type", "param", "code"}
        assert error["code"] == "upstream_unavailable"
        assert stopped_recorder.url.removeprefix("http://") in error["message"]
        assert response.headers["x-router-adapter"] == "math"


def test_lorax_convention_sends_adapter_id(recorder):
    # The backend is driven in-process here (no gateway process) because only the request
    # body matters; the upstream it sends to is the real recorder process.
    settings = UpstreamBackendSettings(
        type="upstream", url=f"{recorder.url}/v1", base_model_name=BASE_MODEL, adapter_field="adapter_id"
    )
    body = {
        "model": "auto",
        "messages": [{"role": "user", "content": MATH_PROMPT}],
        "adapter_id": "from-client",
    }
    params = ChatCompletionRequest.model_validate(body)

    async def send_both() -> list[int]:
        backend = UpstreamBackend(settings)
        await backend.start()
        try:
            routed = await backend.chat_completions(BackendCall(params, body, "math", "math", "req-adapter"))
            fallback = await backend.chat_completions(BackendCall(params, body, BASE_MODEL, None, "req-base"))
        finally:
            await backend.close()
        return [routed.status_code, fallback.status_code]

    statuses = asyncio.run(send_both())
    routed, fallback = recorder.requests()[-2:]

    assert statuses == [200, 200]
    assert routed["body"]["model"] == BASE_MODEL
    assert routed["body"]["adapter_id"] == "math"
    assert fallback["body"]["model"] == BASE_MODEL
    assert "adapter_id" not in fallback["body"]


@pytest.mark.parametrize(
    ("request_id", "behaviour", "stream", "status"),
    [
        ("sent-once-read-timeout", "slow", False, 504),
        ("sent-once-upstream-503", "status:503", False, 502),
        ("sent-once-broken-stream", "drop_stream", True, 200),
    ],
)
def test_sent_request_is_never_retried(recording_gateway, recorder, request_id, behaviour, stream, status):
    body = {
        "model": "auto",
        "stream": stream,
        "messages": [{"role": "user", "content": MATH_PROMPT}],
        "test_behaviour": behaviour,
    }

    response = httpx.post(
        recording_gateway.url + CHAT, json=body, headers={"x-request-id": request_id}, timeout=30
    )
    received = [item for item in recorder.requests() if item["headers"].get("x-request-id") == request_id]
    retries = [
        line for line in recording_gateway.log().splitlines() if f"request {request_id}: connecting" in line
    ]

    assert response.status_code == status
    assert len(received) == 1
    assert retries == []


def test_upstream_gateway_matches_embedded_output(gateway, upstream_gateway):
    request = {
        "model": "auto",
        "messages": [{"role": "user", "content": MATH_PROMPT}],
        "max_tokens": 10,
        "temperature": 0,
    }

    embedded = post(gateway, request).json()
    forwarded = post(upstream_gateway, request).json()

    assert forwarded["model"] == embedded["model"] == "math"
    assert forwarded["choices"][0]["message"]["content"] == embedded["choices"][0]["message"]["content"]
    assert forwarded["usage"] == embedded["usage"]


# Adapter unavailable: vLLM answers HTTP 404 for a model it does not serve


def test_unavailable_adapter_falls_back_to_base(recording_gateway, recorder):
    for stream in (False, True):
        before = len(recorder.requests())
        body = {
            "model": "auto",
            "stream": stream,
            "messages": [{"role": "user", "content": MATH_PROMPT}],
            "test_behaviour": "adapter_missing",
        }

        with httpx.stream("POST", recording_gateway.url + CHAT, json=body, timeout=30) as response:
            content = response.read().decode()
        sent = [request["body"]["model"] for request in recorder.requests()[before:]]

        assert response.status_code == 200, content
        assert response.headers["x-router-fallback"] == "adapter_unavailable"
        assert response.headers["x-router-adapter"] == BASE_MODEL
        assert response.headers["x-router-domain"] == "math"
        assert sent == ["math", BASE_MODEL]
        assert "Hello" in content


def test_unavailable_adapter_is_logged_once_per_minute(recording_gateway):
    # The sql adapter is missing in no other test, so its first log line comes from this test.
    body = {
        "model": "auto",
        "messages": [{"role": "user", "content": "Write a SQL query that counts orders per customer"}],
        "test_behaviour": "adapter_missing",
    }

    statuses = [post(recording_gateway, body).status_code for _ in range(3)]
    lines = [line for line in recording_gateway.log().splitlines() if "adapter sql is unavailable" in line]

    assert statuses == [200, 200, 200]
    assert len(lines) == 1
    assert "does not serve the adapter sql" in lines[0]


@pytest.mark.parametrize(("mode", "raises"), [("fallback", True), ("error", False)])
def test_upstream_404_for_adapter_by_mode(recorder, mode, raises):
    settings = UpstreamBackendSettings(
        type="upstream", url=f"{recorder.url}/v1", base_model_name=BASE_MODEL, adapter_unavailable=mode
    )
    body = {
        "model": "auto",
        "messages": [{"role": "user", "content": MATH_PROMPT}],
        "test_behaviour": "adapter_missing",
    }
    params = ChatCompletionRequest.model_validate(body)

    async def send() -> int | str:
        backend = UpstreamBackend(settings)
        await backend.start()
        try:
            result = await backend.chat_completions(BackendCall(params, body, "math", "math", "req-404"))
        except AdapterUnavailableError as error:
            return error.adapter
        finally:
            await backend.close()
        return result.status_code

    outcome = asyncio.run(send())

    assert outcome == ("math" if raises else 404)


# LoRAX returns HTTP 424 {"error": ..., "error_type": "generation"} for an adapter_id it cannot
# load, or that object as a stream's first event.


def lorax_backend_results(
    recorder: Recorder, *, stream: bool, mode: str = "fallback"
) -> tuple[BackendResult | AdapterUnavailableError, BackendResult]:
    """Send the same request with adapter ``math`` and then without an adapter, LoRAX-style.

    The backend runs in-process, so the test sees what the gateway receives. The upstream is the
    real recorder process, which responds as LoRAX does for an adapter it cannot load.
    """
    settings = UpstreamBackendSettings(
        type="upstream",
        url=f"{recorder.url}/v1",
        base_model_name=BASE_MODEL,
        adapter_field="adapter_id",
        adapter_unavailable=mode,
    )
    body = {
        "model": "auto",
        "stream": stream,
        "messages": [{"role": "user", "content": MATH_PROMPT}],
        "test_behaviour": "lorax_adapter_missing",
    }
    params = ChatCompletionRequest.model_validate(body)

    async def read(result: BackendResult) -> BackendResult:
        if isinstance(result, StreamResult):
            events = [event async for event in result.events]

            async def replay():
                for event in events:
                    yield event

            return StreamResult(replay())
        return result

    async def send_both() -> tuple[BackendResult | AdapterUnavailableError, BackendResult]:
        backend = UpstreamBackend(settings)
        await backend.start()
        try:
            try:
                routed = await read(
                    await backend.chat_completions(BackendCall(params, body, "math", "math", "req-lorax"))
                )
            except AdapterUnavailableError as error:
                routed = error
            base = await read(
                await backend.chat_completions(BackendCall(params, body, BASE_MODEL, None, "req-lorax-base"))
            )
        finally:
            await backend.close()
        return routed, base

    return asyncio.run(send_both())


def stream_events(result: StreamResult) -> list[str]:
    async def collect() -> list[bytes]:
        return [event async for event in result.events]

    return [event.decode().strip() for event in asyncio.run(collect())]


@pytest.mark.parametrize("stream", [False, True])
def test_lorax_unloadable_adapter_falls_back(recorder, stream):
    routed, base = lorax_backend_results(recorder, stream=stream)
    sent = recorder.requests()[-2:]

    assert isinstance(routed, AdapterUnavailableError)
    assert routed.adapter == "math"
    assert "cannot load the adapter math: Request failed during generation" in routed.message
    assert [request["body"].get("adapter_id") for request in sent] == ["math", None]
    if stream:
        assert isinstance(base, StreamResult)
        assert stream_events(base)[-1] == "data: [DONE]"
    else:
        assert isinstance(base, JSONResult)
        assert base.body["choices"][0]["message"]["content"] == "Hello world"


def test_lorax_unloadable_adapter_error_mode(recorder):
    routed, _ = lorax_backend_results(recorder, stream=False, mode="error")

    assert isinstance(routed, JSONResult)
    assert routed.status_code == 424
    assert routed.body == {
        "error": {
            "message": "Request failed during generation: Server error: adapter math not found",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }


# Readiness


def test_ready_reports_upstream_models(recording_gateway):
    response = httpx.get(recording_gateway.url + "/ready", timeout=30)

    assert response.status_code == 200
    assert response.json() == {"status": "ready", "problems": [], "start_problems": []}


def test_ready_is_503_while_upstream_down(recording_gateway, stopped_recorder):
    response = httpx.get(recording_gateway.url + "/ready", timeout=30)
    body = response.json()

    assert response.status_code == 503
    assert body["status"] == "not_ready"
    assert len(body["problems"]) == 1
    assert "cannot list the models of upstream" in body["problems"][0]
    assert body["start_problems"] == []


# Load with injected faults

LOAD_REQUESTS = 500
LOAD_CONCURRENCY = 50
FAULTS = {
    # test_behaviour: (stream, expected HTTP status)
    "status:500": (False, 502),
    "invalid_json": (False, 502),
    "text:503": (False, 502),
    "status:422": (False, 422),
    "drop_stream": (True, 200),
}


KEEPALIVE_SECONDS = 5
"""Maximum time the gateway keeps an idle upstream connection open (its transport expires them
after at most this), and how long uvicorn keeps an idle client connection."""
SETTLE_SECONDS = 20
"""Maximum wait for the gateway's connections to return to their earlier count, in seconds."""
MEMORY_MARGIN_BYTES = 16 * 2**20
"""Most the gateway's resident memory may grow over one round of ``LOAD_REQUESTS`` requests after
a first, equal round warmed it up: 16 MiB, so a leak of 32 KiB per request fails. On a 2-vCPU VM
with embedding batching off, that round moved it by 1-7 MiB."""


@dataclass(frozen=True)
class ProcessUsage:
    """Open file descriptors, the sockets among them, and resident memory in bytes of a process."""

    descriptors: int
    sockets: int
    memory: int


def process_usage(server: ServerProcess) -> ProcessUsage:
    """Return the open descriptors, sockets and resident memory of ``server``'s process, from ``/proc``."""
    assert server.process is not None
    proc = Path(f"/proc/{server.process.pid}")
    descriptors = list((proc / "fd").iterdir())
    sockets = 0
    for descriptor in descriptors:
        with contextlib.suppress(FileNotFoundError):  # closed since it was listed
            sockets += os.readlink(descriptor).startswith("socket:")
    rss_pages = int((proc / "statm").read_text().split()[1])
    return ProcessUsage(len(descriptors), sockets, rss_pages * os.sysconf("SC_PAGE_SIZE"))


def settled_usage(server: ServerProcess, sockets_at_most: int | None = None) -> ProcessUsage:
    """Return ``server``'s usage once its idle connections are closed.

    Idle upstream connections are closed when the pool is next used after they expired, so
    this waits past the expiry and sends GET /ready, which uses the pool. With
    ``sockets_at_most``, it then polls for up to ``SETTLE_SECONDS`` until the socket count is
    down to it (the server closes a client's socket shortly after the client does).
    """
    time.sleep(KEEPALIVE_SECONDS + 1)
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        httpx.get(server.url + "/ready", timeout=30)
        time.sleep(0.5)
        usage = process_usage(server)
        if sockets_at_most is None or usage.sockets <= sockets_at_most or time.monotonic() > deadline:
            return usage


def load_plan() -> list[tuple[str | None, bool, int]]:
    """Return (behaviour, stream, expected status) per request: every tenth request is a fault."""
    faults = list(FAULTS.items())
    plan: list[tuple[str | None, bool, int]] = []
    for index in range(LOAD_REQUESTS):
        if index % 10 == 0:
            behaviour, (stream, status) = faults[(index // 10) % len(faults)]
            plan.append((behaviour, stream, status))
        else:
            plan.append((None, index % 2 == 0, 200))
    return plan


def check_load_response(status: int, content: bytes, stream: bool, behaviour: str | None) -> None:
    if status != 200:
        error = json.loads(content)["error"]
        assert set(error) == {"message", "type", "param", "code"}
        return
    if not stream:
        assert json.loads(content)["choices"][0]["message"]["content"] == "Hello world"
        return
    events = [line for line in content.decode().split("\n\n") if line]
    if behaviour == "drop_stream":
        assert "error" in json.loads(events[-1].removeprefix("data: "))
    else:
        assert events[-1] == "data: [DONE]"


def send_load(server: ServerProcess, plan: list[tuple[str | None, bool, int]]) -> list[tuple[int, bytes]]:
    """Send every request of ``plan``, ``LOAD_CONCURRENCY`` at a time; return (status, body) of each."""

    async def send_all() -> list[tuple[int, bytes]]:
        # The client drops idle connections after 1 s, well before uvicorn does after 5 s, so it
        # never sends a request on a connection the gateway is closing at that moment.
        limits = httpx.Limits(max_connections=LOAD_CONCURRENCY, keepalive_expiry=1.0)
        async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as client:
            gate = asyncio.Semaphore(LOAD_CONCURRENCY)

            async def send(behaviour: str | None, stream: bool) -> tuple[int, bytes]:
                body = {
                    "model": "auto",
                    "stream": stream,
                    "messages": [{"role": "user", "content": MATH_PROMPT}],
                }
                if behaviour is not None:
                    body["test_behaviour"] = behaviour
                async with gate:
                    response = await client.post(CHAT, json=body)
                    return response.status_code, response.content

            return await asyncio.gather(*(send(behaviour, stream) for behaviour, stream, _ in plan))

    return asyncio.run(send_all())


def check_load_results(plan: list[tuple[str | None, bool, int]], results: list[tuple[int, bytes]]) -> None:
    assert len(results) == len(plan)
    for (behaviour, stream, expected), (status, content) in zip(plan, results, strict=True):
        assert status == expected, (behaviour, stream, content[:200])
        check_load_response(status, content, stream, behaviour)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads process usage from /proc")
def test_load_with_faults_answers_every_request(recording_gateway):
    plan = load_plan()

    # The first round warms the gateway up: its thread pools fill and its allocator grows to
    # what this load needs. The second, equal round must then leave memory and sockets where
    # the first left them.
    check_load_results(plan, send_load(recording_gateway, plan))
    before = settled_usage(recording_gateway)
    check_load_results(plan, send_load(recording_gateway, plan))
    after = settled_usage(recording_gateway, sockets_at_most=before.sockets)

    assert after.sockets <= before.sockets
    assert after.descriptors <= before.descriptors
    assert after.memory - before.memory <= MEMORY_MARGIN_BYTES, (
        f"resident memory grew by {(after.memory - before.memory) / 2**20:.1f} MiB over {len(plan)} requests"
    )
