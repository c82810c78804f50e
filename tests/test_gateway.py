"""The gateway end to end through the official openai SDK, with each backend in turn.

``any_gateway`` runs every test against the gateway with the embedded backend and against the
gateway that forwards to a real ``adapter-router serve-model`` process.
"""

from __future__ import annotations

import httpx
import openai
import pytest
from conftest import ADAPTERS, BASE_MODEL, DEFAULT_MAX_TOKENS, MAX_TOKENS_LIMIT
from openai import OpenAI
from server_process import ServerProcess

MATH_PROMPT = "Solve for x: 3x + 5 = 20"
SQL_PROMPT = "Write a SQL query that returns the ten customers with the most orders"
CHIT_CHAT = "hi, how are you today?"
FALLBACK_REASONS = {"fallback_domain", "low_confidence", "out_of_domain"}


def sdk(server: ServerProcess) -> OpenAI:
    return OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.mark.parametrize(("prompt", "adapter"), [(MATH_PROMPT, "math"), (SQL_PROMPT, "sql")])
def test_prompt_routes_to_its_adapter(any_gateway, prompt, adapter):
    raw = sdk(any_gateway).chat.completions.with_raw_response.create(
        model="auto", messages=user(prompt), max_tokens=4, temperature=0
    )
    completion = raw.parse()

    assert raw.headers["x-router-adapter"] == adapter
    assert raw.headers["x-router-domain"] == adapter
    assert raw.headers["x-router-fallback"] == "none"
    assert float(raw.headers["x-router-confidence"]) >= 0.5
    assert raw.headers["x-request-id"]
    assert completion.model == adapter
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content
    assert completion.usage.prompt_tokens > 0
    assert 1 <= completion.usage.completion_tokens <= 4


def test_chit_chat_falls_back_to_base_model(any_gateway):
    raw = sdk(any_gateway).chat.completions.with_raw_response.create(
        model="auto", messages=user(CHIT_CHAT), max_tokens=4, temperature=0
    )

    assert raw.headers["x-router-adapter"] == BASE_MODEL
    assert raw.headers["x-router-fallback"] in FALLBACK_REASONS
    assert raw.parse().model == BASE_MODEL


def test_named_adapter_is_forced(any_gateway):
    raw = sdk(any_gateway).chat.completions.with_raw_response.create(
        model="legal", messages=user(MATH_PROMPT), max_tokens=4, temperature=0
    )

    assert raw.headers["x-router-adapter"] == "legal"
    assert raw.headers["x-router-domain"] == "none"
    assert raw.headers["x-router-confidence"] == "none"
    assert raw.headers["x-router-fallback"] == "none"
    assert raw.parse().model == "legal"


def test_base_model_name_is_forced(any_gateway):
    raw = sdk(any_gateway).chat.completions.with_raw_response.create(
        model=BASE_MODEL, messages=user(MATH_PROMPT), max_tokens=4, temperature=0
    )

    assert raw.headers["x-router-adapter"] == BASE_MODEL
    assert raw.headers["x-router-fallback"] == "explicit_model"
    assert raw.parse().model == BASE_MODEL


def test_adapter_changes_generated_text(any_gateway):
    client = sdk(any_gateway)
    outputs = {
        model: client.chat.completions.create(
            model=model, messages=user(MATH_PROMPT), max_tokens=12, temperature=0
        )
        .choices[0]
        .message.content
        for model in (BASE_MODEL, "math", "sql")
    }

    assert outputs["math"] != outputs[BASE_MODEL]
    assert outputs["sql"] != outputs[BASE_MODEL]
    assert outputs["math"] != outputs["sql"]


def test_unknown_model_is_404(any_gateway):
    with pytest.raises(openai.NotFoundError) as caught:
        sdk(any_gateway).chat.completions.create(model="gpt-nope", messages=user(MATH_PROMPT))

    assert caught.value.status_code == 404
    assert caught.value.code == "model_not_found"
    assert caught.value.param == "model"
    assert "gpt-nope" in caught.value.message


