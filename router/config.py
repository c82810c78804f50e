"""Gateway configuration: a YAML file validated into typed settings with safe defaults.

Relative paths in a config file resolve against the file's folder. ``data:NAME`` resolves to
the project's bundled data (``data:skills``, ``data:demo_model``).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    ValidationError,
    model_validator,
)

DEFAULT_CONFIG = "data:default.yaml"

Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-fA-F]{64}$", to_lower=True)]
"""A sha256 digest: 64 hexadecimal digits, stored in lower case."""


class ConfigError(ValueError):
    """The gateway configuration is missing or invalid; the message names the key and the fix."""


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BatchingSettings(_Settings):
    """Micro-batching of the routing embeddings of concurrent requests (``classifier/batching.py``).

    A worker thread takes the oldest waiting requests up to both bounds and embeds them in one
    call. Requests that arrive meanwhile form the next batch, so batches grow with load.
    """

    enabled: bool = True
    max_texts: Annotated[int, Field(ge=1, le=1024)] = 32
    """Maximum number of texts embedded in one batch."""
    max_word_pieces: Annotated[int, Field(ge=1)] = 8192
    """Maximum number of word pieces in one batch, estimated at four characters each."""
    max_wait_ms: Annotated[float, Field(ge=0, le=1000)] = 0.0
    """How long a batch that is not full waits for more requests; 0 adds no latency to a lone request."""
    max_concurrent_batches: Annotated[int, Field(ge=1, le=256)] | None = None
    """Maximum number of batches embedded at once; the number of CPUs when unset."""


class RouterSettings(_Settings):
    """How the router is obtained and where its thresholds sit.

    Give ``artifact`` (a folder written by ``adapter-router train``) or ``exemplars`` (a JSONL
    file or folder; the router is trained at start and cached by the exemplars' hash).
    Threshold fields left unset keep the artifact's values.
    """

    artifact: str | None = None
    exemplars: str | None = None
    embedding_model: str = "default"
    embedding_backend: Literal["pytorch", "onnx", "onnx-int8"] = "pytorch"
    """``pytorch`` runs sentence-transformers. ``onnx`` and ``onnx-int8`` run the same model exported
    to ONNX Runtime at first use and cached under ``cache_dir``. On a 2-vCPU VM they routed about 2x
    and 4x faster (docs/benchmarks.md)."""
    head: Literal["logistic", "knn"] = "logistic"
    confidence_threshold: Annotated[float, Field(ge=0, le=1)] | None = None
    domain_thresholds: dict[str, Annotated[float, Field(ge=0, le=1)]] = Field(default_factory=dict)
    out_of_domain_threshold: Annotated[float, Field(ge=-1, le=1)] | None = None
    cascade_threshold: Annotated[float, Field(ge=0, le=1)] | None = None
    """Confidence from which the static-embedding cascade decides a request alone. A router on
    static embeddings distilled from the embedding model (cached under ``cache_dir``) decides a
    request that it routes to a domain with at least this confidence. The embedding model
    classifies every other request. Unset
    (the default) routes every request with the embedding model. On the skills test split, 0.8
    kept accuracy within 0.03 points of the default while the static stage decided 62% of the
    prompts (docs/benchmarks.md)."""
    fallback_domains: list[str] = Field(default_factory=list)
    cache_dir: str = "~/.cache/adapter-router"
    batching: BatchingSettings = Field(default_factory=BatchingSettings)
    """Embed the routing texts of concurrent requests together."""

    @model_validator(mode="after")
    def _one_source(self) -> RouterSettings:
        if (self.artifact is None) == (self.exemplars is None):
            raise ValueError("set exactly one of router.artifact and router.exemplars")
        return self


class EmbeddedBackendSettings(_Settings):
    """An onnxruntime-genai model run in the gateway process, with its LoRA adapters."""

    type: Literal["embedded"] = "embedded"
    model: str
    """Folder of the exported model (genai_config.json, model.onnx, tokenizer)."""
    adapter_files: dict[str, str] = Field(default_factory=dict)
    """Adapter name to ``.onnx_adapter`` path; unset names use ``<model>/adapters/<name>.onnx_adapter``."""
    adapter_sha256: dict[str, Sha256Hex] = Field(default_factory=dict)
    """Adapter name to the sha256 digest its file must have, checked at start and on each reload.
    A ``SHA256SUMS`` file in the adapter's folder or in the model folder pins adapters too."""
    base_model_name: str = "base"
    """The name under which the model without adapters is served."""
    max_tokens: Annotated[int, Field(ge=1)] = 64
    """Default completion length in tokens when a request sets none."""
    max_tokens_limit: Annotated[int, Field(ge=1)] = 1024
    """Upper bound on a request's ``max_tokens``."""
    workers: Annotated[int, Field(ge=1, le=64)] = 2
    """Threads that run generation off the event loop."""
    adapter_unavailable: Literal["fallback", "error"] = "fallback"
    """Action when a routed adapter cannot be used: its file was removed or changed since it was
    loaded, or activating it failed. ``fallback`` serves the request on the base model, and
    ``error`` returns HTTP 503 ``adapter_unavailable``."""


class UpstreamBackendSettings(_Settings):
    """An OpenAI-compatible model server (vLLM, LoRAX, ``adapter-router serve-model``)."""

    type: Literal["upstream"]
    url: str
    """Base URL including ``/v1``, for example ``http://127.0.0.1:8001/v1``."""
    base_model_name: str
    """The upstream's name for the base model, sent as ``model`` when falling back."""
    adapter_field: Literal["model", "adapter_id"] = "model"
    """``model``: the adapter's served name goes in ``model`` (vLLM). ``adapter_id``: LoRAX."""
    api_key_env: str | None = None
    """Environment variable holding the upstream's API key, sent as a bearer token."""
    connect_timeout: Annotated[float, Field(gt=0)] = 5.0
    """Seconds to open a connection to the upstream."""
    read_timeout: Annotated[float, Field(gt=0)] = 300.0
    """Seconds to wait for the next bytes of a response (per chunk when streaming)."""
    max_connections: Annotated[int, Field(ge=1)] = 256
    """Maximum number of open keep-alive connections to the upstream; more requests wait for one."""
    connect_attempts: Annotated[int, Field(ge=1, le=20)] = 3
    """Maximum number of connection attempts for one request. Only a refused or timed-out
    connection is retried, because the upstream then received nothing. A request that was sent is
    never sent again."""
    retry_backoff: Annotated[float, Field(gt=0, le=60)] = 0.2
    """Seconds before the first connect retry. Each later wait doubles, up to ``retry_backoff_max``,
    and every wait is shortened by a random 0-50%."""
    retry_backoff_max: Annotated[float, Field(gt=0, le=600)] = 2.0
    """Maximum wait between two connect attempts, in seconds."""
    adapter_unavailable: Literal["fallback", "error"] = "fallback"
    """Action when the upstream cannot serve the routed adapter: HTTP 404 from vLLM (a model it does
    not serve), HTTP 424 from LoRAX (an ``adapter_id`` it cannot load). ``fallback`` serves the
    request on the base model, and ``error`` returns the upstream's error."""


class ConversationSettings(_Settings):
    """The parts of a conversation the router reads."""

    context_turns: Annotated[int, Field(ge=0, le=32)] = 3
    """Earlier human turns that can decide a follow-up the latest turn cannot decide alone; 0 disables."""
    context_threshold: Annotated[float, Field(ge=0, le=1)] = 0.8
    """Confidence from which the latest request decides alone; below it, earlier turns are added."""
    request_weight: Annotated[float, Field(gt=0, le=4)] = 0.5
    """Weight of an undecided latest request relative to the turn before it when turns are combined."""
    context_decay: Annotated[float, Field(gt=0, le=1)] = 0.5
    """Weight of each earlier turn relative to the next later one when turns are combined."""
    system_prompt: Literal["ignore", "context"] = "ignore"
    """``ignore``: the system prompt never affects routing (it is usually the same for every request).
    ``context``: it counts as the oldest context turn."""
    max_chunks: Annotated[int, Field(ge=1, le=64)] = 8
    """Most embedding windows per text; longer text is sampled evenly from start to end."""


class SessionSettings(_Settings):
    """Sticky sessions: a conversation keeps its adapter unless a new decision is clearly better."""

    enabled: bool = True
    header: str = "x-session-id"
    """Request header that carries the session id."""
    use_user_field: bool = False
    """Use the request's ``user`` field as the session id when the header is absent."""
    switch_margin: Annotated[float, Field(ge=0, le=1)] = 0.2
    """How much higher the new domain's score must be than the session domain's to switch."""
    max_sessions: Annotated[int, Field(ge=1)] = 100_000
    """Sessions kept in memory; the least recently used are dropped first."""
    ttl_seconds: Annotated[float, Field(gt=0)] = 3600.0
    """Seconds after its last request that a session is forgotten."""


class ServerSettings(_Settings):
    """HTTP server settings."""

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8000
    routing_alias: str = "auto"
    """The ``model`` value that requests routing."""
    max_body_bytes: Annotated[int, Field(ge=1024)] = 1_048_576
    """Largest accepted request body; larger bodies get HTTP 413."""
    log_prompts: bool = False
    """Log routing text with each decision. Off by default: prompts may hold personal data."""
    api_keys: list[SecretStr] = Field(default_factory=list)
    """Bearer API keys that clients must send; empty (and ``ADAPTER_ROUTER_API_KEYS`` unset) means open."""
    admin_api_keys: list[SecretStr] = Field(default_factory=list)
    """Bearer keys for the admin endpoints (``POST /admin/reload``). With none here and
    ``ADAPTER_ROUTER_ADMIN_KEYS`` unset, the admin endpoints return 404. API keys do not grant admin."""
    max_messages: Annotated[int, Field(ge=1)] = 1000
    """Maximum number of messages in one chat request; more get HTTP 400."""
    max_text_chars: Annotated[int, Field(ge=1)] = 500_000
    """Maximum characters of text (message contents, prompts) in one request; more get HTTP 400."""
    max_concurrent_requests: Annotated[int, Field(ge=1)] = 256
    """Maximum ``/v1/*`` requests served at once; one more gets HTTP 503 with ``Retry-After``."""
    retry_after_seconds: Annotated[int, Field(ge=1)] = 1
    """The ``Retry-After`` value, in seconds, sent with the 503 of the concurrency limit."""
    request_timeout: Annotated[float, Field(gt=0)] = 600.0
    """Seconds one ``/v1/*`` request may take in total, streaming included; then HTTP 504."""


class GatewayConfig(_Settings):
    """The whole gateway configuration file."""

    router: RouterSettings
    adapters: dict[str, str | None] = Field(default_factory=dict)
    """Domain to adapter name; ``null`` serves the domain with the base model."""
    backend: Annotated[EmbeddedBackendSettings | UpstreamBackendSettings, Field(discriminator="type")]
    conversation: ConversationSettings = Field(default_factory=ConversationSettings)
    sessions: SessionSettings = Field(default_factory=SessionSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    source: str | None = Field(default=None, exclude=True)
    """The file this config was read from (set by :func:`load_config`)."""


def data_path(name: str = "") -> Path:
    """Return the path of the bundled data folder, or of ``name`` inside it."""
    root = Path(str(resources.files("adapter_router_data")))
    return root / name if name else root


def resolve_path(value: str, base: Path) -> Path:
    """Resolve a path from a config file: ``data:NAME``, ``~``, or relative to ``base``."""
    if value.startswith("data:"):
        return data_path(value.removeprefix("data:"))
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base / path)


def load_config(source: str | Path | None = None) -> GatewayConfig:
    """Read and validate a gateway config file; ``None`` reads the bundled default.

    Relative paths inside the file are resolved against the file's folder.

    Raises
    ------
    ConfigError
        If the file is missing, not YAML, or a value is invalid. One line per problem, each
        naming the key.
    """
    path = resolve_path(str(source or DEFAULT_CONFIG), Path.cwd())
    if not path.is_file():
        raise ConfigError(f"config file not found: {source}: pass an existing YAML file to --config")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must be a YAML mapping with router, adapters and backend")

    try:
        config = GatewayConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_describe_validation_error(path, error)) from None
    return _with_resolved_paths(config, path.parent, str(path))


