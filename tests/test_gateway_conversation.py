"""Conversation routing through a real gateway: the routing-text report and sticky sessions."""

from __future__ import annotations

import httpx
from server_process import ServerProcess

IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}


def route(server: ServerProcess, messages: list[dict], session_id: str | None = None) -> httpx.Response:
    headers = {"x-session-id": session_id} if session_id else {}
    return httpx.post(f"{server.url}/v1/route", json={"messages": messages}, headers=headers, timeout=60)


def test_route_reports_routing_text(gateway):
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the derivative of x^3 + 2x?"},
        {"role": "assistant", "content": "3x^2 + 2"},
        {"role": "user", "content": [IMAGE]},
    ]

    response = route(gateway, messages)

    assert response.status_code == 200
    body = response.json()
    assert body["adapter"] == "math"
    assert body["routing_text"] == {
        "basis": "context",
        "request_turn": None,
        "context_turns": [1],
        "chars": len("What is the derivative of x^3 + 2x?"),
        "chunks": 1,
        "total_chunks": 1,
        "truncated": False,
    }
    assert body["sticky"] is False


def test_session_header_keeps_adapter_for_follow_up(gateway):
    first = route(
        gateway, [{"role": "user", "content": "What are the side effects of metformin?"}], "conv-42"
    )
    follow_up = route(gateway, [{"role": "user", "content": [IMAGE]}], "conv-42")
    without_session = route(gateway, [{"role": "user", "content": [IMAGE]}])

    assert first.json()["adapter"] == "medical"
    assert follow_up.json()["adapter"] == "medical"
    assert follow_up.json()["sticky"] is True
    assert follow_up.headers["x-router-adapter"] == "medical"
    assert without_session.json()["fallback_reason"] == "no_text"


def test_chat_completion_uses_session(gateway):
    route(
        gateway, [{"role": "user", "content": "Write a SQL query that counts orders per customer"}], "conv-7"
    )

    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={"model": "auto", "messages": [{"role": "user", "content": [IMAGE]}], "max_tokens": 2},
        headers={"x-session-id": "conv-7"},
        timeout=60,
    )

    assert response.status_code == 200
    assert response.headers["x-router-adapter"] == "sql"
    assert response.json()["model"] == "sql"