def test_stream_chunks_name_the_adapter(any_gateway):
    client = sdk(any_gateway)
    raw = client.chat.completions.with_raw_response.create(
        model="auto",
        messages=user(MATH_PROMPT),
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(raw.parse())
    whole = client.chat.completions.create(
        model="auto", messages=user(MATH_PROMPT), max_tokens=8, temperature=0
    )

    assert raw.headers["x-router-adapter"] == "math"
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert len(chunks) >= 3
    assert [chunk.model for chunk in chunks] == ["math"] * len(chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == whole.choices[0].message.content
    finish_reasons = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices]
    assert finish_reasons[-1] == whole.choices[0].finish_reason
    assert set(finish_reasons[:-1]) == {None}
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_max_tokens_limits_completion(any_gateway):
    completion = sdk(any_gateway).chat.completions.create(
        model="math", messages=user(MATH_PROMPT), max_tokens=3, temperature=0
    )

    assert completion.usage.completion_tokens == 3
    assert completion.choices[0].finish_reason == "length"


def test_embedded_default_max_tokens_applies(gateway):
    completion = sdk(gateway).chat.completions.create(model="math", messages=user(MATH_PROMPT), temperature=0)

    assert completion.usage.completion_tokens == DEFAULT_MAX_TOKENS
    assert completion.choices[0].finish_reason == "length"


def test_embedded_max_tokens_capped_at_limit(gateway):
    completion = sdk(gateway).chat.completions.create(
        model="math", messages=user(MATH_PROMPT), max_tokens=200, temperature=0
    )

    assert completion.usage.completion_tokens == MAX_TOKENS_LIMIT
    assert completion.choices[0].finish_reason == "length"


def test_completions_endpoint_routes_prompt(any_gateway):
    raw = sdk(any_gateway).completions.with_raw_response.create(
        model="auto", prompt=MATH_PROMPT, max_tokens=5, temperature=0
    )
    completion = raw.parse()

    assert raw.headers["x-router-adapter"] == "math"
    assert completion.object == "text_completion"
    assert completion.model == "math"
    assert completion.choices[0].text
    assert completion.choices[0].finish_reason in ("stop", "length")
    assert 1 <= completion.usage.completion_tokens <= 5


def test_completions_stream_chunks_name_the_adapter(any_gateway):
    raw = sdk(any_gateway).completions.with_raw_response.create(
        model="auto", prompt=SQL_PROMPT, max_tokens=5, temperature=0, stream=True
    )
    chunks = list(raw.parse())

    assert raw.headers["x-router-adapter"] == "sql"
    assert chunks
    assert {chunk.model for chunk in chunks} == {"sql"}
    assert "".join(chunk.choices[0].text for chunk in chunks)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_models_lists_alias_base_and_adapters(any_gateway):
    models = sdk(any_gateway).models.list()

    assert [model.id for model in models.data] == ["auto", BASE_MODEL, *ADAPTERS]


def test_route_endpoint_reports_decision(any_gateway):
    response = httpx.post(f"{any_gateway.url}/v1/route", json={"messages": user(MATH_PROMPT)})
    decision = response.json()

    assert response.status_code == 200
    assert response.headers["x-router-adapter"] == "math"
    assert decision["model"] == "math"
    assert decision["adapter"] == "math"
    assert decision["domain"] == "math"
    assert decision["fallback"] is False
    assert decision["fallback_reason"] is None
    assert decision["confidence"] >= 0.5
    assert decision["confidence"] == pytest.approx(float(response.headers["x-router-confidence"]), abs=1e-4)
    assert set(decision["scores"]) == {*ADAPTERS, "general"}
    assert max(decision["scores"], key=decision["scores"].get) == "math"
    assert decision["nearest"]
    assert decision["nearest"][0]["domain"] == "math"
    assert -1 <= decision["similarity"] <= 1
    assert decision["routing_ms"] > 0


@pytest.mark.parametrize(
    ("body", "model", "reason"),
    [
        ({"text": CHIT_CHAT}, BASE_MODEL, FALLBACK_REASONS),
        ({"prompt": SQL_PROMPT}, "sql", {None}),
        ({"text": MATH_PROMPT, "model": "code"}, "code", {None}),
        ({"text": MATH_PROMPT, "model": BASE_MODEL}, BASE_MODEL, {"explicit_model"}),
        ({"text": "   "}, BASE_MODEL, {"no_text"}),
    ],
)
def test_route_endpoint_accepts_text_and_prompt(any_gateway, body, model, reason):
    decision = httpx.post(f"{any_gateway.url}/v1/route", json=body).json()

    assert decision["model"] == model
    assert decision["fallback_reason"] in reason


def test_route_endpoint_matches_proxy_decision(any_gateway):
    decision = httpx.post(f"{any_gateway.url}/v1/route", json={"text": SQL_PROMPT}).json()
    raw = sdk(any_gateway).chat.completions.with_raw_response.create(
        model="auto", messages=user(SQL_PROMPT), max_tokens=1
    )

    assert raw.headers["x-router-adapter"] == decision["model"]
    assert raw.headers["x-router-confidence"] == f"{decision['confidence']:.4f}"


def test_client_request_id_is_echoed(any_gateway):
    response = httpx.get(f"{any_gateway.url}/v1/models", headers={"x-request-id": "test-42"})

    assert response.headers["x-request-id"] == "test-42"


def test_health(any_gateway):
    response = httpx.get(f"{any_gateway.url}/health")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_ready_with_embedded_backend(gateway):
    response = httpx.get(f"{gateway.url}/ready", timeout=30)

    assert response.status_code == 200
    assert response.json() == {"status": "ready", "problems": [], "start_problems": None}
