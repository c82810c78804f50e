"""From domain scores to a routing prediction: confidence, thresholds and fallback reasons."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum


class FallbackReason(StrEnum):
    """Reason a prompt goes to the base model instead of a domain adapter."""

    LOW_CONFIDENCE = "low_confidence"
    """The best domain's confidence is below its threshold."""
    OUT_OF_DOMAIN = "out_of_domain"
    """The prompt is far from every exemplar (nearest similarity below the out-of-domain threshold)."""
    FALLBACK_DOMAIN = "fallback_domain"
    """The best domain is one trained to go to the base model, such as ``general``."""


class ConfidenceMode(StrEnum):
    """The quantity the confidence threshold is applied to."""

    SCORE = "score"
    """The best domain's score (summed label probabilities)."""
    SCORE_X_SIMILARITY = "score_x_similarity"
    """The best domain's score times the cosine similarity to the nearest exemplar, so prompts far
    from every exemplar lose confidence even when the head is sure."""


@dataclass(frozen=True)
class Thresholds:
    """Fallback thresholds.

    Parameters
    ----------
    confidence : float
        Minimum confidence (the best domain's score, in [0, 1]) to route to that domain.
    domains : mapping of str to float
        Per-domain overrides of ``confidence``.
    out_of_domain : float
        Minimum cosine similarity between the prompt and its nearest exemplar; 0 disables the check.
    """

    confidence: float = 0.5
    domains: Mapping[str, float] = field(default_factory=dict)
    out_of_domain: float = 0.0

    def __post_init__(self) -> None:
        values = {
            "confidence": self.confidence,
            **{f"domains.{k}": v for k, v in self.domains.items()},
        }
        for name, value in values.items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"threshold {name} must be between 0 and 1, got {value}")
        if not -1.0 <= self.out_of_domain <= 1.0:
            raise ValueError(f"threshold out_of_domain must be between -1 and 1, got {self.out_of_domain}")

    def confidence_for(self, domain: str) -> float:
        """Return the confidence threshold that applies to ``domain``."""
        return self.domains.get(domain, self.confidence)


@dataclass(frozen=True)
class Neighbour:
    """An exemplar near the prompt, with its cosine similarity."""

    text: str
    label: str
    domain: str
    similarity: float


@dataclass(frozen=True)
class Prediction:
    """The classifier's output for one text.

    ``domain`` is the best-scoring domain even when the prediction falls back, so callers can
    see what was close; ``fallback_reason`` is ``None`` only when the text should go to that
    domain's adapter.
    """

    domain: str
    confidence: float
    scores: Mapping[str, float]
    similarity: float
    nearest: tuple[Neighbour, ...]
    fallback_reason: FallbackReason | None

    @property
    def fallback(self) -> bool:
        """Whether the text should go to the base model."""
        return self.fallback_reason is not None


def decide(
    scores: Mapping[str, float],
    similarity: float,
    thresholds: Thresholds,
    fallback_domains: frozenset[str],
    mode: ConfidenceMode = ConfidenceMode.SCORE,
) -> tuple[str, float, FallbackReason | None]:
    """Pick the best domain, its confidence and the fallback reason, if any.

    Checks run in this order: the best domain is a fallback domain, the nearest exemplar is too
    far (out of domain), the confidence is below the domain's threshold.

    Returns
    -------
    (domain, confidence, fallback_reason)
    """
    domain = max(scores, key=scores.__getitem__)
    confidence = float(scores[domain])
    if mode is ConfidenceMode.SCORE_X_SIMILARITY:
        confidence *= max(similarity, 0.0)

    if domain in fallback_domains:
        return domain, confidence, FallbackReason.FALLBACK_DOMAIN
    if similarity < thresholds.out_of_domain:
        return domain, confidence, FallbackReason.OUT_OF_DOMAIN
    if confidence < thresholds.confidence_for(domain):
        return domain, confidence, FallbackReason.LOW_CONFIDENCE
    return domain, confidence, None
