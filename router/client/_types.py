"""Typed results of the client: routing decisions, chat responses, models and health.

These are the client's parsed forms of the gateway's JSON bodies and ``x-router-*`` headers.
They are independent of the gateway's own classes (``router.routing.RouteDecision`` is the
server-side decision that produces the JSON), so the client imports nothing from the server.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

Message = Mapping[str, Any]
"""One chat message as the OpenAI API writes it: ``{"role": "user", "content": "..."}``."""

Messages = Sequence[Message]
"""A conversation: chat messages, oldest first."""


@dataclass(frozen=True)
class NearestExemplar:
    """A labelled training prompt (exemplar) close to the routed text.

    ``similarity`` is the cosine similarity of the two embeddings, in [-1, 1].
    """

    text: str
    label: str
    domain: str
    similarity: float


@dataclass(frozen=True)
class RouteDecision:
    """The gateway's routing decision, as ``POST /v1/route`` returns it.

    ``model`` is the served name: the adapter's name, or the base model's name on fallback.
    ``adapter`` is ``None`` exactly when ``fallback_reason`` is set. ``domain`` and
    ``confidence`` are ``None`` when the request named a model, because nothing was classified.
    ``scores`` maps every domain to its score. ``routing_ms`` is the gateway's routing time in
    milliseconds.

    Example::

        decision = client.route("Solve for x: 3x + 5 = 20")
        decision.adapter, decision.domain    # ('math', 'math')
    """

    model: str
    adapter: str | None
    domain: str | None
    confidence: float | None
    fallback_reason: str | None
    scores: Mapping[str, float] = field(default_factory=dict)
    similarity: float | None = None
    nearest: tuple[NearestExemplar, ...] = ()
    routing_ms: float = 0.0
    request_id: str | None = None

    @property
    def fallback(self) -> bool:
        """Whether the base model serves the request."""
        return self.fallback_reason is not None

    @classmethod
    def from_json(cls, body: Mapping[str, Any], request_id: str | None = None) -> RouteDecision:
        """Build a decision from the JSON body of ``POST /v1/route``.

        Raises ``KeyError`` or ``TypeError`` when a required field is missing or has the wrong type.

        Example::

            RouteDecision.from_json({"model": "demo-base", "adapter": None, "domain": None,
                                     "confidence": None, "fallback_reason": "no_text"})
        """
        return cls(
            model=str(body["model"]),
            adapter=_optional_str(body["adapter"]),
            domain=_optional_str(body["domain"]),
            confidence=_optional_float(body["confidence"]),
            fallback_reason=_optional_str(body["fallback_reason"]),
            scores={str(domain): float(score) for domain, score in (body.get("scores") or {}).items()},
            similarity=_optional_float(body.get("similarity")),
            nearest=tuple(
                NearestExemplar(
                    text=str(item["text"]),
                    label=str(item["label"]),
                    domain=str(item["domain"]),
                    similarity=float(item["similarity"]),
                )
                for item in body.get("nearest") or ()
            ),
            routing_ms=float(body.get("routing_ms") or 0.0),
            request_id=request_id,
        )


@dataclass(frozen=True)
class HeaderDecision:
    """The routing decision as a completion response's ``x-router-*`` headers report it.

    The headers carry the served model, domain, confidence and fallback reason, but no
    per-domain scores or nearest exemplars: call :meth:`RouterClient.route` for those.

    Example::

        response = client.chat([{"role": "user", "content": "Solve for x: 3x + 5 = 20"}])
        response.decision.model, response.decision.fallback    # ('math', False)
    """

    model: str
    domain: str | None
    confidence: float | None
    fallback_reason: str | None
    request_id: str | None = None

    @property
    def fallback(self) -> bool:
        """Whether the base model serves the request."""
        return self.fallback_reason is not None

    @property
    def adapter(self) -> str | None:
        """The adapter that serves the request, or ``None`` when the base model does."""
        return None if self.fallback else self.model

    @classmethod
    def from_headers(cls, headers: httpx.Headers) -> HeaderDecision | None:
        """Read the decision from ``x-router-*`` headers, or return ``None`` when the response has none.

        Raises ``ValueError`` when ``x-router-confidence`` is neither a number nor ``none``.

        Example::

            HeaderDecision.from_headers(httpx.Headers({"x-router-adapter": "math",
                "x-router-domain": "math", "x-router-confidence": "0.9120",
                "x-router-fallback": "none"}))
        """
        model = headers.get("x-router-adapter")
        if model is None:
            return None
        confidence = _none_or(headers.get("x-router-confidence"))
        return cls(
            model=model,
            domain=_none_or(headers.get("x-router-domain")),
            confidence=None if confidence is None else float(confidence),
            fallback_reason=_none_or(headers.get("x-router-fallback")),
            request_id=headers.get("x-request-id"),
        )


@dataclass(frozen=True)
class ChatResponse:
    """A chat completion together with the routing decision that served it.

    ``completion`` is the response body exactly as the gateway sent it (an OpenAI
    ``chat.completion`` object), so fields the client does not model (``tool_calls``,
    ``logprobs``, ...) stay available.

    Example::

        response = client.chat([{"role": "user", "content": "Solve for x: 3x + 5 = 20"}])
        response.content, response.model, response.decision.domain
    """

    completion: dict[str, Any]
    decision: HeaderDecision

    @property
    def model(self) -> str:
        """The served model the completion names: the adapter, or the base model on fallback."""
        return str(self.completion.get("model", self.decision.model))

    @property
    def content(self) -> str | None:
        """The message content of the first choice (``None`` for a tool call without text)."""
        choices = self.completion.get("choices") or []
        if not choices:
            return None
        content = choices[0].get("message", {}).get("content")
        return None if content is None else str(content)

    @property
    def finish_reason(self) -> str | None:
        """Why the first choice stopped (``stop``, ``length``, ``tool_calls``, ...)."""
        choices = self.completion.get("choices") or []
        return _optional_str(choices[0].get("finish_reason")) if choices else None

    @property
    def usage(self) -> dict[str, int] | None:
        """The integer token counts (``prompt_tokens``, ``completion_tokens``, ...), when reported."""
        usage = self.completion.get("usage")
        if usage is None:
            return None
        # Nested details such as ``prompt_tokens_details`` (OpenAI, vLLM) stay in ``completion``.
        return {str(key): value for key, value in usage.items() if isinstance(value, int)}


@dataclass(frozen=True)
class ModelInfo:
    """One model the gateway accepts in ``model``: the routing alias, the base model or an adapter.

    ``parent`` is the base model for an adapter, and ``None`` otherwise.

    Example::

        [model.id for model in client.models()]    # ['auto', 'demo-base', 'code', ...]
    """

    id: str
    owned_by: str | None = None
    parent: str | None = None
    created: int | None = None

    @classmethod
    def from_json(cls, item: Mapping[str, Any]) -> ModelInfo:
        """Build a model entry from one item of ``GET /v1/models``'s ``data``."""
        created = item.get("created")
        return cls(
            id=str(item["id"]),
            owned_by=_optional_str(item.get("owned_by")),
            parent=_optional_str(item.get("parent")),
            created=None if created is None else int(created),
        )


@dataclass(frozen=True)
class HealthStatus:
    """The gateway's response to ``GET /health``.

    Example::

        client.health().ok    # True
    """

    status: str

    @property
    def ok(self) -> bool:
        """Whether the gateway reports ``"ok"``."""
        return self.status == "ok"


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _none_or(value: str | None) -> str | None:
    # The gateway writes "none" for an absent domain, confidence or fallback reason.
    return None if value is None or value == "none" else value
