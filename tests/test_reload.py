"""Reloads of a running gateway (SIGHUP, ``POST /admin/reload``, rejected reloads, reloads under
load) and ``adapter-router install-adapter``.

One real gateway process serves the module: the embedded backend on a copy of the demo model,
and a router loaded from an artifact folder written from ``default_router``. Tests that change
the config or files use the ``restored`` fixture, which puts the original config and files
back and reloads after the test.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from conftest import ADAPTERS, BASE_MODEL, DEFAULT_MAX_TOKENS, MAX_TOKENS_LIMIT, start_gateway
from server_process import ADAPTER_ROUTER, REPO, ServerProcess

from classifier import DomainRouter, save_router
from router.app import create_app
from router.backends.upstream import UpstreamBackend
from router.config import ConfigError, ServerSettings, UpstreamBackendSettings
from router.gateway import Gateway
from router.routing import RoutingService

API_KEY = "reload-test-api-key"
ADMIN_KEY = "reload-test-admin-key"
MATH_PROMPT = "What is the derivative of x squared?"
CODE_PROMPT = "Write a Python function that reverses a linked list"
RELOAD_TIMEOUT_SECONDS = 300
"""Maximum wait for one reload, in seconds: a reload loads the embedding model again on a machine
that may be busy."""
RELOAD_LINE = re.compile(r"reload \d+ \((?P<trigger>[^)]*)\) (?P<outcome>finished|failed)")
IN_FLIGHT_AT_SWAP = re.compile(
    r"reload \d+ \([^)]*\) finished .* (?P<count>\d+) requests in flight finish on"
)

LOAD_REQUESTS = 300
"""Minimum number of requests of the load test. It keeps sending while reloads run, up to the maximum."""
MAX_LOAD_REQUESTS = 900
LOAD_CONCURRENCY = 30
LOAD_TIMEOUT_SECONDS = 600


@dataclass
class ReloadSetup:
    """The module's gateway and the files it was started from."""

    folder: Path
    config_file: Path
    artifact: Path
    artifact_backup: Path
    model: Path
    model_backup: Path
    server: ServerProcess = field(init=False)

    def base_config(self) -> dict[str, Any]:
        return {
            "router": {
                "artifact": str(self.artifact),
                "confidence_threshold": 0.5,
                "out_of_domain_threshold": 0.2,
            },
            "adapters": {adapter: adapter for adapter in ADAPTERS},
            "backend": {
                "type": "embedded",
                "model": str(self.model),
                "base_model_name": BASE_MODEL,
                "max_tokens": DEFAULT_MAX_TOKENS,
                "max_tokens_limit": MAX_TOKENS_LIMIT,
            },
            "server": {"api_keys": [API_KEY], "admin_api_keys": [ADMIN_KEY]},
        }

    def write_config(self, change: Callable[[dict[str, Any]], None] | None = None) -> None:
        """Write the base config, changed by ``change``, to the file the gateway reloads."""
        config = copy.deepcopy(self.base_config())
        if change is not None:
            change(config)
        self.config_file.write_text(yaml.safe_dump(config), encoding="utf-8")


def api_headers(key: str = API_KEY) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def replace_by_rename(source: Path, target: Path) -> None:
    """Put a copy of ``source`` at ``target`` by rename: the gateway memory-maps adapter files."""
    temporary = target.with_name(f".{target.name}.test.tmp")
    shutil.copyfile(source, temporary)
    os.replace(temporary, target)


def reload_lines(server: ServerProcess) -> list[re.Match[str]]:
    return list(RELOAD_LINE.finditer(server.log(max_chars=10_000_000)))


def admin_reload(setup: ReloadSetup, key: str | None = ADMIN_KEY) -> httpx.Response:
    headers = {} if key is None else api_headers(key)
    return httpx.post(setup.server.url + "/admin/reload", headers=headers, timeout=RELOAD_TIMEOUT_SECONDS)


def sighup_reload(setup: ReloadSetup) -> str:
    """Send SIGHUP and return the outcome the log reports: ``finished`` or ``failed``."""
    before = len(reload_lines(setup.server))
    assert setup.server.process is not None
    setup.server.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + RELOAD_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        lines = reload_lines(setup.server)
        if len(lines) > before:
            assert lines[before]["trigger"] == "SIGHUP"
            return lines[before]["outcome"]
        time.sleep(0.2)
    raise AssertionError(f"no reload ended within {RELOAD_TIMEOUT_SECONDS} s of SIGHUP")


