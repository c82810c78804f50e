"""The trained router: embedding model, head, exemplar index and thresholds."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from classifier.decision import ConfidenceMode, Neighbour, Prediction, Thresholds, decide
from classifier.embedding import Embedder
from classifier.exemplars import Exemplar
from classifier.heads import KnnHead, LogisticHead
from classifier.index import ExemplarIndex


class DomainRouter:
    """Classifies texts into skill domains, with fallback to the base model.

    Domain scores are the head's label probabilities summed per domain. The confidence is the
    best domain's score, optionally times the similarity to the nearest exemplar (see
    :class:`ConfidenceMode`); that similarity alone is the out-of-domain signal.
    Build one with :func:`classifier.train_router` or :func:`classifier.load_router`.

    Examples
    --------
    >>> router = train_router(load_exemplars("data/skills"), SentenceEmbedder())
    >>> prediction = router.predict(["Solve for x: 3x + 5 = 20"])[0]
    >>> prediction.domain, prediction.fallback
    ('math', False)
    """

    def __init__(
        self,
        *,
        embedder: Embedder,
        head: LogisticHead | KnnHead,
        exemplars: Sequence[Exemplar],
        index: ExemplarIndex,
        thresholds: Thresholds,
        fallback_domains: Sequence[str] = (),
        confidence_mode: ConfidenceMode | str = ConfidenceMode.SCORE,
        adapters: Mapping[str, str | None] | None = None,
        metadata: Mapping[str, object] | None = None,
    ) -> None:
        label_domains = _label_domains(exemplars)
        missing = set(head.classes_) - set(label_domains)
        if missing:
            raise ValueError(f"head labels without exemplars: {sorted(missing)}")
        if len(index) != len(exemplars):
            raise ValueError(f"index has {len(index)} vectors for {len(exemplars)} exemplars")

        self.embedder = embedder
        self.head = head
        self.exemplars = tuple(exemplars)
        self.index = index
        self.thresholds = thresholds
        self.fallback_domains = frozenset(fallback_domains)
        self.confidence_mode = ConfidenceMode(confidence_mode)
        self.adapters = dict(adapters or {})
        self.metadata = dict(metadata or {})
        self.label_domains = label_domains
        self.domains = sorted(set(label_domains.values()))

        # (n_labels, n_domains) 0/1 matrix: label probabilities @ matrix = domain scores.
        domain_column = {domain: i for i, domain in enumerate(self.domains)}
        self._label_to_domain = np.zeros((len(head.classes_), len(self.domains)), dtype=np.float32)
        for row, label in enumerate(head.classes_):
            self._label_to_domain[row, domain_column[label_domains[label]]] = 1.0

    @property
    def embedding_model(self) -> str:
        """Name of the embedding model the router was trained with."""
        return self.embedder.name

    def with_thresholds(self, thresholds: Thresholds) -> DomainRouter:
        """Return a router that shares everything with this one but the thresholds."""
        copy = object.__new__(DomainRouter)
        copy.__dict__.update(self.__dict__)
        copy.thresholds = thresholds
        return copy

    def domain_scores(self, embeddings: np.ndarray) -> np.ndarray:
        """Return domain scores of shape (n_samples, n_domains), columns in ``self.domains`` order."""
        return self.head.predict_proba(embeddings) @ self._label_to_domain

    def predict(self, texts: Sequence[str], *, nearest: int = 3) -> list[Prediction]:
        """Classify ``texts``; returns one :class:`Prediction` per text, in order.

        Parameters
        ----------
        texts : sequence of str
        nearest : int
            How many nearest exemplars to report with each prediction.
        """
        embeddings = self.embedder.encode(texts)
        return self.predict_embeddings(embeddings, nearest=nearest)

    def predict_embeddings(self, embeddings: np.ndarray, *, nearest: int = 3) -> list[Prediction]:
        """Classify precomputed embeddings of shape (n_samples, dimension)."""
        if len(embeddings) == 0:
            return []
        scores = self.domain_scores(embeddings)
        similarities, ids = self.index.search(embeddings, max(nearest, 1))

        predictions = []
        for row in range(len(embeddings)):
            domain_scores = dict(zip(self.domains, scores[row].tolist(), strict=True))
            similarity = float(similarities[row, 0])
            domain, confidence, reason = decide(
                domain_scores, similarity, self.thresholds, self.fallback_domains, self.confidence_mode
            )
            neighbours = tuple(
                self._neighbour(int(i), float(s))
                for i, s in zip(ids[row, :nearest], similarities[row, :nearest], strict=True)
                if i >= 0
            )
            predictions.append(
                Prediction(
                    domain=domain,
                    confidence=confidence,
                    scores=dict(sorted(domain_scores.items(), key=lambda item: -item[1])),
                    similarity=similarity,
                    nearest=neighbours,
                    fallback_reason=reason,
                )
            )
        return predictions

    def _neighbour(self, exemplar_id: int, similarity: float) -> Neighbour:
        exemplar = self.exemplars[exemplar_id]
        return Neighbour(exemplar.text, exemplar.label, exemplar.domain, similarity)


def _label_domains(exemplars: Sequence[Exemplar]) -> dict[str, str]:
    label_domains: dict[str, str] = {}
    for exemplar in exemplars:
        known = label_domains.setdefault(exemplar.label, exemplar.domain)
        if known != exemplar.domain:
            raise ValueError(
                f"label {exemplar.label!r} appears in domains {known!r} and {exemplar.domain!r}: "
                "give each label one domain (rename one of them)"
            )
    return label_domains


__all__ = ["DomainRouter"]
