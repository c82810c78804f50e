"""Request and response bodies of the OpenAI-compatible API.

Request models validate what the gateway and the embedded backend read, and keep every other
field (``extra="allow"``): the raw JSON body, not a re-serialised model, is what reaches an
upstream, so unknown fields pass through untouched. Validation is strict (``"5"`` is not an
integer), as OpenAI's API is.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer, model_validator

Role = Literal["system", "developer", "user", "assistant", "tool", "function"]
FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "function_call"]


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class _Response(BaseModel):
    model_config = ConfigDict(extra="allow")


# Requests


class ChatMessage(_Request):
    """One message of a chat conversation.

    ``content`` is a string, a list of content parts (``{"type": "text", "text": ...}``,
    ``{"type": "image_url", ...}``, ...), or null where OpenAI allows it: an assistant message
    with ``tool_calls`` or ``function_call``, and a function message.
    """

    role: Role
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    function_call: dict[str, Any] | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _check_content(cls, value: Any) -> Any:
        if value is None or isinstance(value, str):
            return value
        if not isinstance(value, list):
            raise ValueError(f"expected a string, a list of content parts or null, got {_json_type(value)}")
        if not value:
            raise ValueError("expected at least one content part, got an empty list")
        for index, part in enumerate(value):
            _check_content_part(index, part)
        return value

    @model_validator(mode="after")
    def _check_role_fields(self) -> ChatMessage:
        if self.content is None and not (
            self.role == "function" or (self.role == "assistant" and (self.tool_calls or self.function_call))
        ):
            raise ValueError(
                f"a {self.role} message needs 'content' (only assistant messages with tool_calls "
                "or function_call, and function messages, may omit it)"
            )
        if self.role == "tool" and self.tool_call_id is None:
            raise ValueError("a tool message needs 'tool_call_id'")
        if self.role == "function" and self.name is None:
            raise ValueError("a function message needs 'name'")
        return self


def _check_content_part(index: int, part: Any) -> None:
    if not isinstance(part, Mapping):
        raise ValueError(f"content part {index} must be an object, got {_json_type(part)}")
    part_type = part.get("type")
    if not isinstance(part_type, str):
        raise ValueError(f"content part {index} needs a string 'type'")
    if part_type == "text" and not isinstance(part.get("text"), str):
        raise ValueError(f"content part {index} has type 'text' but no string 'text'")


def _json_type(value: Any) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", dict: "an object", list: "an array"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


class StreamOptions(_Request):
    """``stream_options`` of a streaming request."""

    include_usage: bool = False


class _SamplingRequest(_Request):
    """Fields that chat and text completions share."""

    model: str
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    n: Annotated[int, Field(ge=1, le=128)] | None = None
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    seed: int | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    user: str | None = None

    @field_validator("stop", mode="before")
    @classmethod
    def _check_stop(cls, value: Any) -> Any:
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return value
        raise ValueError(f"expected a string or a list of strings, got {_json_type(value)}")

    @property
    def stop_sequences(self) -> tuple[str, ...]:
        """The ``stop`` field as a tuple of non-empty strings."""
        if self.stop is None:
            return ()
        stops = [self.stop] if isinstance(self.stop, str) else self.stop
        return tuple(stop for stop in stops if stop)

    @property
    def include_usage(self) -> bool:
        """Whether a stream ends with a chunk that carries ``usage``."""
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_SamplingRequest):
    """Body of ``POST /v1/chat/completions``."""

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None

    @field_validator("tool_choice", mode="before")
    @classmethod
    def _check_tool_choice(cls, value: Any) -> Any:
        if value is None or isinstance(value, str | dict):
            return value
        raise ValueError(f"expected a string or an object, got {_json_type(value)}")

    @field_validator("messages", mode="before")
    @classmethod
    def _check_messages(cls, value: Any) -> Any:
        if value == []:
            raise ValueError("expected at least one message, got an empty array")
        return value

    @property
    def requested_max_tokens(self) -> int | None:
        """``max_completion_tokens``, or the older ``max_tokens``, or ``None``."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


PromptTokens = Annotated[list[int], Field(min_length=1)]


class CompletionRequest(_SamplingRequest):
    """Body of ``POST /v1/completions``.

    ``prompt`` is a string, a list of strings, a list of token ids, or a list of token-id lists.
    """

    prompt: (
        str
        | Annotated[list[str], Field(min_length=1)]
        | PromptTokens
        | Annotated[list[PromptTokens], Field(min_length=1)]
    )
    echo: bool | None = None
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None
    best_of: Annotated[int, Field(ge=1)] | None = None
    suffix: str | None = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _check_prompt(cls, value: Any) -> Any:
        return _checked_prompt(value)

    @property
    def prompts(self) -> list[str | list[int]]:
        """The prompts of the request, one per choice: strings or token-id lists."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        if all(isinstance(item, int) for item in prompt):
            return [list(prompt)]  # type: ignore[arg-type]
        return list(prompt)  # type: ignore[arg-type]

    @property
    def text_prompts(self) -> list[str]:
        """The string prompts of the request; empty when the prompt is given as token ids."""
        return [prompt for prompt in self.prompts if isinstance(prompt, str)]


def _checked_prompt(value: Any) -> Any:
    """Return ``value`` if it has one of the prompt shapes OpenAI accepts, else raise ``ValueError``."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list) or not value:
        raise ValueError(
            "expected a string, a list of strings, a list of token ids or a list of token-id lists, "
            f"got {'an empty array' if value == [] else _json_type(value)}"
        )
    if all(isinstance(item, str) for item in value) or all(_is_token_id(item) for item in value):
        return value
    if all(isinstance(item, list) and item and all(_is_token_id(t) for t in item) for item in value):
        return value
    raise ValueError(
        "expected a string, a list of strings, a list of token ids or a list of non-empty token-id lists"
    )