def route(setup: ReloadSetup, text: str) -> dict[str, Any]:
    response = httpx.post(
        setup.server.url + "/v1/route", json={"text": text}, headers=api_headers(), timeout=60
    )
    assert response.status_code == 200, response.text
    return response.json()


def generate(setup: ReloadSetup, model: str, prompt: str = MATH_PROMPT) -> httpx.Response:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 8,
        "temperature": 0,
    }
    return httpx.post(setup.server.url + "/v1/chat/completions", json=body, headers=api_headers(), timeout=60)


def assert_openai_error(response: httpx.Response, status: int, code: str) -> str:
    error = response.json()["error"]
    assert response.status_code == status
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    return error["message"]


@pytest.fixture(scope="module")
def reload_setup(
    tmp_path_factory: pytest.TempPathFactory, demo_model: Path, default_router: DomainRouter
) -> Iterator[ReloadSetup]:
    """The module's gateway: embedded backend on a model copy, router from an artifact folder."""
    folder = tmp_path_factory.mktemp("gateway-reload")
    model = folder / "model"
    shutil.copytree(demo_model, model)
    model_backup = folder / "model-backup"
    shutil.copytree(demo_model, model_backup)
    artifact = save_router(default_router, folder / "artifact")
    artifact_backup = folder / "artifact-backup"
    shutil.copytree(artifact, artifact_backup)

    config_file = folder / "config.yaml"
    setup = ReloadSetup(folder, config_file, artifact, artifact_backup, model, model_backup)
    setup.write_config()
    setup.server = start_gateway("gateway (reload)", folder, config_file)
    yield setup
    setup.server.stop()


@pytest.fixture
def restored(reload_setup: ReloadSetup) -> Iterator[ReloadSetup]:
    """The module's gateway; afterwards its original config and files are back and reloaded."""
    yield reload_setup

    for backup in reload_setup.artifact_backup.iterdir():
        shutil.copyfile(backup, reload_setup.artifact / backup.name)
    for backup in sorted((reload_setup.model_backup / "adapters").iterdir()):
        current = reload_setup.model / "adapters" / backup.name
        if sha256(current) != sha256(backup):
            replace_by_rename(backup, current)
    shutil.copyfile(reload_setup.model_backup / "SHA256SUMS", reload_setup.model / "SHA256SUMS")
    reload_setup.write_config()
    response = admin_reload(reload_setup)
    assert response.status_code == 200, response.text


# Triggers


def test_sighup_applies_new_threshold(restored):
    before = route(restored, MATH_PROMPT)
    assert before["model"] == "math"
    assert before["confidence"] < 1.0

    restored.write_config(lambda config: config["router"].update(confidence_threshold=1.0))

    assert sighup_reload(restored) == "finished"
    after = route(restored, MATH_PROMPT)
    assert after["domain"] == "math"
    assert after["model"] == BASE_MODEL
    assert after["fallback_reason"] == "low_confidence"


def test_sighup_applies_new_adapter_map(restored):
    restored.write_config(lambda config: config["adapters"].update(math="code"))

    assert sighup_reload(restored) == "finished"
    decision = route(restored, MATH_PROMPT)
    assert decision["domain"] == "math"
    assert decision["model"] == "code"
    models = httpx.get(restored.server.url + "/v1/models", headers=api_headers(), timeout=30).json()
    assert "math" not in [model["id"] for model in models["data"]]
    assert_openai_error(generate(restored, "math"), 404, "model_not_found")
    assert generate(restored, "auto").headers["x-router-adapter"] == "code"


def test_admin_reload_reports_changed_keys(restored):
    restored.write_config(lambda config: config["router"].update(confidence_threshold=0.6))

    first = admin_reload(restored)
    second = admin_reload(restored)

    assert first.status_code == 200
    assert first.json()["status"] == "reloaded"
    assert first.json()["changed"] == ["router.confidence_threshold"]
    assert first.json()["config"] == str(restored.config_file)
    assert second.status_code == 200
    assert second.json()["status"] == "unchanged"
    assert second.json()["changed"] == []
    assert second.json()["generation"] == first.json()["generation"]