def _with_resolved_paths(config: GatewayConfig, base: Path, source: str) -> GatewayConfig:
    router = config.router.model_copy(
        update={
            "artifact": config.router.artifact and str(resolve_path(config.router.artifact, base)),
            "exemplars": config.router.exemplars and str(resolve_path(config.router.exemplars, base)),
            "embedding_model": _resolve_embedding_model(config.router.embedding_model, base),
        }
    )
    backend = config.backend
    if isinstance(backend, EmbeddedBackendSettings):
        backend = backend.model_copy(
            update={
                "model": str(resolve_path(backend.model, base)),
                "adapter_files": {
                    name: str(resolve_path(file, base)) for name, file in backend.adapter_files.items()
                },
            }
        )
    return config.model_copy(update={"router": router, "backend": backend, "source": source})


def _resolve_embedding_model(value: str, base: Path) -> str:
    from classifier.embedding import DEFAULT_EMBEDDING_MODEL

    if value in ("default", DEFAULT_EMBEDDING_MODEL):
        return value
    return str(resolve_path(value, base))


def _describe_validation_error(path: Path, error: ValidationError) -> str:
    problems = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            problems.append(f"{path}: unknown key {key}: remove it or check its spelling")
        elif item["type"] == "missing":
            problems.append(f"{path}: missing key {key}: add it")
        else:
            value = item.get("input")
            problems.append(f"{path}: invalid {key} = {value!r}: {item['msg']}")
    return "\n".join(problems)
