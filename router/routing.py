"""Routing policy: from a request's ``model`` and conversation to the adapter that serves it.

The same :meth:`RoutingService.route` serves ``POST /v1/route`` and the proxy endpoints, so the
decision the route endpoint reports is the one the proxy applies.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from classifier import DomainRouter, FallbackReason, Neighbour, Prediction
from classifier.cascade import CascadeStage
from router.config import ConfigError, ConversationSettings, SessionSettings
from router.conversation import NO_TEXT_REPORT, TextReport, predict_conversation, predict_static_request
from router.errors import ModelNotFoundError
from router.routing_text import chat_routing_input
from router.sessions import InMemorySessionStore, SessionState, SessionStore

logger = logging.getLogger(__name__)

NO_TEXT = "no_text"
"""Fallback reason: the request has no text to classify."""
EXPLICIT_MODEL = "explicit_model"
"""Fallback reason: the request named the base model."""

_UNDECIDED_REASONS = frozenset({NO_TEXT, FallbackReason.LOW_CONFIDENCE, FallbackReason.OUT_OF_DOMAIN})
"""Fallback reasons that never move a sticky session off its model."""


@dataclass(frozen=True)
class RouteDecision:
    """The model that serves a request, and the reason.

    ``model`` is the served name the backend receives: the adapter's name, or the base model's.
    ``fallback_reason`` is ``None`` exactly when an adapter serves the request. ``domain`` and
    ``confidence`` are ``None`` when the request named a model, so nothing was classified.
    """

    model: str
    adapter: str | None
    domain: str | None
    confidence: float | None
    fallback_reason: str | None
    scores: Mapping[str, float] = field(default_factory=dict)
    nearest: tuple[Neighbour, ...] = ()
    similarity: float | None = None
    routed: bool = True
    routing_ms: float = 0.0
    text: TextReport | None = None
    sticky: bool = False

    @property
    def fallback(self) -> bool:
        """Whether the base model serves the request."""
        return self.fallback_reason is not None

    @property
    def stage(self) -> str | None:
        """The cascade stage that classified the request: ``static`` or ``transformer``.

        ``None`` when nothing was classified, and on the batch path (``route_many``), which does
        not record it.
        """
        return None if self.text is None or self.text.stage is None else str(self.text.stage)

    def to_dict(self) -> dict[str, object]:
        """Return the JSON form of the decision, as ``POST /v1/route`` returns it."""
        return {
            "model": self.model,
            "adapter": self.adapter,
            "domain": self.domain,
            "confidence": self.confidence,
            "fallback": self.fallback,
            "fallback_reason": self.fallback_reason,
            "scores": dict(self.scores),
            "similarity": self.similarity,
            "nearest": [
                {"text": n.text, "label": n.label, "domain": n.domain, "similarity": n.similarity}
                for n in self.nearest
            ],
            "routing_ms": self.routing_ms,
            "routing_text": None if self.text is None else self.text.to_dict(),
            "stage": self.stage,
            "sticky": self.sticky,
        }

    def headers(self) -> dict[str, str]:
        """Return the ``x-router-*`` response headers."""
        return {
            "x-router-adapter": self.model,
            "x-router-domain": self.domain or "none",
            "x-router-confidence": "none" if self.confidence is None else f"{self.confidence:.4f}",
            "x-router-fallback": self.fallback_reason or "none",
        }


class RoutingService:
    """Applies the routing alias, explicit model names, and the domain router's predictions.

    Parameters
    ----------
    domain_router : DomainRouter
    adapters : mapping of str to str or None
        Domain to adapter name; ``None`` serves the domain with the base model.
    base_model : str
        Served name of the base model.
    routing_alias : str
        The ``model`` value that requests routing.
    log_prompts : bool
        Include the routing text in decision logs.
    conversation : ConversationSettings, optional
        Which turns of a conversation are read.
    sessions : SessionSettings, optional
        Sticky-session policy.
    session_store : SessionStore, optional
        Where session state lives; an in-memory store sized by ``sessions`` by default.

    Raises
    ------
    ConfigError
        If a domain the router predicts has no adapter and is not a fallback domain.
    """

    def __init__(
        self,
        domain_router: DomainRouter,
        adapters: Mapping[str, str | None],
        *,
        base_model: str,
        routing_alias: str = "auto",
        log_prompts: bool = False,
        conversation: ConversationSettings | None = None,
        sessions: SessionSettings | None = None,
        session_store: SessionStore | None = None,
    ) -> None:
        missing = [
            d for d in domain_router.domains if d not in adapters and d not in domain_router.fallback_domains
        ]
        if missing:
            raise ConfigError(
                f"domains without an adapter: {', '.join(missing)}: map each under 'adapters' in the config "
                "(null serves a domain with the base model)"
            )
        self.domain_router = domain_router
        self.adapters = dict(adapters)
        self.base_model = base_model
        self.routing_alias = routing_alias
        self.log_prompts = log_prompts
        self.conversation = conversation or ConversationSettings()
        self.sessions = sessions or SessionSettings()
        self.session_store: SessionStore = session_store or InMemorySessionStore(
            self.sessions.max_sessions, self.sessions.ttl_seconds
        )

    @property
    def adapter_names(self) -> list[str]:
        """Every adapter the router can choose, sorted."""
        return sorted({adapter for adapter in self.adapters.values() if adapter is not None})

    @property
    def model_names(self) -> list[str]:
        """Every accepted ``model`` value: the routing alias, the base model and the adapters."""
        return [self.routing_alias, self.base_model, *self.adapter_names]

    def check_model(self, model: str) -> None:
        """Raise :class:`ModelNotFoundError` unless ``model`` is an accepted name."""
        if model not in self.model_names:
            raise ModelNotFoundError(
                f"The model '{model}' does not exist: use '{self.routing_alias}' to route, "
                f"or one of {', '.join(self.model_names[1:])}",
                param="model",
            )

    def route(self, model: str, text: str, *, request_id: str = "-") -> RouteDecision:
        """Decide which model serves a request whose ``model`` field is ``model``.

        ``text`` is the routing text; it is classified only when ``model`` is the routing alias.
        This call embeds text on the calling thread: call it off the event loop.
        """
        self.check_model(model)
        if model != self.routing_alias:
            decision = self._explicit(model)
        elif not text.strip():
            decision = self._no_text()
        else:
            started = time.perf_counter()
            prediction = predict_static_request(self.domain_router, text)
            if prediction is not None:
                report = TextReport("request", None, (), len(text), 1, 1, CascadeStage.STATIC)
            else:
                embeddings, chunking = self.domain_router.embedder.encode_chunked([text])
                prediction = self.domain_router.predict_embeddings(embeddings)[0]
                report = TextReport(
                    "request", None, (), len(text), chunking[0].chunks, chunking[0].total_chunks
                )
            decision = self._from_prediction(prediction, (time.perf_counter() - started) * 1000, report)

        self._log(decision, text, request_id)
        return decision

    def route_conversation(
        self,
        model: str,
        messages: Sequence[Mapping[str, object]],
        *,
        session_id: str | None = None,
        request_id: str = "-",
    ) -> RouteDecision:
        """Decide which model serves a chat request (the routing-text rules are in ``routing_text``).

        With a ``session_id``, a routed conversation keeps its adapter unless the new decision's
        domain scores at least ``sessions.switch_margin`` above the session's domain. Blocking:
        call it off the event loop.
        """
        self.check_model(model)
        if model != self.routing_alias:
            decision = self._explicit(model)
            self._log(decision, "", request_id)
            return decision

        started = time.perf_counter()
        routing_input = chat_routing_input(
            messages,
            context_turns=self.conversation.context_turns,
            include_system=self.conversation.system_prompt == "context",
        )
        prediction, report = predict_conversation(
            self.domain_router,
            routing_input,
            decay=self.conversation.context_decay,
            request_weight=self.conversation.request_weight,
            context_threshold=self.conversation.context_threshold,
            use_context=self.conversation.context_turns > 0,
        )
        elapsed_ms = (time.perf_counter() - started) * 1000
        if prediction is None:
            decision = self._no_text()
        else:
            decision = self._from_prediction(prediction, elapsed_ms, report)

        if session_id is not None and self.sessions.enabled:
            decision = self._apply_session(session_id, decision)
        self._log(decision, routing_input.request, request_id)
        return decision

    def route_many(self, texts: Sequence[str]) -> list[RouteDecision]:
        """Route several texts with the routing alias in one embedding batch."""
        started = time.perf_counter()
        predictions = self.domain_router.predict(list(texts))
        elapsed_ms = (time.perf_counter() - started) * 1000 / max(len(texts), 1)
        return [self._from_prediction(prediction, elapsed_ms) for prediction in predictions]

    def _explicit(self, model: str) -> RouteDecision:
        if model == self.base_model:
            return RouteDecision(
                model=model,
                adapter=None,
                domain=None,
                confidence=None,
                fallback_reason=EXPLICIT_MODEL,
                routed=False,
            )
        return RouteDecision(
            model=model, adapter=model, domain=None, confidence=None, fallback_reason=None, routed=False
        )

    def _no_text(self) -> RouteDecision:
        return RouteDecision(
            model=self.base_model,
            adapter=None,
            domain=None,
            confidence=None,
            fallback_reason=NO_TEXT,
            text=NO_TEXT_REPORT,
        )

    def _apply_session(self, session_id: str, decision: RouteDecision) -> RouteDecision:
        held = self.session_store.get(session_id)
        if held is not None and held.model != decision.model and not self._should_switch(held, decision):
            decision = replace(
                decision,
                model=held.model,
                adapter=held.adapter,
                domain=held.domain,
                fallback_reason=None if held.adapter else decision.fallback_reason,
                sticky=True,
            )
        self.session_store.put(session_id, SessionState(decision.model, decision.adapter, decision.domain))
        return decision

    def _should_switch(self, held: SessionState, decision: RouteDecision) -> bool:
        """Return whether a session leaves its model: only for a decided domain clearly ahead."""
        if decision.domain is None or decision.fallback_reason in _UNDECIDED_REASONS:
            return False
        held_score = decision.scores.get(held.domain, 0.0) if held.domain else 0.0
        return decision.scores.get(decision.domain, 0.0) - held_score >= self.sessions.switch_margin

    def _from_prediction(
        self, prediction: Prediction, routing_ms: float, report: TextReport | None = None
    ) -> RouteDecision:
        reason: str | None = prediction.fallback_reason
        adapter = None if reason else self.adapters.get(prediction.domain)
        if adapter is None and reason is None:
            reason = FallbackReason.FALLBACK_DOMAIN
        return RouteDecision(
            model=adapter or self.base_model,
            adapter=adapter,
            domain=prediction.domain,
            confidence=prediction.confidence,
            fallback_reason=reason,
            scores=prediction.scores,
            nearest=prediction.nearest,
            similarity=prediction.similarity,
            routing_ms=routing_ms,
            text=report,
        )

    def _log(self, decision: RouteDecision, text: str, request_id: str) -> None:
        logger.info(
            "request %s routed to %s (domain=%s confidence=%s fallback=%s)%s",
            request_id,
            decision.model,
            decision.domain,
            "none" if decision.confidence is None else f"{decision.confidence:.3f}",
            decision.fallback_reason or "none",
            f" text={text!r}" if self.log_prompts else "",
        )