@pytest.mark.parametrize("key", [None, "wrong-admin-key", API_KEY], ids=["no key", "wrong key", "API key"])
def test_admin_reload_rejects_non_admin_keys(reload_setup, key):
    lines_before = len(reload_lines(reload_setup.server))

    response = admin_reload(reload_setup, key=key)

    assert_openai_error(response, 401, "invalid_api_key")
    assert response.headers["x-request-id"]
    assert len(reload_lines(reload_setup.server)) == lines_before


def test_admin_key_is_not_an_api_key(reload_setup):
    response = httpx.post(
        reload_setup.server.url + "/v1/route",
        json={"text": MATH_PROMPT},
        headers=api_headers(ADMIN_KEY),
        timeout=30,
    )

    assert_openai_error(response, 401, "invalid_api_key")


def in_process_gateway(default_router: DomainRouter, server: ServerSettings) -> Gateway:
    """A gateway around the session's router; its upstream is never contacted."""
    routing = RoutingService(
        default_router, {adapter: adapter for adapter in ADAPTERS}, base_model=BASE_MODEL
    )
    upstream = UpstreamBackend(
        UpstreamBackendSettings(type="upstream", url="http://127.0.0.1:9/v1", base_model_name=BASE_MODEL)
    )
    return Gateway(routing, upstream, server=server)


def test_admin_reload_without_admin_keys_is_not_found(default_router, monkeypatch):
    monkeypatch.delenv("ADAPTER_ROUTER_ADMIN_KEYS", raising=False)
    app = create_app(in_process_gateway(default_router, ServerSettings(api_keys=[API_KEY])))

    async def post() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            return await client.post("/admin/reload", headers=api_headers(ADMIN_KEY))

    response = asyncio.run(post())

    message = assert_openai_error(response, 404, "not_found")
    assert "server.admin_api_keys" in message


def test_admin_key_equal_to_api_key_stops_start(default_router, monkeypatch):
    monkeypatch.setenv("ADAPTER_ROUTER_ADMIN_KEYS", API_KEY)

    with pytest.raises(ConfigError, match="is also an API key"):
        create_app(in_process_gateway(default_router, ServerSettings(api_keys=[API_KEY])))


# Rejected reloads


def corrupt_artifact(setup: ReloadSetup) -> None:
    (setup.artifact / "router.json").write_text("{ not json", encoding="utf-8")


def unknown_key(setup: ReloadSetup) -> None:
    setup.write_config(lambda config: config["router"].update(thresold=0.7))


def missing_adapter_file(setup: ReloadSetup) -> None:
    missing = str(setup.folder / "missing.onnx_adapter")
    setup.write_config(lambda config: config["backend"].update(adapter_files={"math": missing}))


def pinned_sha256_mismatch(setup: ReloadSetup) -> None:
    setup.write_config(lambda config: config["backend"].update(adapter_sha256={"math": "0" * 64}))


def checksums_file_mismatch(setup: ReloadSetup) -> None:
    adapters = setup.model / "adapters"
    replace_by_rename(adapters / "finance.onnx_adapter", adapters / "math.onnx_adapter")


def restart_only_key(setup: ReloadSetup) -> None:
    setup.write_config(lambda config: config["server"].update(max_messages=7))


BAD_RELOADS = [
    (corrupt_artifact, "router.json: invalid JSON"),
    (unknown_key, "unknown key router.thresold"),
    (missing_adapter_file, "backend.adapter_files.math: adapter file not found"),
    (pinned_sha256_mismatch, "backend.adapter_sha256.math: adapter file"),
    (checksums_file_mismatch, "SHA256SUMS lists"),
    (restart_only_key, "server.max_messages: changed in"),
]


@pytest.mark.parametrize(
    ("break_setup", "reason"), BAD_RELOADS, ids=[case.__name__ for case, _ in BAD_RELOADS]
)
def test_rejected_reload_keeps_old_state(restored, break_setup, reason):
    before = route(restored, MATH_PROMPT)
    # The probe is the code adapter, whose file no case touches: the embedded backend stops
    # serving an adapter whose file changed since it was loaded, as the math file does in one case.
    code_before = generate(restored, "code")
    assert code_before.status_code == 200

    break_setup(restored)
    response = admin_reload(restored)

    message = assert_openai_error(response, 422, "invalid_config")
    assert reason in message
    assert "previous config keeps serving" in message
    error_lines = [line for line in restored.server.log().splitlines() if " ERROR router.reload: " in line]
    assert reason in error_lines[-1]
    after = route(restored, MATH_PROMPT)
    assert after["model"] == before["model"] == "math"
    assert after["confidence"] == before["confidence"]
    code_after = generate(restored, "code")
    assert code_after.status_code == 200
    assert code_after.headers["x-router-fallback"] == "none"
    assert code_after.json()["choices"][0]["message"] == code_before.json()["choices"][0]["message"]


