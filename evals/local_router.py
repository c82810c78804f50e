"""Evaluate a :class:`~classifier.DomainRouter` in this process."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from classifier import DomainRouter, Embedder, FallbackReason, Prediction
from classifier.cascade import CascadeRouter
from classifier.embedding import Chunking
from evals.dataset import EvalRecord
from evals.label_map import BASE_MODEL, RouterDomains
from evals.metrics import latency_percentiles
from evals.outcome import RoutingOutcome
from router.config import ConversationSettings
from router.conversation import predict_conversation
from router.routing_text import chat_routing_input

logger = logging.getLogger(__name__)

WARMUP_CALLS = 3


class CachingEmbedder:
    """An :class:`~classifier.Embedder` that embeds each distinct text once per process.

    Several routers on the same embedding model (heads, thresholds) then share the embeddings
    of the training and evaluation texts. Latency is never measured through this cache.
    """

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder
        self.name = embedder.name
        self.dimension = embedder.dimension
        self._vectors: dict[str, np.ndarray] = {}

    def encode(self, texts: Sequence[str], *, show_progress: bool = False) -> np.ndarray:
        """Embed ``texts``; returns an array of shape (len(texts), dimension), rows of norm 1."""
        missing = list(dict.fromkeys(text for text in texts if text not in self._vectors))
        if missing:
            logger.info("embedding %d texts with %s", len(missing), self.name)
            vectors = self.embedder.encode(missing, show_progress=show_progress)
            self._vectors.update(zip(missing, vectors, strict=True))
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return np.stack([self._vectors[text] for text in texts])

    def encode_chunked(
        self, texts: Sequence[str], *, show_progress: bool = False
    ) -> tuple[np.ndarray, list[Chunking]]:
        """Embed ``texts`` with the uncached model and report how each was split into windows."""
        return self.embedder.encode_chunked(texts, show_progress=show_progress)


class LocalRouter:
    """A domain router evaluated in process, with the adapter map that decides what routes.

    Parameters
    ----------
    name : str
        Row name in reports.
    router : DomainRouter
    embedder : Embedder
        The uncached embedding model, used to measure latency as the gateway pays it.
    adapters : mapping of str to str or None, optional
        Domain to adapter name; a domain mapped to ``None`` is served by the base model. Empty
        means every domain that is not a fallback domain has an adapter.
    source : mapping, optional
        Where the router came from (artifact path, config, training split), for reports.
    latency_samples : int
        Prompts routed one at a time to measure latency; 0 skips latency.
    batch_size : int
        Prompts per call for the batched latency.
    show_progress : bool
        Show a progress bar while embedding the evaluation records.
    conversation : ConversationSettings, optional
        How chat records are read, as in the gateway config: ``context_turns=0`` routes each
        conversation on its latest human request alone.
    """

    def __init__(
        self,
        name: str,
        router: DomainRouter,
        embedder: Embedder,
        *,
        adapters: Mapping[str, str | None] | None = None,
        source: Mapping[str, Any] | None = None,
        latency_samples: int = 200,
        batch_size: int = 32,
        show_progress: bool = False,
        conversation: ConversationSettings | None = None,
    ) -> None:
        self.name = name
        self.conversation = conversation or ConversationSettings()
        self.router = router
        self.embedder = embedder
        self.adapters = dict(adapters or {})
        self.source = dict(source or {})
        self.latency_samples = latency_samples
        self.batch_size = batch_size
        self.show_progress = show_progress

        unserved = {domain for domain, adapter in self.adapters.items() if adapter is None}
        self._fallback_domains = frozenset(router.fallback_domains | unserved)

    def describe(self) -> dict[str, Any]:
        """Return the source, head, embedding model, training data, confidence mode and thresholds.

        ``cascade_threshold`` is the confidence from which a static stage decides, ``None``
        without a cascade.
        """
        thresholds = self.router.thresholds
        cascade = self.router.threshold if isinstance(self.router, CascadeRouter) else None
        return {
            "context_turns": self.conversation.context_turns,
            "source": self.source,
            "head": self.router.head.kind,
            "head_params": self.router.head.get_params(),
            "embedding_model": self.router.embedding_model,
            "training": dict(self.router.metadata),
            "domains": list(self.router.domains),
            "fallback_domains": sorted(self._fallback_domains),
            "confidence_mode": str(self.router.confidence_mode),
            "thresholds": {
                "confidence": thresholds.confidence,
                "domains": dict(thresholds.domains),
                "out_of_domain": thresholds.out_of_domain,
            },
            "cascade_threshold": cascade,
        }

    def domains(self) -> RouterDomains:
        """Return the router's routable and fallback domains and its label map."""
        return RouterDomains(
            routable=tuple(d for d in self.router.domains if d not in self._fallback_domains),
            fallback=self._fallback_domains,
            label_domains=self.router.label_domains,
        )

    def route(self, records: Sequence[EvalRecord]) -> list[RoutingOutcome]:
        """Return one outcome per record: text records embedded in batches, chats one by one.

        Chat records follow the gateway's conversation rules (``router.routing_text`` and
        ``router.conversation``) with this router's ``conversation`` settings.
        """
        outcomes: list[RoutingOutcome | None] = [None] * len(records)
        plain = [i for i, record in enumerate(records) if record.messages is None]
        predictions = self._predict(
            [records[i].text for i in plain], self.router.embedder, show_progress=self.show_progress
        )
        for i, prediction in zip(plain, predictions, strict=True):
            outcomes[i] = self._outcome(prediction)

        for i, record in enumerate(records):
            if record.messages is not None:
                outcomes[i] = self._conversation_outcome(record.messages)
        return [outcome for outcome in outcomes if outcome is not None]

    def _conversation_outcome(self, messages: Sequence[Mapping[str, Any]]) -> RoutingOutcome:
        settings = self.conversation
        routing_input = chat_routing_input(
            messages, context_turns=settings.context_turns, include_system=settings.system_prompt == "context"
        )
        prediction, _ = predict_conversation(
            self.router,
            routing_input,
            decay=settings.context_decay,
            request_weight=settings.request_weight,
            context_threshold=settings.context_threshold,
            use_context=settings.context_turns > 0,
        )
        if prediction is None:
            return RoutingOutcome(
                predicted=BASE_MODEL,
                top_domain=None,
                top_target=BASE_MODEL,
                confidence=None,
                eligible=False,
                fallback_reason="no_text",
            )
        return self._outcome(prediction)

    def latency(self, records: Sequence[EvalRecord]) -> dict[str, Any]:
        """Measure embedding plus classification time with the uncached embedding model.

        Batch 1 routes ``latency_samples`` records one by one. Batched routes the same records
        ``batch_size`` at a time, cycling through them for at least 20 batches so that the
        percentiles have enough calls. Times are wall-clock milliseconds per call.
        """
        if self.latency_samples <= 0 or not records:
            return {"batch_1": None, "batched": None}
        rng = np.random.default_rng(0)
        count = min(self.latency_samples, len(records))
        texts = [records[i].text for i in sorted(rng.choice(len(records), size=count, replace=False))]

        for text in texts[:WARMUP_CALLS]:
            self._timed_route([text])
        single = [self._timed_route([text]) for text in texts]

        n_batches = max(math.ceil(len(texts) / self.batch_size), 20)
        batched = []
        for batch in range(n_batches):
            start = batch * self.batch_size
            batch_texts = [texts[(start + i) % len(texts)] for i in range(self.batch_size)]
            batched.append(self._timed_route(batch_texts))

        return {
            "batch_1": {"calls": len(single), **latency_percentiles(single)},
            "batched": {
                "batch_size": self.batch_size,
                "calls": len(batched),
                **latency_percentiles(batched),
                "prompts_per_second": self.batch_size * len(batched) / (sum(batched) / 1000),
            },
        }

    def _timed_route(self, texts: list[str]) -> float:
        started = time.perf_counter()
        self._predict(texts, self.embedder)
        return (time.perf_counter() - started) * 1000

    def _predict(
        self, texts: list[str], embedder: Embedder, *, show_progress: bool = False
    ) -> list[Prediction]:
        """Classify ``texts``, embedding with ``embedder``; a cascade's static stage decides first.

        The static stage of a :class:`CascadeRouter` (``router.cascade_threshold``) decides the
        texts it is confident about, and only the others are embedded, as in the gateway.
        """
        decided: list[Prediction | None] = [None] * len(texts)
        if isinstance(self.router, CascadeRouter):
            decided = self.router.predict_static(texts, nearest=3)
        rest = [i for i, prediction in enumerate(decided) if prediction is None]
        if rest:
            embeddings = embedder.encode([texts[i] for i in rest], show_progress=show_progress)
            for i, prediction in zip(
                rest, self.router.predict_embeddings(embeddings, nearest=3), strict=True
            ):
                decided[i] = prediction
        return [prediction for prediction in decided if prediction is not None]

    def _outcome(self, prediction: Prediction) -> RoutingOutcome:
        domain = prediction.domain
        served_by_base = domain in self._fallback_domains
        reason = prediction.fallback_reason
        if reason is None and served_by_base:
            reason = FallbackReason.FALLBACK_DOMAIN
        return RoutingOutcome(
            predicted=BASE_MODEL if reason is not None else domain,
            top_domain=domain,
            top_target=BASE_MODEL if served_by_base else domain,
            confidence=prediction.confidence,
            eligible=not served_by_base and reason in (None, FallbackReason.LOW_CONFIDENCE),
            fallback_reason=None if reason is None else str(reason),
            scores=dict(prediction.scores),
            similarity=prediction.similarity,
            nearest=tuple(
                {"text": n.text, "label": n.label, "domain": n.domain, "similarity": n.similarity}
                for n in prediction.nearest
            ),
        )
