"""Score one router's outcomes against the expected targets."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from evals.dataset import EvalRecord
from evals.label_map import BASE_MODEL
from evals.metrics import (
    ClassScores,
    ReliabilityBin,
    RiskCoverage,
    accuracy,
    auroc,
    class_scores,
    confusion_matrix,
    expected_calibration_error,
    fallback_scores,
    in_domain_accuracy,
    macro_f1,
    reliability_bins,
    risk_coverage,
    routed_precision,
)
from evals.outcome import RoutingOutcome

RELIABILITY_BINS = 10
CURVE_POINTS_IN_JSON = 200


@dataclass(frozen=True)
class Evaluation:
    """Every figure of one router on one set of records.

    ``summary`` contains the headline numbers (see :func:`evaluate`). ``classes`` orders the
    rows and columns of ``confusion``: the domains, then :data:`BASE_MODEL`.
    """

    name: str
    router: Mapping[str, Any]
    summary: Mapping[str, float | int | None]
    classes: list[str]
    per_class: Mapping[str, ClassScores]
    confusion: np.ndarray
    risk_coverage: RiskCoverage
    reliability: list[ReliabilityBin]
    latency: Mapping[str, Any]
    misclassified: list[dict[str, Any]]
    routing_confidence: np.ndarray
    expected_fallback: np.ndarray
    groups: Mapping[str, Mapping[str, float | int]] = field(default_factory=dict)
    """Accuracy per value of the ``--group-by`` field, when one was given."""

    def to_dict(self) -> dict[str, Any]:
        """Return the evaluation as JSON-ready data (the risk-coverage curve thinned to 200 points)."""
        curve = self.risk_coverage
        keep = _thinned_indices(len(curve.coverage), CURVE_POINTS_IN_JSON)
        return {
            "name": self.name,
            "router": dict(self.router),
            "metrics": dict(self.summary),
            "per_domain": {name: asdict(scores) for name, scores in self.per_class.items()},
            "confusion_matrix": {
                "labels": self.classes,
                "rows": "expected",
                "columns": "predicted",
                "matrix": self.confusion.tolist(),
            },
            "risk_coverage": {
                "aurc": curve.aurc,
                "threshold": curve.thresholds[keep].tolist(),
                "coverage": curve.coverage[keep].tolist(),
                "risk": curve.risk[keep].tolist(),
            },
            "reliability": [asdict(b) for b in self.reliability],
            "latency": dict(self.latency),
            "misclassified": self.misclassified,
            "groups": {name: dict(figures) for name, figures in self.groups.items()},
        }


def evaluate(
    name: str,
    router: Mapping[str, Any],
    records: Sequence[EvalRecord],
    targets: Sequence[str],
    outcomes: Sequence[RoutingOutcome],
    *,
    routable_domains: Sequence[str],
    latency: Mapping[str, Any],
    misclassified: int = 20,
) -> Evaluation:
    """Compute every metric of one router.

    Parameters
    ----------
    name : str
    router : mapping
        The router's description, stored as is.
    records, targets, outcomes : sequences of equal length
        The prompts, their expected targets and what the router did.
    routable_domains : sequence of str
        The router's domains with an adapter; every one gets a confusion-matrix row.
    latency : mapping
        Latency figures, stored as is.
    misclassified : int
        How many misclassified rows to keep, most confident first.

    Summary keys:

    - ``records``, ``in_domain``, ``expected_fallback``, ``misclassified``: counts.
    - ``accuracy``: over all prompts, the base model counting as a class. ``macro_f1``: the same
      classes.
    - ``in_domain_accuracy``: in-domain prompts routed to their own adapter.
    - ``routed_precision``, ``coverage``, ``fallback_precision``, ``fallback_recall``,
      ``fallback_rate``.
    - ``auroc``: the routing confidence separating in-domain from expected-fallback prompts.
    - ``ece``, ``aurc``: calibration error and area under the risk-coverage curve.
    """
    predicted = [outcome.predicted for outcome in outcomes]
    expected_fallback = np.array([target == BASE_MODEL for target in targets], dtype=bool)
    top_correct = np.array([o.top_target == t for o, t in zip(outcomes, targets, strict=True)], dtype=bool)
    confidence = np.array([o.confidence if o.confidence is not None else 0.0 for o in outcomes])
    routing_confidence = np.array([routing_confidence_of(outcome) for outcome in outcomes])
    routing_scores = np.where([o.eligible for o in outcomes], confidence, -np.inf)
    classified = np.array([o.confidence is not None for o in outcomes], dtype=bool)

    classes = [*sorted(set(routable_domains) | (set(targets) - {BASE_MODEL})), BASE_MODEL]
    fallback = fallback_scores(targets, predicted)
    curve = risk_coverage(routing_scores, top_correct)
    summary: dict[str, float | int | None] = {
        "records": len(records),
        "in_domain": int((~expected_fallback).sum()),
        "expected_fallback": int(expected_fallback.sum()),
        "accuracy": accuracy(targets, predicted),
        "macro_f1": macro_f1(targets, predicted),
        "in_domain_accuracy": in_domain_accuracy(targets, predicted),
        "routed_precision": routed_precision(targets, predicted),
        "coverage": 1.0 - fallback.rate,
        "fallback_precision": fallback.precision,
        "fallback_recall": fallback.recall,
        "fallback_rate": fallback.rate,
        "auroc": auroc(routing_confidence, ~expected_fallback),
        "ece": expected_calibration_error(confidence[classified], top_correct[classified], RELIABILITY_BINS),
        "aurc": curve.aurc,
        "misclassified": sum(
            outcome.predicted != target for outcome, target in zip(outcomes, targets, strict=True)
        ),
    }
    return Evaluation(
        name=name,
        router=router,
        summary=summary,
        classes=classes,
        per_class=class_scores(targets, predicted, classes),
        confusion=confusion_matrix(targets, predicted, classes),
        risk_coverage=curve,
        reliability=reliability_bins(confidence[classified], top_correct[classified], RELIABILITY_BINS),
        latency=latency,
        misclassified=_misclassified_rows(records, targets, outcomes, misclassified),
        routing_confidence=routing_confidence,
        expected_fallback=expected_fallback,
    )


def group_accuracy(
    records: Sequence[EvalRecord], targets: Sequence[str], outcomes: Sequence[RoutingOutcome], field_name: str
) -> dict[str, dict[str, float | int]]:
    """Return records, correct and accuracy for each value of the records' ``field_name``.

    Records without the field count under ``(none)``. A record is correct when it went where its
    label points: its domain's adapter, or the base model for an expected fallback.
    """
    groups: dict[str, list[int]] = {}
    for record, target, outcome in zip(records, targets, outcomes, strict=True):
        counts = groups.setdefault(record.fields.get(field_name, "(none)"), [0, 0])
        counts[0] += 1
        counts[1] += int(outcome.predicted == target)
    return {
        name: {"records": total, "correct": correct, "accuracy": correct / total}
        for name, (total, correct) in sorted(groups.items())
    }


def routing_confidence_of(outcome: RoutingOutcome) -> float:
    """Return the confidence that the prompt belongs to an adapter's domain.

    This is the router's confidence when its best domain has an adapter, and 0 when the best
    domain is served by the base model (a fallback domain) or nothing was classified.
    """
    if outcome.confidence is None or outcome.top_target == BASE_MODEL:
        return 0.0
    return outcome.confidence


def _misclassified_rows(
    records: Sequence[EvalRecord], targets: Sequence[str], outcomes: Sequence[RoutingOutcome], limit: int
) -> list[dict[str, Any]]:
    wrong = [
        i
        for i, (target, outcome) in enumerate(zip(targets, outcomes, strict=True))
        if outcome.predicted != target
    ]
    wrong.sort(key=lambda i: -(outcomes[i].confidence or 0.0))
    rows = []
    for i in wrong[:limit]:
        record, outcome = records[i], outcomes[i]
        rows.append(
            {
                "line": record.line,
                "text": record.text,
                "label": record.label,
                "expected": targets[i],
                "predicted": outcome.predicted,
                "top_domain": outcome.top_domain,
                "confidence": outcome.confidence,
                "fallback_reason": outcome.fallback_reason,
                "scores": dict(sorted(outcome.scores.items(), key=lambda item: -item[1])[:3]),
                "similarity": outcome.similarity,
                "nearest": dict(outcome.nearest[0]) if outcome.nearest else None,
            }
        )
    return rows


def _thinned_indices(length: int, points: int) -> np.ndarray:
    if length <= points:
        return np.arange(length)
    return np.unique(np.linspace(0, length - 1, points).round().astype(np.int64))