def test_sighup_with_corrupt_artifact_keeps_old_router(restored):
    before = route(restored, MATH_PROMPT)
    restored.write_config(lambda config: config["router"].update(confidence_threshold=1.0))
    corrupt_artifact(restored)

    assert sighup_reload(restored) == "failed"
    error_lines = [line for line in restored.server.log().splitlines() if " ERROR router.reload: " in line]
    assert "reload" in error_lines[-1]
    assert "router.json: invalid JSON" in error_lines[-1]
    after = route(restored, MATH_PROMPT)
    assert after["model"] == before["model"] == "math"
    assert after["fallback_reason"] is None


# Reload under load


@dataclass
class LoadResult:
    """One request of the load test and what came back."""

    kind: str
    prompt: str
    status: int | None = None
    adapter: str | None = None
    request_id: str | None = None
    problem: str | None = None
    """Why the response is not one well-formed response, or ``None`` when it is one."""


async def send_one(client: httpx.AsyncClient, number: int) -> LoadResult:
    kind = ("route", "chat", "stream")[number % 3]
    prompt = MATH_PROMPT if number % 2 == 0 else CODE_PROMPT
    result = LoadResult(kind, prompt)
    messages = [{"role": "user", "content": prompt}]
    try:
        if kind == "route":
            response = await client.post("/v1/route", json={"text": prompt})
            body = response.json()
            if response.status_code == 200 and not isinstance(body.get("model"), str):
                result.problem = f"no model in the decision: {body}"
        elif kind == "chat":
            response = await client.post("/v1/chat/completions", json={"model": "auto", "messages": messages})
            body = response.json()
            if response.status_code == 200 and body.get("model") != response.headers.get("x-router-adapter"):
                result.problem = f"completion model {body.get('model')} is not the routed adapter"
        else:
            chunks = []
            request = {"model": "auto", "messages": messages, "stream": True}
            async with client.stream("POST", "/v1/chat/completions", json=request) as response:
                async for line in response.aiter_lines():
                    if line.startswith("data: "):
                        chunks.append(line.removeprefix("data: "))
            if response.status_code == 200:
                result.problem = stream_problem(chunks)
        result.status = response.status_code
        result.adapter = response.headers.get("x-router-adapter")
        result.request_id = response.headers.get("x-request-id")
        if response.status_code != 200 and result.problem is None:
            result.problem = f"HTTP {response.status_code}"
    except (httpx.HTTPError, ValueError) as error:
        result.problem = f"{type(error).__name__}: {error}"
    return result


def stream_problem(chunks: list[str]) -> str | None:
    """Return why a stream is not one complete response, or ``None``."""
    if chunks.count("[DONE]") != 1 or chunks[-1] != "[DONE]":
        return f"the stream does not end with exactly one [DONE]: {chunks[-3:]}"
    events = [json.loads(chunk) for chunk in chunks[:-1]]
    if any("error" in event for event in events):
        return f"the stream has an error event: {events}"
    if not events or events[-1]["choices"][-1].get("finish_reason") is None:
        return "the stream has no finish_reason"
    return None


async def reload_under_load(setup: ReloadSetup) -> tuple[list[LoadResult], list[str]]:
    """Send requests at ``LOAD_CONCURRENCY`` while the gateway reloads three times.

    Return every request's result and each reload's outcome.
    """
    changes: list[Callable[[dict[str, Any]], None] | None] = [
        lambda config: config["adapters"].update(math="code"),
        None,
        lambda config: config["adapters"].update(math="code"),
    ]
    results: list[LoadResult] = []
    outcomes: list[str] = []
    reloads_done = asyncio.Event()
    issued = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal issued
        while issued < MAX_LOAD_REQUESTS and (issued < LOAD_REQUESTS or not reloads_done.is_set()):
            issued += 1
            results.append(await send_one(client, issued))

    async def reloads(client: httpx.AsyncClient) -> None:
        while len(results) < LOAD_CONCURRENCY:  # the load is running before the first reload
            await asyncio.sleep(0.05)
        for number, change in enumerate(changes):
            setup.write_config(change)
            if number == 1:
                outcomes.append(await asyncio.to_thread(sighup_reload, setup))
                continue
            response = await client.post("/admin/reload", headers=api_headers(ADMIN_KEY))
            outcomes.append("finished" if response.status_code == 200 else response.text)
        reloads_done.set()

    limits = httpx.Limits(max_connections=LOAD_CONCURRENCY + 1)
    async with httpx.AsyncClient(
        base_url=setup.server.url, headers=api_headers(), timeout=120, limits=limits
    ) as client:
        admin = httpx.AsyncClient(base_url=setup.server.url, timeout=RELOAD_TIMEOUT_SECONDS)
        async with admin:
            await asyncio.wait_for(
                asyncio.gather(reloads(admin), *(worker(client) for _ in range(LOAD_CONCURRENCY))),
                timeout=LOAD_TIMEOUT_SECONDS,
            )
    return results, outcomes


