"""Routing policy: from a request's ``model`` and conversation to the adapter that serves it.

The same :meth:`RoutingService.route` serves ``POST /v1/route`` and the proxy endpoints, so the
decision the route endpoint reports is the one the proxy applies.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from classifier import DomainRouter, Neighbour, Prediction
from router.config import ConfigError
from router.errors import ModelNotFoundError

logger = logging.getLogger(__name__)

NO_TEXT = "no_text"
"""Fallback reason: the request has no text to classify."""
EXPLICIT_MODEL = "explicit_model"
"""Fallback reason: the request named the base model."""
FALLBACK_DOMAIN = "fallback_domain"


@dataclass(frozen=True)
class RouteDecision:
    """Which model serves a request, and why.

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

    @property
    def fallback(self) -> bool:
        """Whether the base model serves the request."""
        return self.fallback_reason is not None

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
        The ``model`` value that asks for routing.
    log_prompts : bool
        Include the routing text in decision logs.

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
            decision = RouteDecision(
                model=self.base_model, adapter=None, domain=None, confidence=None, fallback_reason=NO_TEXT
            )
        else:
            started = time.perf_counter()
            prediction = self.domain_router.predict([text])[0]
            decision = self._from_prediction(prediction, (time.perf_counter() - started) * 1000)

        self._log(decision, text, request_id)
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

    def _from_prediction(self, prediction: Prediction, routing_ms: float) -> RouteDecision:
        reason: str | None = prediction.fallback_reason
        adapter = None if reason else self.adapters.get(prediction.domain)
        if adapter is None and reason is None:
            reason = FALLBACK_DOMAIN
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
