"""API keys and request limits, against ``guarded_gateway``: a real gateway with keys and small limits.

The gateway's upstream is the recording upstream, whose ``slow`` and ``stall_stream`` behaviours
hold a request longer than the gateway's total timeout.
"""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
from conftest import API_KEYS, ENV_API_KEY, GUARD_LIMITS, Recorder
from server_process import ServerProcess

CHAT = "/v1/chat/completions"
MATH_PROMPT = "Solve for x: 3x + 5 = 20"
WAIT_SECONDS = 20
"""Maximum wait for the upstream to receive the requests a test keeps open, in seconds."""


def auth(key: str = API_KEYS[0]) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def chat(server: ServerProcess, body: dict, key: str = API_KEYS[0]) -> httpx.Response:
    return httpx.post(server.url + CHAT, json=body, headers=auth(key), timeout=30)


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assert_openai_error(response: httpx.Response, status: int, code: str) -> dict:
    error = response.json()["error"]
    assert response.status_code == status
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    return error


# API keys


@pytest.mark.parametrize("key", [*API_KEYS, ENV_API_KEY])
def test_each_configured_key_is_accepted(guarded_gateway, key):
    response = httpx.get(guarded_gateway.url + "/v1/models", headers=auth(key), timeout=30)

    assert response.status_code == 200
    assert "math" in [model["id"] for model in response.json()["data"]]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"authorization": "Bearer wrong-key"},
        {"authorization": f"Basic {API_KEYS[0]}"},
        {"authorization": "Bearer"},
        {"authorization": f"Bearer {API_KEYS[0]}x"},
    ],
    ids=["missing", "wrong", "not-bearer", "empty", "longer"],
)
def test_missing_or_wrong_key_is_401(guarded_gateway, headers):
    for method, path in [("GET", "/v1/models"), ("POST", CHAT), ("POST", "/v1/route")]:
        response = httpx.request(
            method, guarded_gateway.url + path, json={"text": MATH_PROMPT}, headers=headers, timeout=30
        )

        error = assert_openai_error(response, 401, "invalid_api_key")
        assert error["type"] == "invalid_request_error"
        assert "Bearer" in error["message"]
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.headers["x-request-id"]


def test_probes_need_no_key(guarded_gateway):
    health = httpx.get(guarded_gateway.url + "/health", timeout=30)
    ready = httpx.get(guarded_gateway.url + "/ready", timeout=30)

    assert health.status_code == 200
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"


def test_keys_never_reach_the_log(guarded_gateway):
    httpx.get(guarded_gateway.url + "/v1/models", headers=auth("wrong-key-abc"), timeout=30)
    chat(guarded_gateway, {"model": "auto", "messages": [user(MATH_PROMPT)]})

    log = guarded_gateway.log(max_chars=10_000_000)

    assert "HTTP 401" in log
    for key in [*API_KEYS, ENV_API_KEY, "wrong-key-abc"]:
        assert key not in log
    assert MATH_PROMPT not in log


# Message count and text length


def test_too_many_messages_is_400(guarded_gateway):
    messages = [user(f"message {index}") for index in range(GUARD_LIMITS["max_messages"] + 1)]

    response = chat(guarded_gateway, {"model": "auto", "messages": messages})

    error = assert_openai_error(response, 400, "too_many_messages")
    assert error["param"] == "messages"
    assert "5 messages" in error["message"]
    assert "server.max_messages" in error["message"]


def test_messages_at_limit_are_served(guarded_gateway):
    messages = [user(f"{MATH_PROMPT} ({index})") for index in range(GUARD_LIMITS["max_messages"])]

    response = chat(guarded_gateway, {"model": "auto", "messages": messages})

    assert response.status_code == 200


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        (CHAT, {"model": "auto", "messages": [user("x" * 600), user("y" * 600)]}, "messages"),
        (
            CHAT,
            {
                "model": "auto",
                "messages": [{"role": "user", "content": [{"type": "text", "text": "z" * 1001}]}],
            },
            "messages",
        ),
        ("/v1/completions", {"model": "auto", "prompt": ["x" * 600, "y" * 600]}, "prompt"),
        ("/v1/route", {"text": "x" * 1001}, "text"),
        ("/v1/route", {"prompt": "x" * 1001}, "prompt"),
        ("/v1/route", {"messages": [user("x" * 1001)]}, "messages"),
    ],
)
def test_text_over_limit_is_400(guarded_gateway, path, body, param):
    response = httpx.post(guarded_gateway.url + path, json=body, headers=auth(), timeout=30)

    error = assert_openai_error(response, 400, "text_too_long")
    assert error["param"] == param
    assert "server.max_text_chars" in error["message"]


# Concurrency and total time


def wait_for_requests(recorder: Recorder, count: int) -> None:
    for _ in range(WAIT_SECONDS * 20):
        if len(recorder.requests()) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"the upstream received {len(recorder.requests())} requests, expected {count}")


def test_concurrency_limit_is_503_then_timeouts_are_504(guarded_gateway, guard_recorder):
    body = {"model": "auto", "messages": [user(MATH_PROMPT)], "test_behaviour": "slow"}
    timed_out: list[httpx.Response] = []
    before = len(guard_recorder.requests())
    threads = [
        threading.Thread(target=lambda: timed_out.append(chat(guarded_gateway, body)))
        for _ in range(GUARD_LIMITS["max_concurrent_requests"])
    ]
    for thread in threads:
        thread.start()

    wait_for_requests(guard_recorder, before + len(threads))
    rejected = chat(guarded_gateway, {"model": "auto", "messages": [user(MATH_PROMPT)]})
    probe = httpx.get(guarded_gateway.url + "/health", timeout=30)
    for thread in threads:
        thread.join(timeout=60)
    after = chat(guarded_gateway, {"model": "auto", "messages": [user(MATH_PROMPT)]})

    error = assert_openai_error(rejected, 503, "server_overloaded")
    assert error["type"] == "server_error"
    assert rejected.headers["retry-after"] == "7"
    assert probe.status_code == 200
    assert len(timed_out) == len(threads)
    for response in timed_out:
        error = assert_openai_error(response, 504, "request_timeout")
        assert "server.request_timeout" in error["message"]
        assert response.headers["x-router-adapter"] == "math"
    assert after.status_code == 200


def test_stream_over_timeout_ends_with_error_event(guarded_gateway):
    body = {
        "model": "auto",
        "stream": True,
        "messages": [user(MATH_PROMPT)],
        "test_behaviour": "stall_stream",
    }

    with httpx.stream("POST", guarded_gateway.url + CHAT, json=body, headers=auth(), timeout=30) as response:
        events = [line for line in response.iter_lines() if line]

    assert response.status_code == 200
    assert len(events) == 2
    assert json.loads(events[0].removeprefix("data: "))["choices"][0]["delta"]["content"] == "Hello"
    error = json.loads(events[1].removeprefix("data: "))["error"]
    assert error["code"] == "request_timeout"
    assert error["type"] == "server_error"
