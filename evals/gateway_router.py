"""Evaluate a running gateway through ``POST /v1/route``, the decision its proxy applies."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import httpx

from evals.dataset import EvalRecord
from evals.errors import GatewayError
from evals.label_map import RouterDomains
from evals.metrics import latency_percentiles
from evals.outcome import RoutingOutcome

logger = logging.getLogger(__name__)

PROBE_TEXT = "hello"
"""Text of the request that learns the gateway's domains before the evaluation starts."""


class GatewayRouter:
    """A gateway at ``url``, asked for one routing decision per prompt, one request at a time.

    The gateway does not list its domains, so they are learned from the ``scores`` of its
    responses. A domain is a fallback domain once a response falls back with reason
    ``fallback_domain`` for it.

    Parameters
    ----------
    url : str
        Base URL of the gateway, with or without ``/v1`` (``http://127.0.0.1:8000``).
    timeout : float
        Seconds to wait for each response.
    api_key : str, optional
        Bearer token for a gateway that requires API keys.
    name : str
        Row name in reports.
    """

    def __init__(
        self, url: str, *, timeout: float = 30.0, api_key: str | None = None, name: str = ""
    ) -> None:
        base = url.rstrip("/")
        self.base_url = base.removesuffix("/v1")
        self.name = name or self.base_url
        self.timeout = timeout
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(headers=headers, timeout=httpx.Timeout(timeout))
        self._domains: set[str] = set()
        self._fallback_domains: set[str] = set()
        self._round_trip_ms: list[float] = []
        self._routing_ms: list[float] = []

    def describe(self) -> dict[str, Any]:
        """Return the gateway URL and the domains learned from its responses."""
        domains = self.domains()
        return {
            "source": {"url": self.base_url},
            "domains": sorted(self._domains),
            "fallback_domains": sorted(domains.fallback),
        }

    def domains(self) -> RouterDomains:
        """Return the domains seen in the gateway's responses, sending a probe if none was seen yet."""
        if not self._domains:
            self._learn(
                self._post({"text": PROBE_TEXT}, where="the probe request"), where="the probe request"
            )
        return RouterDomains(
            routable=tuple(sorted(self._domains - self._fallback_domains)),
            fallback=frozenset(self._fallback_domains),
        )

    def route(self, records: Sequence[EvalRecord]) -> list[RoutingOutcome]:
        """Send one ``POST /v1/route`` per record and return the outcomes, in order.

        Raises
        ------
        GatewayError
            If the gateway cannot be reached, responds with an error status, or responds with a
            body that is not a routing decision. The message names the record's line.
        """
        outcomes = []
        for record in records:
            body: dict[str, Any] = (
                {"messages": list(record.messages)} if record.messages is not None else {"text": record.text}
            )
            started = time.perf_counter()
            decision = self._post(body, where=f"line {record.line}")
            self._round_trip_ms.append((time.perf_counter() - started) * 1000)
            outcome, routing_ms = self._learn(decision, where=f"line {record.line}")
            if outcome.top_domain is not None:
                self._routing_ms.append(routing_ms)
            outcomes.append(outcome)
        return outcomes

    def latency(self, records: Sequence[EvalRecord]) -> dict[str, Any]:
        """Return the round-trip and the gateway-reported routing latency of the requests sent.

        The gateway routes one prompt per request, so there is no batched figure.
        """
        if not self._round_trip_ms:
            return {"batch_1": None, "batched": None}
        return {
            "batch_1": {"calls": len(self._round_trip_ms), **latency_percentiles(self._round_trip_ms)},
            "gateway_routing": {"calls": len(self._routing_ms), **latency_percentiles(self._routing_ms)},
            "batched": None,
        }

    def close(self) -> None:
        """Close the HTTP connections."""
        self._client.close()

    def _post(self, body: dict[str, Any], *, where: str) -> dict[str, Any]:
        url = f"{self.base_url}/v1/route"
        try:
            response = self._client.post(url, json=body)
        except httpx.TimeoutException:
            raise GatewayError(
                f"{url} timed out after {self.timeout:g} s on {where}: check the gateway or raise --timeout"
            ) from None
        except httpx.HTTPError as error:
            raise GatewayError(
                f"cannot reach the gateway at {url} ({error}): start it with `adapter-router serve` "
                "or fix --url"
            ) from None
        if response.status_code != 200:
            raise GatewayError(
                f"{url} returned HTTP {response.status_code} on {where}: {_error_message(response)}"
            )
        try:
            decision = response.json()
        except ValueError:
            raise GatewayError(
                f"{url} returned a body that is not JSON on {where}: is --url a gateway?"
            ) from None
        if not isinstance(decision, dict):
            raise GatewayError(
                f"{url} returned {type(decision).__name__}, not a routing decision, on {where}"
            )
        return decision

    def _learn(self, decision: dict[str, Any], *, where: str) -> tuple[RoutingOutcome, float]:
        try:
            outcome = RoutingOutcome.from_decision(decision)
            routing_ms = float(decision["routing_ms"])
        except (KeyError, TypeError, ValueError) as error:
            raise GatewayError(
                f"{self.base_url}/v1/route returned an invalid routing decision on {where} "
                f"({type(error).__name__}: {error}): is --url an adapter-router gateway?"
            ) from None
        self._domains.update(outcome.scores)
        if outcome.fallback_reason == "fallback_domain" and outcome.top_domain is not None:
            self._fallback_domains.add(outcome.top_domain)
        return outcome, routing_ms


def _error_message(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text[:200]
