"""A two-stage router: a static-embedding router decides the texts it is sure of, the transformer the rest.

Both stages are trained on the same exemplars. The static stage embeds a text in tens of
microseconds (see :class:`~classifier.static_embedding.StaticEmbedder`) but is less accurate.
Its prediction is therefore kept only when it routes to a domain with a confidence of at least
``threshold``. The transformer router embeds and classifies every other text.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

from classifier.decision import Prediction, Thresholds
from classifier.domain_router import DomainRouter


class CascadeStage(StrEnum):
    """The stage of a :class:`CascadeRouter` whose prediction was used."""

    STATIC = "static"
    """The static-embedding router was confident, so the transformer did not run."""
    TRANSFORMER = "transformer"
    """The transformer router decided."""


class CascadeRouter(DomainRouter):
    """A :class:`DomainRouter` whose static stage decides confident texts before the transformer runs.

    It behaves as the transformer router ``router`` everywhere (domains, embedder, head, index,
    thresholds), except that :meth:`predict` runs ``static_router`` first. A static prediction is
    used when it routes to a domain under the transformer router's thresholds and its confidence
    is at least ``threshold``. A static prediction never falls back: a text the static stage is
    unsure of, finds out of domain or sends to a fallback domain goes to the transformer.

    Parameters
    ----------
    router : DomainRouter
        The transformer router, whose thresholds apply to both stages.
    static_router : DomainRouter
        A router trained on the same exemplars with static embeddings.
    threshold : float
        Minimum static confidence, in [0, 1], for the static stage to answer.

    Examples
    --------
    >>> cascade = CascadeRouter(router, static_router, threshold=0.9)
    >>> [stage for _, stage in cascade.predict_staged(["Solve for x: 3x + 5 = 20"])]
    [<CascadeStage.STATIC: 'static'>]
    """

    def __init__(self, router: DomainRouter, static_router: DomainRouter, *, threshold: float) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"cascade threshold must be between 0 and 1, got {threshold}")
        if static_router.domains != router.domains:
            raise ValueError(
                f"the static router's domains {static_router.domains} differ from the router's "
                f"{router.domains}: train both on the same exemplars"
            )
        super().__init__(
            embedder=router.embedder,
            head=router.head,
            exemplars=router.exemplars,
            index=router.index,
            thresholds=router.thresholds,
            fallback_domains=router.fallback_domains,
            confidence_mode=router.confidence_mode,
            adapters=router.adapters,
            metadata=router.metadata,
        )
        self.static_router = static_router.with_thresholds(router.thresholds)
        self.threshold = threshold

    def with_thresholds(self, thresholds: Thresholds) -> CascadeRouter:
        """Return a cascade that shares everything with this one but the thresholds of both stages."""
        return CascadeRouter(
            DomainRouter.with_thresholds(self, thresholds),
            self.static_router,
            threshold=self.threshold,
        )

    def accepts(self, prediction: Prediction) -> bool:
        """Return whether a static-stage prediction is confident enough to be used."""
        return prediction.fallback_reason is None and prediction.confidence >= self.threshold

    def predict_static(self, texts: Sequence[str], *, nearest: int = 3) -> list[Prediction | None]:
        """Run the static stage alone: a prediction where it is confident, ``None`` elsewhere.

        The nearest exemplars and the similarity of a static prediction are measured between
        static embeddings, so they are not comparable with the transformer's.
        """
        return [
            prediction if self.accepts(prediction) else None
            for prediction in self.static_router.predict(texts, nearest=nearest)
        ]

    def predict_staged(
        self, texts: Sequence[str], *, nearest: int = 3
    ) -> list[tuple[Prediction, CascadeStage]]:
        """Classify ``texts`` through the cascade; returns each prediction with the stage that made it."""
        static = self.predict_static(texts, nearest=nearest)
        undecided = [position for position, prediction in enumerate(static) if prediction is None]
        transformer = super().predict([texts[position] for position in undecided], nearest=nearest)

        staged: list[tuple[Prediction, CascadeStage] | None] = [
            None if prediction is None else (prediction, CascadeStage.STATIC) for prediction in static
        ]
        for position, prediction in zip(undecided, transformer, strict=True):
            staged[position] = (prediction, CascadeStage.TRANSFORMER)
        return [item for item in staged if item is not None]

    def predict(self, texts: Sequence[str], *, nearest: int = 3) -> list[Prediction]:
        """Classify ``texts`` through the cascade; returns one :class:`Prediction` per text, in order."""
        return [prediction for prediction, _ in self.predict_staged(texts, nearest=nearest)]


__all__ = ["CascadeRouter", "CascadeStage"]
