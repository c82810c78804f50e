"""Choose confidence thresholds on validation outcomes for a target.

Targets:

- ``precision:P``: the lowest threshold whose routed precision (share of routed prompts sent
  to the right adapter) is at least ``P``, so as many prompts as possible still route.
- ``fallback-rate:R``: the highest threshold that sends at most a share ``R`` of the prompts to
  the base model.
- ``balance``: the threshold that maximises in-domain accuracy plus fallback recall (Youden's
  J statistic, with "routed to the right adapter" as the true positive).

A threshold routes the prompts whose confidence is at least the threshold. Each threshold is
placed halfway between the last routed confidence and the next lower one, so that validation
prompts do not sit on it. Only the confidence thresholds change; the out-of-domain similarity
threshold is left as trained.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from evals.errors import CalibrationError, EvalError
from evals.label_map import BASE_MODEL
from evals.metrics import accuracy, fallback_scores, in_domain_accuracy, macro_f1, routed_precision
from evals.outcome import RoutingOutcome

MIN_DOMAIN_RECORDS = 20
"""Minimum number of validation prompts with a given best domain for that domain to get its own threshold."""

TargetKind = Literal["precision", "fallback-rate", "balance"]


@dataclass(frozen=True)
class CalibrationTarget:
    """The goal that thresholds are chosen for. ``value`` is ``None`` for ``balance``."""

    kind: TargetKind
    value: float | None = None

    def __str__(self) -> str:
        return self.kind if self.value is None else f"{self.kind}:{self.value:g}"


@dataclass(frozen=True)
class ThresholdSweep:
    """Routing figures at every candidate threshold, highest threshold first.

    Candidate 0 routes nothing. Candidate ``k > 0`` routes every prompt whose confidence is at
    least the ``k``-th highest distinct confidence.
    """

    thresholds: np.ndarray
    routed: np.ndarray
    routed_correct: np.ndarray
    routed_expected_fallback: np.ndarray
    total: int
    in_domain: int
    expected_fallback: int

    @property
    def in_domain_accuracy(self) -> np.ndarray:
        """Share of in-domain prompts routed to their own adapter."""
        return self.routed_correct / max(self.in_domain, 1)

    @property
    def fallback_recall(self) -> np.ndarray:
        """Share of expected-fallback prompts that fall back."""
        return (self.expected_fallback - self.routed_expected_fallback) / max(self.expected_fallback, 1)

    @property
    def routed_precision(self) -> np.ndarray:
        """Share of routed prompts sent to the right adapter (0 where nothing routes)."""
        return np.divide(
            self.routed_correct, self.routed, out=np.zeros(len(self.routed)), where=self.routed > 0
        )

    @property
    def fallback_rate(self) -> np.ndarray:
        """Share of all prompts that fall back."""
        return (self.total - self.routed) / max(self.total, 1)


@dataclass(frozen=True)
class Calibration:
    """Chosen thresholds and the validation figures they give.

    ``domains`` contains per-domain thresholds, empty unless calibrated per domain. A domain
    without an entry uses ``confidence``. ``domain_details`` gives, per domain, the threshold,
    the validation prompts it was chosen on, and whether the target was reached.
    """

    target: CalibrationTarget
    confidence: float
    domains: dict[str, float] = field(default_factory=dict)
    figures: dict[str, float] = field(default_factory=dict)
    domain_details: dict[str, dict[str, Any]] = field(default_factory=dict)


def parse_target(text: str) -> CalibrationTarget:
    """Parse ``precision:P``, ``fallback-rate:R`` or ``balance``, with P and R in (0, 1].

    Raises
    ------
    EvalError
        If the text has another form. The message lists the accepted forms.
    """
    kind, _, value = text.partition(":")
    kind = kind.strip().replace("_", "-")
    usage = "use precision:P (e.g. precision:0.95), fallback-rate:R (e.g. fallback-rate:0.1) or balance"
    if kind == "balance" and not value:
        return CalibrationTarget("balance")
    if kind not in ("precision", "fallback-rate") or not value:
        raise EvalError(f"invalid --target {text!r}: {usage}")
    try:
        number = float(value)
    except ValueError:
        raise EvalError(f"invalid --target {text!r}: {value!r} is not a number: {usage}") from None
    if not 0.0 < number <= 1.0:
        raise EvalError(f"invalid --target {text!r}: the value must be in (0, 1]")
    return CalibrationTarget(kind, number)  # type: ignore[arg-type]


def sweep_thresholds(
    confidence: Sequence[float],
    correct: Sequence[bool],
    expected_fallback: Sequence[bool],
    *,
    total: int,
    in_domain: int,
    n_expected_fallback: int,
) -> ThresholdSweep:
    """Compute routing figures at every threshold for the prompts a threshold can route.

    Parameters
    ----------
    confidence, correct, expected_fallback : array-likes of shape (n_routable,)
        For each prompt that some threshold routes: its confidence, whether its best domain is
        the expected one, and whether it should fall back.
    total, in_domain, n_expected_fallback : int
        Denominators: all prompts, in-domain prompts, expected-fallback prompts, counting those
        that no threshold routes.
    """
    confidence_array = np.asarray(confidence, dtype=np.float64)
    order = np.argsort(-confidence_array, kind="stable")
    values = confidence_array[order]
    correct_counts = np.concatenate([[0], np.cumsum(np.asarray(correct, dtype=np.int64)[order])])
    fallback_counts = np.concatenate([[0], np.cumsum(np.asarray(expected_fallback, dtype=np.int64)[order])])

    # Candidate k > 0 routes the prompts up to the end of the k-th run of equal confidences.
    run_ends = (
        np.flatnonzero(np.append(values[1:] != values[:-1], True)) + 1 if len(values) else np.zeros(0, int)
    )
    routed = np.concatenate([[0], run_ends]).astype(np.int64)
    distinct = values[run_ends - 1] if len(values) else np.zeros(0)
    lower = np.append(distinct[1:], 0.0)
    highest = distinct[0] if len(distinct) else 0.0
    route_none = (1.0 + highest) / 2 if highest < 1.0 else 1.0
    # Summed float32 probabilities can exceed 1 by rounding, but thresholds must stay in [0, 1].
    thresholds = np.clip(np.concatenate([[route_none], (distinct + lower) / 2]), 0.0, 1.0)

    return ThresholdSweep(
        thresholds=thresholds,
        routed=routed,
        routed_correct=correct_counts[routed],
        routed_expected_fallback=fallback_counts[routed],
        total=total,
        in_domain=in_domain,
        expected_fallback=n_expected_fallback,
    )


def choose_threshold(sweep: ThresholdSweep, target: CalibrationTarget) -> int:
    """Return the index of the candidate threshold that meets ``target`` best.

    Raises
    ------
    CalibrationError
        If no candidate reaches a precision or fallback-rate target, or ``balance`` lacks
        in-domain or expected-fallback prompts.
    """
    if target.kind == "precision":
        assert target.value is not None
        feasible = np.flatnonzero((sweep.routed > 0) & (sweep.routed_precision >= target.value))
        if len(feasible) == 0:
            best = int(np.argmax(sweep.routed_precision))
            raise CalibrationError(
                f"no threshold reaches routed precision {target.value:g} "
                f"(best {sweep.routed_precision[best]:.4f} at threshold {sweep.thresholds[best]:.4f}): "
                "lower the target"
            )
        return int(feasible[-1])

    if target.kind == "fallback-rate":
        assert target.value is not None
        feasible = np.flatnonzero(sweep.fallback_rate <= target.value)
        if len(feasible) == 0:
            raise CalibrationError(
                f"no threshold keeps the fallback rate at {target.value:g} or below: even routing every "
                f"prompt leaves {sweep.fallback_rate[-1]:.4f} on the base model (fallback domains, "
                "out-of-domain prompts): raise the target"
            )
        return int(feasible[0])

    if sweep.expected_fallback == 0 or sweep.in_domain == 0:
        missing = "expected-fallback" if sweep.expected_fallback == 0 else "in-domain"
        raise CalibrationError(
            f"the balance target needs {missing} prompts in the validation records: "
            "mark fallback labels with --fallback-label, or use precision:P or fallback-rate:R"
        )
    balance = sweep.in_domain_accuracy + sweep.fallback_recall
    best = np.flatnonzero(balance == balance.max())
    # Among equally good thresholds take the middle one, the farthest from both ends of the plateau.
    return int(best[len(best) // 2])


def calibrate(
    outcomes: Sequence[RoutingOutcome],
    targets: Sequence[str],
    target: CalibrationTarget,
    *,
    per_domain: bool = False,
    min_domain_records: int = MIN_DOMAIN_RECORDS,
) -> Calibration:
    """Choose the confidence threshold(s) for ``target`` from validation outcomes.

    With ``per_domain``, each domain that is the best domain of at least
    ``min_domain_records`` routable prompts gets its own threshold, chosen on those prompts.
    Other domains keep the global threshold. The balance objective is a sum over domains, so
    choosing each domain's best threshold maximises the global balance.
    """
    confidence = np.array([o.confidence if o.confidence is not None else 0.0 for o in outcomes])
    eligible = np.array([o.eligible for o in outcomes], dtype=bool)
    expected_fallback = np.array([t == BASE_MODEL for t in targets], dtype=bool)
    correct = np.array([o.top_target == t for o, t in zip(outcomes, targets, strict=True)], dtype=bool)
    top_domains = np.array([o.top_domain or "" for o in outcomes], dtype=object)
    totals = {
        "total": len(outcomes),
        "in_domain": int((~expected_fallback).sum()),
        "n_expected_fallback": int(expected_fallback.sum()),
    }

    sweep = sweep_thresholds(confidence[eligible], correct[eligible], expected_fallback[eligible], **totals)
    global_threshold = float(sweep.thresholds[choose_threshold(sweep, target)])

    domain_thresholds: dict[str, float] = {}
    details: dict[str, dict[str, Any]] = {}
    if per_domain:
        for domain in sorted(set(top_domains[eligible].tolist())):
            members = eligible & (top_domains == domain)
            count = int(members.sum())
            if count < min_domain_records:
                details[domain] = {"threshold": global_threshold, "records": count, "own_threshold": False}
                continue
            domain_totals = totals if target.kind == "balance" else {**totals, "total": count}
            domain_sweep = sweep_thresholds(
                confidence[members], correct[members], expected_fallback[members], **domain_totals
            )
            try:
                threshold = float(domain_sweep.thresholds[choose_threshold(domain_sweep, target)])
                reached = True
            except CalibrationError:
                # The domain cannot meet the target at any threshold: it routes nothing.
                threshold, reached = float(domain_sweep.thresholds[0]), False
            domain_thresholds[domain] = threshold
            details[domain] = {
                "threshold": threshold,
                "records": count,
                "own_threshold": True,
                "reached": reached,
            }

    predicted = [
        o.top_domain
        if o.eligible and (o.confidence or 0.0) >= domain_thresholds.get(o.top_domain or "", global_threshold)
        else BASE_MODEL
        for o in outcomes
    ]
    return Calibration(
        target=target,
        confidence=global_threshold,
        domains=domain_thresholds,
        figures=routing_figures(targets, predicted),
        domain_details=details,
    )


def routing_figures(targets: Sequence[str], predicted: Sequence[str]) -> dict[str, float]:
    """Return the headline routing figures of ``predicted`` against ``targets``."""
    fallback = fallback_scores(targets, predicted)
    return {
        "records": len(targets),
        "accuracy": accuracy(targets, predicted),
        "macro_f1": macro_f1(targets, predicted),
        "in_domain_accuracy": in_domain_accuracy(targets, predicted),
        "routed_precision": routed_precision(targets, predicted),
        "fallback_precision": fallback.precision,
        "fallback_recall": fallback.recall,
        "fallback_rate": fallback.rate,
    }
