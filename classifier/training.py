"""Train a router from labelled exemplars."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from classifier.decision import ConfidenceMode, Thresholds
from classifier.domain_router import DomainRouter
from classifier.embedding import Embedder
from classifier.exemplars import Exemplar, ExemplarError, exemplars_digest
from classifier.heads import make_head
from classifier.index import ExemplarIndex

logger = logging.getLogger(__name__)


def train_router(
    exemplars: Sequence[Exemplar],
    embedder: Embedder,
    *,
    head: str = "logistic",
    head_params: Mapping[str, Any] | None = None,
    thresholds: Thresholds | None = None,
    fallback_domains: Sequence[str] = (),
    confidence_mode: ConfidenceMode | str = ConfidenceMode.SCORE,
    adapters: Mapping[str, str | None] | None = None,
    show_progress: bool = False,
) -> DomainRouter:
    """Embed ``exemplars``, fit a head on their fine labels and return the router.

    Parameters
    ----------
    exemplars : sequence of Exemplar
        Training prompts; the head learns their ``label``, scores are summed per ``domain``.
    embedder : Embedder
    head : {"logistic", "knn"}
    head_params : mapping, optional
        Constructor parameters of the head.
    thresholds : Thresholds, optional
        Fallback thresholds stored with the router.
    fallback_domains : sequence of str
        Domains whose prompts go to the base model (for example ``general``).
    confidence_mode : ConfidenceMode or str
        What the confidence threshold applies to: ``"score"`` or ``"score_x_similarity"``.
    adapters : mapping of str to str or None, optional
        Domain to adapter names stored in the artifact; the gateway config may override them.
    show_progress : bool
        Show a progress bar while embedding.

    Raises
    ------
    ExemplarError
        If a fallback domain has no exemplars, or the exemplars cannot train the head (for
        example a single label).
    """
    domains = {exemplar.domain for exemplar in exemplars}
    unknown = set(fallback_domains) - domains
    if unknown:
        raise ExemplarError(
            f"fallback domains {sorted(unknown)} have no exemplars: "
            f"add exemplars for them or use one of {sorted(domains)}"
        )

    logger.info("embedding %d exemplars with %s", len(exemplars), embedder.name)
    embeddings = embedder.encode([e.text for e in exemplars], show_progress=show_progress)
    try:
        fitted_head = make_head(head, **dict(head_params or {}))
        fitted_head.fit(embeddings, [e.label for e in exemplars])
    except ValueError as error:
        raise ExemplarError(f"cannot train a {head} head on these exemplars: {error}") from error
    logger.info("trained %s head on %d labels in %d domains", head, len(fitted_head.classes_), len(domains))

    metadata = {
        "exemplars": len(exemplars),
        "exemplars_sha256": exemplars_digest(exemplars),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    return DomainRouter(
        embedder=embedder,
        head=fitted_head,
        exemplars=exemplars,
        index=ExemplarIndex(embeddings),
        thresholds=thresholds or Thresholds(),
        fallback_domains=fallback_domains,
        confidence_mode=confidence_mode,
        adapters=adapters,
        metadata=metadata,
    )
