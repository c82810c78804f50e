"""``adapter-router serve-model``: the demo model alone as an OpenAI-compatible server."""

from __future__ import annotations

import signal
import subprocess

import httpx
import openai
import pytest
from conftest import ADAPTERS, BASE_MODEL, start_model_server
from openai import OpenAI
from server_process import ADAPTER_ROUTER

MATH_PROMPT = "Solve for x: 3x + 5 = 20"


def sdk(server) -> OpenAI:
    return OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)


def test_models_lists_base_and_adapters(model_server):
    models = sdk(model_server).models.list().data

    assert [model.id for model in models] == [BASE_MODEL, *ADAPTERS]
    assert [model.parent for model in models] == [None] + [BASE_MODEL] * len(ADAPTERS)


def test_model_name_selects_adapter(model_server):
    client = sdk(model_server)
    messages = [{"role": "user", "content": MATH_PROMPT}]

    outputs = {
        model: client.chat.completions.create(model=model, messages=messages, max_tokens=10, temperature=0)
        for model in (BASE_MODEL, "math")
    }

    assert outputs["math"].model == "math"
    assert outputs[BASE_MODEL].model == BASE_MODEL
    assert outputs["math"].choices[0].message.content != outputs[BASE_MODEL].choices[0].message.content


def test_no_router_headers(model_server):
    response = httpx.post(
        f"{model_server.url}/v1/chat/completions",
        json={"model": "math", "messages": [{"role": "user", "content": MATH_PROMPT}], "max_tokens": 2},
    )

    assert response.status_code == 200
    assert response.headers["x-request-id"]
    assert not [name for name in response.headers if name.startswith("x-router-")]


def test_unknown_model_is_404(model_server):
    with pytest.raises(openai.NotFoundError) as caught:
        sdk(model_server).completions.create(model="auto", prompt="hello")

    assert caught.value.code == "model_not_found"
    assert caught.value.param == "model"


def test_completion_stream(model_server):
    chunks = list(
        sdk(model_server).completions.create(model="sql", prompt="SELECT", max_tokens=4, stream=True)
    )

    assert {chunk.model for chunk in chunks} == {"sql"}
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_seed_makes_sampling_repeatable(model_server):
    client = sdk(model_server)

    def sample(seed: int) -> str:
        completion = client.completions.create(
            model="math", prompt="The answer is", max_tokens=12, temperature=1.0, seed=seed
        )
        return completion.choices[0].text

    assert sample(7) == sample(7)
    assert len({sample(seed) for seed in range(1, 5)}) > 1


def test_stop_sequence_cuts_completion(model_server):
    client = sdk(model_server)
    full = (
        client.completions.create(model="math", prompt=MATH_PROMPT, max_tokens=16, temperature=0)
        .choices[0]
        .text
    )
    stop = full[len(full) // 2 : len(full) // 2 + 2]

    cut = client.completions.create(
        model="math", prompt=MATH_PROMPT, max_tokens=16, temperature=0, stop=[stop]
    )

    assert cut.choices[0].text == full[: full.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_shuts_down_cleanly(tmp_path, demo_model, stop_signal):
    server = start_model_server(tmp_path, demo_model)

    status = server.stop(stop_signal)

    assert status == 0, server.log()
    assert "model server stopped" in server.log()
    assert f"model server stopped by {stop_signal.name}" in server.log()
    assert "Traceback" not in server.log()


def test_missing_model_folder_is_one_line_error(tmp_path):
    result = subprocess.run(
        [ADAPTER_ROUTER, "serve-model", "--model", str(tmp_path / "absent"), "--port", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"adapter-router: error: model folder not found: {tmp_path / 'absent'}: pass a folder exported "
        "by the onnxruntime-genai model builder to --model"
    )
