"""Classify a conversation: the latest request first, earlier turns when it cannot decide alone.

A follow-up such as "and the second one?" has no domain of its own, so its prediction is
uncertain: it falls back, or its confidence is below ``context_threshold``. Only then are the
earlier human turns added: the embeddings are summed with weight ``request_weight`` for the
request and ``decay ** (k - 1)`` for the k-th earlier turn, and the combined prediction is used
if it routes to a domain. An uncertain request weighs less than the turn before it, because a
follow-up's own words ("why?", "make it faster") mostly look like chit-chat. A request that
decides on its own, a real change of subject included, is never outvoted by its history.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from classifier import DomainRouter, FallbackReason, Prediction
from classifier.cascade import CascadeRouter, CascadeStage
from classifier.embedding import Chunking
from router.routing_text import RoutingInput

Basis = Literal["request", "request+context", "context", "none"]

_UNDECIDED = frozenset({FallbackReason.LOW_CONFIDENCE, FallbackReason.OUT_OF_DOMAIN})


@dataclass(frozen=True)
class TextReport:
    """The text the router read: which turns, how many characters, and whether any text was left out.

    ``basis`` is ``request`` (the latest request alone), ``request+context`` (with earlier turns),
    ``context`` (earlier turns only, because the latest turn has no text) or ``none``. ``stage`` is
    the cascade stage whose embedding decided, ``None`` when no text was classified.
    """

    basis: Basis
    request_turn: int | None
    context_turns: tuple[int, ...]
    chars: int
    chunks: int
    total_chunks: int
    stage: CascadeStage | None = CascadeStage.TRANSFORMER

    @property
    def truncated(self) -> bool:
        """Whether some of the text was left out of the embedding (more windows than allowed)."""
        return self.chunks < self.total_chunks

    def to_dict(self) -> dict[str, object]:
        """Return the JSON form reported by ``POST /v1/route``."""
        return {
            "basis": self.basis,
            "request_turn": self.request_turn,
            "context_turns": list(self.context_turns),
            "chars": self.chars,
            "chunks": self.chunks,
            "total_chunks": self.total_chunks,
            "truncated": self.truncated,
        }


NO_TEXT_REPORT = TextReport("none", None, (), 0, 0, 0, stage=None)


def predict_static_request(domain_router: DomainRouter, request: str) -> Prediction | None:
    """Return the static stage's prediction of ``request`` where it is confident, else ``None``.

    Always ``None`` for a router without a static stage (not a :class:`CascadeRouter`).
    """
    if not isinstance(domain_router, CascadeRouter) or not request.strip():
        return None
    return domain_router.predict_static([request])[0]


def predict_conversation(
    domain_router: DomainRouter,
    routing_input: RoutingInput,
    *,
    decay: float = 0.5,
    request_weight: float = 0.5,
    context_threshold: float = 0.8,
    use_context: bool = True,
) -> tuple[Prediction | None, TextReport]:
    """Predict the domain of a conversation; ``None`` when it has no text to classify.

    Parameters
    ----------
    domain_router : DomainRouter
        With a :class:`CascadeRouter`, a confident static prediction of the request is used
        without running the transformer, where the request would decide alone.
    routing_input : RoutingInput
    decay : float
        Weight of each earlier turn relative to the next later one, in (0, 1].
    request_weight : float
        Weight of an uncertain request relative to the most recent earlier turn.
    context_threshold : float
        Confidence from which the request decides alone, even when it falls back to a fallback
        domain such as ``general``.
    use_context : bool
        Let earlier turns decide when the request cannot; ``False`` routes on the request alone.
    """
    context = routing_input.context if use_context else ()
    texts = [routing_input.request] if routing_input.request.strip() else []
    has_request = bool(texts)
    texts += list(context)
    if not texts:
        return None, NO_TEXT_REPORT

    static = predict_static_request(domain_router, routing_input.request)
    # A static prediction skips the transformer only where the request would decide alone.
    if static is not None and (not context or static.confidence >= context_threshold):
        return static, _report("request", routing_input, texts[:1], [Chunking(1, 1)], CascadeStage.STATIC)

    embeddings, chunking = domain_router.embedder.encode_chunked(texts)
    if not has_request:
        prediction = domain_router.predict_embeddings(_weighted_sum(embeddings, _weights(len(texts), decay)))[
            0
        ]
        return prediction, _report("context", routing_input, texts, chunking)

    alone = domain_router.predict_embeddings(embeddings[:1])[0]
    report = _report("request", routing_input, texts[:1], chunking[:1])
    decided = alone.fallback_reason not in _UNDECIDED and alone.confidence >= context_threshold
    if decided or not context:
        return alone, report
    weights = np.concatenate([[request_weight], _weights(len(texts) - 1, decay)])
    combined = domain_router.predict_embeddings(_weighted_sum(embeddings, weights))[0]
    # A request that routes to a domain on its own keeps that domain: context may only confirm
    # it, so a change of subject is not pulled back to the earlier topic.
    if combined.fallback or (not alone.fallback and combined.domain != alone.domain):
        return alone, report
    return combined, _report("request+context", routing_input, texts, chunking)


def _weights(count: int, decay: float) -> np.ndarray:
    return decay ** np.arange(count, dtype=np.float32)


def _weighted_sum(embeddings: np.ndarray, weights: np.ndarray) -> np.ndarray:
    combined = weights.astype(np.float32) @ embeddings
    return (combined / np.linalg.norm(combined))[None, :]


def _report(
    basis: Basis,
    routing_input: RoutingInput,
    texts: list[str],
    chunking: list[Chunking],
    stage: CascadeStage = CascadeStage.TRANSFORMER,
) -> TextReport:
    uses_request = basis != "context"
    context_count = len(texts) - (1 if uses_request else 0)
    return TextReport(
        basis=basis,
        request_turn=routing_input.request_turn if uses_request else None,
        context_turns=routing_input.context_turns[:context_count],
        chars=sum(len(text) for text in texts),
        chunks=sum(c.chunks for c in chunking),
        total_chunks=sum(c.total_chunks for c in chunking),
        stage=stage,
    )
