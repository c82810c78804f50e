"""Routing outcomes: the decision for one prompt, in one form for a local router and a gateway."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from evals.dataset import EvalRecord
from evals.label_map import BASE_MODEL, RouterDomains

ROUTABLE_REASONS = frozenset({None, "low_confidence"})
"""Fallback reasons that a lower confidence threshold would turn into routing."""


@dataclass(frozen=True)
class RoutingOutcome:
    """The routing decision for one prompt.

    ``predicted`` is the domain whose adapter served the prompt, or :data:`BASE_MODEL`.
    ``top_domain`` is the best-scoring domain even when the prompt fell back, and
    ``top_target`` is that domain, or :data:`BASE_MODEL` when the top domain is served by the
    base model. ``eligible`` is whether some confidence threshold would route the prompt, which
    is false when it fell back for any reason other than low confidence.
    """

    predicted: str
    top_domain: str | None
    top_target: str
    confidence: float | None
    eligible: bool
    fallback_reason: str | None
    scores: Mapping[str, float] = field(default_factory=dict)
    similarity: float | None = None
    nearest: tuple[Mapping[str, Any], ...] = ()

    @classmethod
    def from_decision(cls, decision: Mapping[str, Any]) -> RoutingOutcome:
        """Read the JSON of a gateway's ``POST /v1/route`` decision.

        Raises
        ------
        KeyError, TypeError, ValueError
            If a field is missing or has the wrong type.
        """
        domain = decision["domain"]
        reason = decision["fallback_reason"]
        fallback = bool(decision["fallback"])
        confidence = decision["confidence"]
        top_target = BASE_MODEL if domain is None or reason == "fallback_domain" else str(domain)
        return cls(
            predicted=BASE_MODEL if fallback else str(domain),
            top_domain=None if domain is None else str(domain),
            top_target=top_target,
            confidence=None if confidence is None else float(confidence),
            eligible=reason in ROUTABLE_REASONS and top_target != BASE_MODEL,
            fallback_reason=reason,
            scores={str(name): float(score) for name, score in dict(decision.get("scores") or {}).items()},
            similarity=None if decision.get("similarity") is None else float(decision["similarity"]),
            nearest=tuple(decision.get("nearest") or ()),
        )


class EvaluatedRouter(Protocol):
    """A router under evaluation: a local :class:`~classifier.DomainRouter` or a gateway."""

    name: str

    def describe(self) -> dict[str, Any]:
        """Return what is evaluated: head, embedding model, thresholds, source."""
        ...

    def domains(self) -> RouterDomains:
        """Return the routable and fallback domains known so far."""
        ...

    def route(self, records: Sequence[EvalRecord]) -> list[RoutingOutcome]:
        """Route every record; returns one outcome per record, in order."""
        ...

    def latency(self, records: Sequence[EvalRecord]) -> dict[str, Any]:
        """Return routing latency percentiles at batch 1 and batched (``None`` if not measured)."""
        ...
