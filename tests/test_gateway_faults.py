"""Faults around a request: a late upstream, clients that leave, adapters that break, bad configs.

The servers are real processes on 127.0.0.1. ``faults_gateway`` forwards to a port where the
recording upstream (``recording_upstream.py``) is bound but refuses connections until a test
lets it listen, and it records when its client went away. ``adapter_gateway`` runs a copy of
the demo model whose adapter files the tests remove or replace, always by rename: a loaded
adapter file is memory-mapped, and writing it in place can crash the server with SIGBUS.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import BASE_MODEL, RECORDER, Recorder, start_gateway, write_gateway_config
from server_process import ServerProcess, free_port

from router.backends.base import BackendCall
from router.backends.embedded import EmbeddedBackend
from router.backends.upstream import UpstreamBackend, retry_delay
from router.config import ConfigError, EmbeddedBackendSettings, UpstreamBackendSettings, load_config
from router.config_checks import check_config_files
from router.errors import AdapterFailedError, AdapterUnavailableError, UpstreamUnavailableError
from router.genai_engine import AdapterError, GenaiEngine, SamplingOptions
from router.protocol import ChatCompletionRequest

CHAT = "/v1/chat/completions"
MATH_PROMPT = "Solve for x: 3x + 5 = 20"
SQL_PROMPT = "Write a SQL query that counts orders per customer"
LATE_CONNECT_ATTEMPTS = 20
"""Connect attempts of ``faults_gateway``: their backoff adds up to at least 9 s (0.2 s doubling to
1 s, each cut by at most half), far more than the late upstream needs to start listening."""
WAIT_SECONDS = 20
"""Maximum wait for an event in another process (a log line, a recorded request), in seconds."""
HELD_SECONDS = 60
"""How long the upstream delays a response that the client abandons. It is longer than any wait here."""


def wait_for(condition, description: str):
    """Poll ``condition`` for at most ``WAIT_SECONDS`` and return its first true value."""
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"gave up after {WAIT_SECONDS} s waiting for {description}")


def chat_body(prompt: str = MATH_PROMPT, **fields) -> dict:
    return {"model": "auto", "messages": [{"role": "user", "content": prompt}], **fields}


def log_lines(server: ServerProcess, text: str) -> list[str]:
    return [line for line in server.log(max_chars=2_000_000).splitlines() if text in line]


class LateRecorder(Recorder):
    """The recording upstream on ``port``, bound at once but refusing connections until :meth:`listen`."""

    def __init__(self, folder: Path, port: int) -> None:
        super().__init__(folder)
        self.trigger = folder / "listen-now"
        self.server.port = port
        self.server.command = [
            *[sys.executable, str(RECORDER), "--port", str(port), "--record", str(self.record_file)],
            *["--listen-when", str(self.trigger)],
        ]
        # ServerProcess.start returns once /health returns HTTP 200, which is only after listen().
        self._starting = threading.Thread(target=self.server.start, daemon=True)
        self._starting.start()

    def listen(self) -> None:
        """Let the server accept connections, and wait until /health returns HTTP 200."""
        self.trigger.touch()
        self._starting.join(timeout=WAIT_SECONDS)
        assert not self._starting.is_alive(), "the late recorder did not start listening"

    def disconnects(self) -> list[dict]:
        path = self.record_file.with_name(f"{self.record_file.stem}.disconnects.jsonl")
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]

    def received(self, request_id: str) -> list[dict]:
        return [
            request for request in self.requests() if request["headers"].get("x-request-id") == request_id
        ]


@pytest.fixture(scope="module")
def late_recorder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LateRecorder]:
    recorder = LateRecorder(tmp_path_factory.mktemp("late-recorder"), free_port())
    yield recorder
    recorder.listen()
    recorder.server.stop()


@pytest.fixture(scope="module")
def faults_gateway(
    tmp_path_factory: pytest.TempPathFactory,
    late_recorder: LateRecorder,
    gateway: ServerProcess,
    router_cache: Path,
) -> Iterator[ServerProcess]:
    """A gateway in front of ``late_recorder`` that retries connecting, with a long read timeout."""
    folder = tmp_path_factory.mktemp("gateway-faults")
    backend = {
        "type": "upstream",
        "url": f"{late_recorder.url}/v1",
        "base_model_name": BASE_MODEL,
        "read_timeout": HELD_SECONDS * 2,
        "connect_attempts": LATE_CONNECT_ATTEMPTS,
        "retry_backoff": 0.2,
        "retry_backoff_max": 1.0,
    }
    server = start_gateway("gateway (faults)", folder, write_gateway_config(folder, backend, router_cache))
    yield server
    server.stop()


@pytest.fixture
def listening_recorder(late_recorder: LateRecorder) -> LateRecorder:
    late_recorder.listen()
    return late_recorder


# Connect retries


def test_connect_retries_reach_late_upstream(faults_gateway, late_recorder):
    if late_recorder.trigger.exists():
        pytest.skip("the late recorder already listens: this test must run before the disconnect tests")
    request_id = "late-upstream-1"
    results: list[httpx.Response] = []
    sender = threading.Thread(
        target=lambda: results.append(
            httpx.post(
                faults_gateway.url + CHAT, json=chat_body(), headers={"x-request-id": request_id}, timeout=60
            )
        )
    )
    sender.start()
    wait_for(lambda: log_lines(faults_gateway, f"request {request_id}: connecting to upstream"), "a retry")
    late_recorder.listen()
    sender.join(timeout=60)
    retries = log_lines(faults_gateway, f"request {request_id}: connecting to upstream")

    assert results[0].status_code == 200, results[0].text
    assert results[0].json()["choices"][0]["message"]["content"] == "Hello world"
    assert 1 <= len(retries) < LATE_CONNECT_ATTEMPTS
    assert f"attempt 1 of {LATE_CONNECT_ATTEMPTS}: retrying in" in retries[0]
    assert len(late_recorder.received(request_id)) == 1


def test_connect_attempts_are_bounded(caplog):
    # The backend is driven in-process so that its log records can be counted; the refused
    # connections are real, to a port where nothing listens.
    settings = UpstreamBackendSettings(
        type="upstream",
        url=f"http://127.0.0.1:{free_port()}/v1",
        base_model_name=BASE_MODEL,
        connect_attempts=3,
        retry_backoff=0.01,
    )
    params = ChatCompletionRequest.model_validate(chat_body())

    async def send() -> None:
        backend = UpstreamBackend(settings)
        await backend.start()
        try:
            await backend.chat_completions(BackendCall(params, chat_body(), "math", "math", "req-bounded"))
        finally:
            await backend.close()

    with (
        caplog.at_level(logging.WARNING, logger="router.backends.upstream"),
        pytest.raises(UpstreamUnavailableError) as caught,
    ):
        asyncio.run(send())
    retries = [record.getMessage() for record in caplog.records if "retrying in" in record.getMessage()]

    assert "after 3 attempts" in caught.value.message
    assert len(retries) == 2
    assert all(message.startswith("request req-bounded: connecting to upstream") for message in retries)
    assert "attempt 2 of 3" in retries[1]


@pytest.mark.parametrize("attempt", [1, 2, 3, 4, 8])
def test_retry_delay_is_jittered_exponential(attempt):
    ceiling = min(2.0, 0.25 * 2 ** (attempt - 1))

    delays = [retry_delay(attempt, 0.25, 2.0) for _ in range(200)]

    assert all(ceiling / 2 <= delay <= ceiling for delay in delays)
    assert len(set(delays)) > 1


# Client disconnects


def test_dropped_request_closes_upstream_connection(faults_gateway, listening_recorder):
    request_id = "client-leaves-1"
    body = json.dumps(chat_body(test_behaviour=f"slow:{HELD_SECONDS}")).encode()
    head = (
        f"POST {CHAT} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        f"x-request-id: {request_id}\r\ncontent-length: {len(body)}\r\n\r\n"
    ).encode()

    with socket.create_connection(("127.0.0.1", faults_gateway.port), timeout=30) as client:
        client.sendall(head + body)
        wait_for(lambda: listening_recorder.received(request_id), "the upstream to receive the request")
    disconnects = wait_for(
        lambda: [item for item in listening_recorder.disconnects() if item["request_id"] == request_id],
        "the upstream to see its client go",
    )
    after = httpx.post(faults_gateway.url + CHAT, json=chat_body(), timeout=30)

    assert disconnects[0]["behaviour"] == f"slow:{HELD_SECONDS}"
    assert log_lines(faults_gateway, f"request {request_id}: the client disconnected")
    assert after.status_code == 200


def test_dropped_stream_closes_upstream_connection(faults_gateway, listening_recorder):
    request_id = "client-leaves-stream-1"
    body = chat_body(stream=True, test_behaviour=f"stall_stream:{HELD_SECONDS}")

    with httpx.stream(
        "POST", faults_gateway.url + CHAT, json=body, headers={"x-request-id": request_id}, timeout=30
    ) as response:
        first = next(line for line in response.iter_lines() if line)
    disconnects = wait_for(
        lambda: [item for item in listening_recorder.disconnects() if item["request_id"] == request_id],
        "the upstream to see its client go",
    )
    after = httpx.post(faults_gateway.url + CHAT, json=chat_body(stream=True), timeout=30)

    assert json.loads(first.removeprefix("data: "))["choices"][0]["delta"]["content"] == "Hello"
    assert disconnects[0]["behaviour"] == f"stall_stream:{HELD_SECONDS}"
    assert after.status_code == 200
    assert after.text.rstrip().endswith("data: [DONE]")


# Embedded adapters that fail after start


@pytest.fixture(scope="module")
def model_copy(tmp_path_factory: pytest.TempPathFactory, demo_model: Path) -> Path:
    """A copy of the demo model whose adapter files the tests may replace; the original is never touched."""
    copy = tmp_path_factory.mktemp("model-copy") / "model"
    shutil.copytree(demo_model, copy)
    return copy


@pytest.fixture(scope="module")
def adapter_gateway(
    tmp_path_factory: pytest.TempPathFactory, model_copy: Path, gateway: ServerProcess, router_cache: Path
) -> Iterator[ServerProcess]:
    """An embedded gateway on ``model_copy``; starts after ``gateway``, which has cached the router."""
    folder = tmp_path_factory.mktemp("gateway-adapters")
    backend = {"type": "embedded", "model": str(model_copy), "base_model_name": BASE_MODEL, "max_tokens": 8}
    server = start_gateway(
        "gateway (breaking adapters)", folder, write_gateway_config(folder, backend, router_cache)
    )
    yield server
    server.stop()


def replace_file(path: Path, content: bytes) -> None:
    """Give ``path`` new content by atomic rename, never writing the old (memory-mapped) file."""
    temporary = path.with_name(f".{path.name}.new")
    temporary.write_bytes(content)
    os.replace(temporary, path)


def routed(server: ServerProcess, prompt: str, *, stream: bool = False) -> tuple[httpx.Response, str]:
    with httpx.stream(
        "POST", server.url + CHAT, json=chat_body(prompt, stream=stream), timeout=60
    ) as response:
        return response, response.read().decode()


def test_removed_adapter_file_falls_back_to_base(adapter_gateway, model_copy):
    (model_copy / "adapters" / "sql.onnx_adapter").unlink()

    for stream in (False, True, False):
        response, content = routed(adapter_gateway, SQL_PROMPT, stream=stream)

        assert response.status_code == 200, content
        assert response.headers["x-router-domain"] == "sql"
        assert response.headers["x-router-adapter"] == BASE_MODEL
        assert response.headers["x-router-fallback"] == "adapter_unavailable"
        assert f'"model":"{BASE_MODEL}"' in content.replace(" ", "")
    lines = log_lines(adapter_gateway, "adapter sql is unavailable")

    assert len(lines) == 1
    assert "sql.onnx_adapter is gone" in lines[0]


def test_replaced_adapter_file_falls_back_until_restored(adapter_gateway, model_copy):
    adapter_file = model_copy / "adapters" / "math.onnx_adapter"
    original = adapter_file.read_bytes()

    replace_file(adapter_file, b"not an adapter")
    broken, _ = routed(adapter_gateway, MATH_PROMPT)
    broken_stream, stream_content = routed(adapter_gateway, MATH_PROMPT, stream=True)
    replace_file(adapter_file, original)
    restored, _ = routed(adapter_gateway, MATH_PROMPT)

    assert broken.status_code == 200
    assert broken.headers["x-router-adapter"] == BASE_MODEL
    assert broken.headers["x-router-fallback"] == "adapter_unavailable"
    assert broken_stream.headers["x-router-fallback"] == "adapter_unavailable"
    assert stream_content.rstrip().endswith("data: [DONE]")
    assert restored.headers["x-router-adapter"] == "math"
    assert restored.headers["x-router-fallback"] == "none"
    assert "changed after it was loaded" in log_lines(adapter_gateway, "adapter math is unavailable")[0]


def test_ready_lists_unusable_adapters(adapter_gateway, model_copy):
    adapter_file = model_copy / "adapters" / "code.onnx_adapter"
    original = adapter_file.read_bytes()

    replace_file(adapter_file, original[:-1])
    broken = httpx.get(adapter_gateway.url + "/ready", timeout=30)
    replace_file(adapter_file, original)
    code_problems = [problem for problem in broken.json()["problems"] if "'code'" in problem]

    assert broken.status_code == 503
    assert broken.json()["status"] == "not_ready"
    assert len(code_problems) == 1
    assert "code.onnx_adapter changed after it was loaded" in code_problems[0]


@pytest.mark.parametrize(
    ("mode", "raised"), [("fallback", AdapterUnavailableError), ("error", AdapterFailedError)]
)
def test_unusable_adapter_by_mode(tmp_path, demo_model, caplog, mode, raised):
    # The backend is driven in-process to see the exception the gateway receives; the model and
    # the adapter file are real.
    model = tmp_path / "model"
    shutil.copytree(demo_model, model)
    settings = EmbeddedBackendSettings(model=str(model), base_model_name=BASE_MODEL, adapter_unavailable=mode)
    backend = EmbeddedBackend.from_settings(settings, ["math"])
    (model / "adapters" / "math.onnx_adapter").unlink()
    params = ChatCompletionRequest.model_validate(chat_body(max_tokens=2))

    async def send_three() -> list[BaseException]:
        await backend.start()
        errors = []
        try:
            for index in range(3):
                call = BackendCall(params, chat_body(), "math", "math", f"req-{mode}-{index}")
                try:
                    await backend.chat_completions(call)
                except (AdapterUnavailableError, AdapterFailedError) as error:
                    errors.append(error)
        finally:
            await backend.close()
        return errors

    with caplog.at_level(logging.ERROR, logger="router.backends.embedded"):
        errors = asyncio.run(send_three())
    logged = [record for record in caplog.records if "adapter 'math' cannot be used" in record.getMessage()]

    assert [type(error) for error in errors] == [raised] * 3
    assert all(error.code == "adapter_unavailable" for error in errors)
    if mode == "error":
        assert errors[0].status_code == 503
        assert "req-error-0" in errors[0].message
        assert str(model) not in errors[0].message  # server paths stay in the log
        assert len(logged) == 1
    else:
        assert errors[0].adapter == "math"
        assert logged == []


def test_activating_unknown_adapter_raises_adapter_error(demo_model):
    engine = GenaiEngine(demo_model, {})

    with pytest.raises(AdapterError) as caught:
        list(engine.generate(engine.encode("Hello"), adapter="math", options=SamplingOptions(max_tokens=1)))

    assert caught.value.adapter == "math"
    assert "activating it failed" in caught.value.reason


# Config validation


def trained_artifact(router_cache):
    """Return the folder of the session's trained transformer router in ``router_cache``.

    The cache also contains static-embedding routers (``static-*``) when the cascade tests ran first.
    """
    trained = (
        path for path in (router_cache / "routers").glob("*/router.json") if "static" not in path.parent.name
    )
    return next(trained).parent


def test_config_reports_every_problem_at_once(tmp_path, gateway, router_cache):
    artifact = trained_artifact(router_cache)
    other_model = tmp_path / "other-embedding-model"
    other_model.mkdir()
    config_file = tmp_path / "gateway.yaml"
    config = {
        "router": {"artifact": str(artifact), "embedding_model": str(other_model)},
        "adapters": {
            "math": "math",
            "code": "code",
            "medical": "medical",
            "legal": "legal",
            "finance": "finance",
        },
        "backend": {"type": "upstream", "url": "http://127.0.0.1:9/v1", "base_model_name": BASE_MODEL},
    }
    config_file.write_text(yaml.safe_dump(config), encoding="utf-8")

    with pytest.raises(ConfigError) as caught:
        check_config_files(load_config(config_file))
    lines = str(caught.value).splitlines()

    assert len(lines) == 2
    assert lines[0].startswith("adapters.sql: missing")
    assert lines[1].startswith("router.embedding_model: the router artifact")
    assert "trained with the embedding model all-MiniLM-L6-v2" in lines[1]
    assert f"but the config names {other_model.resolve()}" in lines[1]
    assert "set router.embedding_model to default" in lines[1]


def test_config_with_artifact_model_passes(tmp_path, gateway, router_cache):
    artifact = trained_artifact(router_cache)
    config_file = tmp_path / "gateway.yaml"
    config = {
        "router": {"artifact": str(artifact), "embedding_model": "all-MiniLM-L6-v2"},
        "adapters": {domain: domain for domain in ["math", "code", "medical", "legal", "finance", "sql"]},
        "backend": {"type": "upstream", "url": "http://127.0.0.1:9/v1", "base_model_name": BASE_MODEL},
    }
    config_file.write_text(yaml.safe_dump(config), encoding="utf-8")

    check_config_files(load_config(config_file))
