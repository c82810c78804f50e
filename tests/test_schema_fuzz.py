"""Schema-based fuzzing: requests generated from the gateway's own OpenAPI schema get no HTTP 5xx.

schemathesis reads ``/openapi.json`` of the session's embedded gateway (a real process on
127.0.0.1) and generates requests for every ``/v1/`` operation: bodies that fit the documented
request schemas, and bodies that break them. Only the ``not_a_server_error`` check runs: the
schema documents the request bodies but not every response, so the conformance checks would
test the schema rather than the gateway. Examples per operation are bounded, and hypothesis
keeps no example database, so each run sends a fresh, bounded set.

schemathesis' pytest loader (``schemathesis.pytest.from_fixture``) fails on pytest 9 (it sets
``Item._nodeid``), so the tests drive its hypothesis strategies directly.
"""

from __future__ import annotations

import json

import httpx
import pytest
import schemathesis
from conftest import BASE_MODEL
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from server_process import ServerProcess

EXAMPLES_PER_OPERATION = 40
"""Generated requests per operation and mode: the whole run stays well under a minute."""
MODELS = ["auto", BASE_MODEL, "math"]
"""``model`` values steered into three in four generated bodies. The schema allows any string, and
random strings only reach the 404 for an unknown model, never routing or generation."""
CONVERSATIONS = st.lists(
    st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant"]), "content": st.text()}),
    min_size=1,
    max_size=4,
)
"""Valid conversations with generated text, steered into half of the bodies with ``messages``. The
schema cannot express rules such as "a tool message needs content", so nearly every generated
conversation is rejected with HTTP 400 before it reaches routing or generation."""
OPERATIONS = [
    ("POST", "/v1/chat/completions", "positive"),
    ("POST", "/v1/chat/completions", "negative"),
    ("POST", "/v1/completions", "positive"),
    ("POST", "/v1/completions", "negative"),
    ("POST", "/v1/route", "positive"),
    ("POST", "/v1/route", "negative"),
    ("GET", "/v1/models", "positive"),
]


@pytest.fixture(scope="module")
def gateway_schema(gateway: ServerProcess) -> schemathesis.BaseSchema:
    """The OpenAPI schema of the embedded gateway, limited to its ``/v1/`` operations."""
    return schemathesis.openapi.from_url(f"{gateway.url}/openapi.json").include(path_regex="^/v1/")


def test_schema_documents_request_bodies(gateway):
    paths = httpx.get(f"{gateway.url}/openapi.json", timeout=30).json()["paths"]

    for path in ("/v1/chat/completions", "/v1/completions", "/v1/route"):
        body = paths[path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body["type"] == "object", path
        assert "$ref" not in str(body), path
    chat = paths["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert chat["required"] == ["model", "messages"]
    assert chat["properties"]["messages"]["items"]["properties"]["role"]["enum"][:3] == [
        "system",
        "developer",
        "user",
    ]


def steered(case: schemathesis.Case, model: str | None, messages: list[dict] | None) -> schemathesis.Case:
    """Return ``case`` with ``model`` and ``messages`` replaced by the given values, where not ``None``."""
    if not isinstance(case.body, dict):
        return case
    if model is not None:
        case.body = {**case.body, "model": model}
    if messages is not None and "messages" in case.body:
        case.body = {**case.body, "messages": messages}
    return case


@pytest.mark.parametrize(("method", "path", "mode"), OPERATIONS)
def test_generated_requests_get_no_server_error(gateway_schema, method, path, mode):
    operation = gateway_schema[path][method]
    cases = st.builds(
        steered,
        operation.as_strategy(generation_mode=schemathesis.GenerationMode(mode)),
        st.sampled_from([*MODELS, None]),
        st.one_of(st.none(), CONVERSATIONS),
    )

    @given(case=cases)
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def check(case: schemathesis.Case) -> None:
        case.call_and_validate(checks=[not_a_server_error], timeout=30)

    check()


@pytest.mark.parametrize("past_vocabulary", [0, 2**31, 2**40])
def test_unknown_token_id_is_400(gateway, demo_model, past_vocabulary):
    # Found while fuzzing: token ids outside the vocabulary failed in the model with HTTP 500.
    vocab_size = json.loads((demo_model / "genai_config.json").read_text())["model"]["vocab_size"]
    token = vocab_size + past_vocabulary
    response = httpx.post(
        f"{gateway.url}/v1/completions", json={"model": "auto", "prompt": [1, token]}, timeout=30
    )
    error = response.json()["error"]

    assert response.status_code == 400
    assert error["param"] == "prompt"
    assert f"token id {token}," in error["message"]
    assert f"from 0 to {vocab_size - 1}" in error["message"]