def _is_token_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class RouteRequest(_Request):
    """Body of ``POST /v1/route``: a conversation (``messages``) or a text (``prompt`` or ``text``)."""

    model: str | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1)] | None = None
    prompt: str | Annotated[list[str], Field(min_length=1)] | None = None
    text: str | None = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _check_prompt(cls, value: Any) -> Any:
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, list) and value and all(isinstance(item, str) for item in value):
            return value
        raise ValueError(f"expected a string or a non-empty list of strings, got {_json_type(value)}")

    @model_validator(mode="after")
    def _one_source(self) -> RouteRequest:
        given = [name for name in ("messages", "prompt", "text") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of 'messages', 'prompt' and 'text'"
                + (f", got {' and '.join(given)}" if given else "")
            )
        return self


# Responses


class Usage(_Response):
    """Token counts of a completion."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> Usage:
        """Return the usage of ``prompt_tokens`` in and ``completion_tokens`` out."""
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )


class AssistantMessage(_Response):
    """The generated message of a chat completion choice."""

    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None


class ChatCompletionChoice(_Response):
    """One choice of a chat completion."""

    index: int
    message: AssistantMessage
    finish_reason: FinishReason | None
    logprobs: None = None


class ChatCompletion(_Response):
    """Response of ``POST /v1/chat/completions`` without streaming."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatCompletionChoice]
    usage: Usage | None = None


class ChatDelta(_Response):
    """The part of the message a stream chunk adds; unset fields are left out of the JSON."""

    role: Literal["assistant"] | None = None
    content: str | None = None

    @model_serializer(mode="plain")
    def _without_unset(self) -> dict[str, Any]:
        return {
            key: value for key, value in (("role", self.role), ("content", self.content)) if value is not None
        }


class ChatCompletionChunkChoice(_Response):
    """One choice of a chat completion stream chunk."""

    index: int
    delta: ChatDelta
    finish_reason: FinishReason | None = None
    logprobs: None = None


class ChatCompletionChunk(_Response):
    """One server-sent event of a streaming chat completion."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatCompletionChunkChoice]
    usage: Usage | None = None


class CompletionChoice(_Response):
    """One choice of a text completion (also the shape of a stream chunk's choice)."""

    index: int
    text: str
    finish_reason: FinishReason | None
    logprobs: None = None


class Completion(_Response):
    """Response of ``POST /v1/completions``, and one chunk of its stream (same ``object``)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelCard(_Response):
    """One entry of ``GET /v1/models``.

    ``parent`` is the base model for an adapter and ``None`` otherwise, as vLLM reports it.
    """

    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "adapter-router"
    parent: str | None = None


class ModelList(_Response):
    """Response of ``GET /v1/models``."""

    object: Literal["list"] = "list"
    data: list[ModelCard]


class NeighbourInfo(_Response):
    """An exemplar near the routed text."""

    text: str
    label: str
    domain: str
    similarity: float


class RoutingTextInfo(_Response):
    """The text the router read: ``basis`` is request, request+context, context or none."""

    basis: Literal["request", "request+context", "context", "none"]
    request_turn: int | None
    context_turns: list[int]
    chars: int
    chunks: int
    total_chunks: int
    truncated: bool


class RouteResponse(_Response):
    """Response of ``POST /v1/route``: the decision the proxy endpoints would apply.

    ``model`` is the served name (adapter or base model); ``adapter`` is ``None`` on fallback,
    and ``fallback_reason`` gives the reason. ``domain`` and ``confidence`` are ``None`` when the request
    named a model, because nothing was classified then.
    """

    model: str
    adapter: str | None
    domain: str | None
    confidence: float | None
    fallback: bool
    fallback_reason: str | None
    scores: dict[str, float]
    similarity: float | None
    nearest: list[NeighbourInfo]
    routing_ms: float
    routing_text: RoutingTextInfo | None
    stage: Literal["static", "transformer"] | None = None
    """The embedding that classified the request, ``static`` (cascade) or ``transformer``; else ``None``."""
    sticky: bool


class HealthResponse(_Response):
    """Response of ``GET /health``."""

    status: Literal["ok"] = "ok"


class ReadinessResponse(_Response):
    """Response of ``GET /ready``: HTTP 200 when ready, 503 with the problems when not."""

    status: Literal["ready", "not_ready"]
    problems: list[str] = Field(default_factory=list)
    """Why the backend cannot serve now: unreachable, or adapters it does not serve."""
    start_problems: list[str] | None = None
    """Problems the upstream's model check found at start; ``None`` for the embedded backend."""