def test_reload_under_load_loses_no_request(restored):
    log_before = len(restored.server.log(max_chars=10_000_000))

    results, outcomes = asyncio.run(reload_under_load(restored))

    assert outcomes == ["finished", "finished", "finished"]
    assert LOAD_REQUESTS <= len(results) <= MAX_LOAD_REQUESTS
    assert [result for result in results if result.problem is not None] == []
    assert len({result.request_id for result in results}) == len(results)
    math_adapters = {result.adapter for result in results if result.prompt == MATH_PROMPT}
    assert math_adapters == {"math", "code"}  # requests were served before and after the swaps
    new_log = restored.server.log(max_chars=10_000_000)[log_before:]
    in_flight_at_swaps = [int(match["count"]) for match in IN_FLIGHT_AT_SWAP.finditer(new_log)]
    assert len(in_flight_at_swaps) == 3
    assert sum(in_flight_at_swaps) > 0  # some requests finished on a state already replaced
    assert "Traceback" not in new_log
    # Each reload loaded the adapters again; a replaced backend closes after its last request.
    closed = "closed the backend replaced by a reload"
    deadline = time.monotonic() + 30
    while new_log.count(closed) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
        new_log = restored.server.log(max_chars=10_000_000)[log_before:]
    assert new_log.count(closed) == 3


# install-adapter


def install_adapter(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ADAPTER_ROUTER, "install-adapter", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


def leftover_temporary_files(folder: Path) -> list[str]:
    return [path.name for path in folder.iterdir() if path.name.endswith(".tmp")]


def test_install_adapter_replaces_file_by_rename(restored):
    adapters = restored.model / "adapters"
    target = adapters / "math.onnx_adapter"
    source = restored.model_backup / "adapters" / "finance.onnx_adapter"
    inode_before = target.stat().st_ino
    finance_text = generate(restored, "finance").json()["choices"][0]["message"]["content"]
    assert generate(restored, "math").json()["choices"][0]["message"]["content"] != finance_text

    completed = install_adapter(
        str(source), "--model", str(restored.model), "--name", "math", "--sha256", sha256(source)
    )

    assert completed.returncode == 0, completed.stderr
    assert target.stat().st_ino != inode_before
    assert target.read_bytes() == source.read_bytes()
    assert f"{sha256(source)}  adapters/math.onnx_adapter" in (restored.model / "SHA256SUMS").read_text()
    assert leftover_temporary_files(adapters) == []
    response = admin_reload(restored)
    assert response.status_code == 200, response.text
    assert response.json()["changed"] == ["adapter file math"]
    assert generate(restored, "math").json()["choices"][0]["message"]["content"] == finance_text


def test_install_adapter_rejects_wrong_sha256(restored):
    adapters = restored.model / "adapters"
    target = adapters / "math.onnx_adapter"
    source = restored.model_backup / "adapters" / "finance.onnx_adapter"
    inode_before = target.stat().st_ino
    content_before = target.read_bytes()

    completed = install_adapter(
        str(source), "--model", str(restored.model), "--name", "math", "--sha256", "ab" * 32
    )

    assert completed.returncode == 2
    assert completed.stdout == ""
    assert completed.stderr.count("\n") == 1
    assert completed.stderr.startswith(f"adapter-router: error: {source} has sha256 {sha256(source)}")
    assert "ab" * 32 in completed.stderr
    assert target.stat().st_ino == inode_before
    assert target.read_bytes() == content_before
    assert leftover_temporary_files(adapters) == []
