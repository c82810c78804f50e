"""Metric functions on plain arrays: classification, fallback, ranking, calibration, latency.

Every function takes array-likes of equal length, one entry per evaluated prompt. Targets are
domain names or :data:`evals.label_map.BASE_MODEL`. Ratios with an empty denominator are 0.0,
as in scikit-learn's ``zero_division=0``; AUROC with a missing class is ``None``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from evals.label_map import BASE_MODEL


@dataclass(frozen=True)
class ClassScores:
    """Precision, recall and F1 of one target, and its support (expected count)."""

    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class FallbackScores:
    """Fallback quality: precision, recall and rate of falling back to the base model.

    ``precision``: share of fallbacks that were expected. ``recall``: share of expected
    fallbacks that fell back. ``rate``: share of all prompts that fell back.
    """

    precision: float
    recall: float
    rate: float


@dataclass(frozen=True)
class RiskCoverage:
    """The risk-coverage curve of routing by confidence, one point per distinct confidence.

    At ``thresholds[i]``, ``coverage[i]`` is the share of all prompts routed to an adapter and
    ``risk[i]`` the share of those routed prompts whose adapter is wrong. ``aurc`` is the area
    under the step curve (lower is better).
    """

    thresholds: np.ndarray
    coverage: np.ndarray
    risk: np.ndarray
    aurc: float


@dataclass(frozen=True)
class ReliabilityBin:
    """One equal-width confidence bin of a reliability diagram."""

    lower: float
    upper: float
    count: int
    mean_confidence: float
    accuracy: float


def accuracy(expected: Sequence[str], predicted: Sequence[str]) -> float:
    """Return the share of prompts whose predicted target equals the expected one."""
    expected_array, predicted_array = _as_arrays(expected, predicted)
    return _ratio(np.sum(expected_array == predicted_array), len(expected_array))


def confusion_matrix(expected: Sequence[str], predicted: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    """Return counts of shape (len(classes), len(classes)): rows expected, columns predicted.

    Targets outside ``classes`` are not counted.
    """
    expected_array, predicted_array = _as_arrays(expected, predicted)
    position = {name: i for i, name in enumerate(classes)}
    matrix = np.zeros((len(classes), len(classes)), dtype=np.int64)
    for true, guess in zip(expected_array, predicted_array, strict=True):
        if true in position and guess in position:
            matrix[position[true], position[guess]] += 1
    return matrix


def class_scores(
    expected: Sequence[str], predicted: Sequence[str], classes: Sequence[str]
) -> dict[str, ClassScores]:
    """Return precision, recall, F1 and support of each target in ``classes``."""
    expected_array, predicted_array = _as_arrays(expected, predicted)
    scores = {}
    for name in classes:
        true_positive = int(np.sum((expected_array == name) & (predicted_array == name)))
        support = int(np.sum(expected_array == name))
        predicted_count = int(np.sum(predicted_array == name))
        precision = _ratio(true_positive, predicted_count)
        recall = _ratio(true_positive, support)
        f1 = _ratio(2 * precision * recall, precision + recall)
        scores[name] = ClassScores(precision, recall, f1, support)
    return scores


def macro_f1(expected: Sequence[str], predicted: Sequence[str]) -> float:
    """Return the unweighted mean F1 over every target that is expected or predicted.

    This is scikit-learn's ``f1_score(expected, predicted, average="macro")``.
    """
    expected_array, predicted_array = _as_arrays(expected, predicted)
    classes = sorted(set(expected_array.tolist()) | set(predicted_array.tolist()))
    if not classes:
        return 0.0
    scores = class_scores(expected_array, predicted_array, classes)
    return float(np.mean([score.f1 for score in scores.values()]))


def in_domain_accuracy(expected: Sequence[str], predicted: Sequence[str]) -> float:
    """Return the share of in-domain prompts routed to their own domain's adapter.

    A fallback to the base model counts as wrong for an in-domain prompt.
    """
    expected_array, predicted_array = _as_arrays(expected, predicted)
    in_domain = expected_array != BASE_MODEL
    return _ratio(np.sum(predicted_array[in_domain] == expected_array[in_domain]), np.sum(in_domain))


def routed_precision(expected: Sequence[str], predicted: Sequence[str]) -> float:
    """Return the share of prompts routed to an adapter whose adapter is the right one."""
    expected_array, predicted_array = _as_arrays(expected, predicted)
    routed = predicted_array != BASE_MODEL
    return _ratio(np.sum(predicted_array[routed] == expected_array[routed]), np.sum(routed))


def fallback_scores(expected: Sequence[str], predicted: Sequence[str]) -> FallbackScores:
    """Return fallback precision, recall and rate (see :class:`FallbackScores`)."""
    expected_array, predicted_array = _as_arrays(expected, predicted)
    expected_fallback = expected_array == BASE_MODEL
    fell_back = predicted_array == BASE_MODEL
    both = np.sum(expected_fallback & fell_back)
    return FallbackScores(
        precision=_ratio(both, np.sum(fell_back)),
        recall=_ratio(both, np.sum(expected_fallback)),
        rate=_ratio(np.sum(fell_back), len(fell_back)),
    )


def auroc(scores: Sequence[float], positive: Sequence[bool]) -> float | None:
    """Return the area under the ROC curve of ``scores`` separating ``positive`` from the rest.

    This is the probability that a random positive scores above a random negative, ties
    counting one half (the Mann-Whitney U statistic). ``None`` when either class is empty.
    """
    score_array = np.asarray(scores, dtype=np.float64)
    positive_array = np.asarray(positive, dtype=bool)
    n_positive = int(positive_array.sum())
    n_negative = len(positive_array) - n_positive
    if n_positive == 0 or n_negative == 0:
        return None

    ranks = _average_ranks(score_array)
    u_statistic = ranks[positive_array].sum() - n_positive * (n_positive + 1) / 2
    return float(u_statistic / (n_positive * n_negative))


def reliability_bins(
    confidence: Sequence[float], correct: Sequence[bool], n_bins: int = 10
) -> list[ReliabilityBin]:
    """Group predictions into ``n_bins`` equal-width confidence bins over [0, 1].

    Bin ``i`` contains confidences in ``[i / n_bins, (i + 1) / n_bins)``, and the last bin
    also contains 1.0. Empty bins are kept with count 0.
    """
    confidence_array = np.clip(np.asarray(confidence, dtype=np.float64), 0.0, 1.0)
    correct_array = np.asarray(correct, dtype=bool)
    bin_ids = np.minimum((confidence_array * n_bins).astype(np.int64), n_bins - 1)

    bins = []
    for i in range(n_bins):
        members = bin_ids == i
        count = int(members.sum())
        bins.append(
            ReliabilityBin(
                lower=i / n_bins,
                upper=(i + 1) / n_bins,
                count=count,
                mean_confidence=float(confidence_array[members].mean()) if count else 0.0,
                accuracy=float(correct_array[members].mean()) if count else 0.0,
            )
        )
    return bins


def expected_calibration_error(
    confidence: Sequence[float], correct: Sequence[bool], n_bins: int = 10
) -> float:
    """Return the expected calibration error over ``n_bins`` equal-width bins.

    ECE = sum over bins of (bin count / total) * |accuracy - mean confidence|.
    """
    total = len(confidence)
    if total == 0:
        return 0.0
    bins = reliability_bins(confidence, correct, n_bins)
    return float(sum(b.count / total * abs(b.accuracy - b.mean_confidence) for b in bins))


def risk_coverage(scores: Sequence[float], correct: Sequence[bool]) -> RiskCoverage:
    """Return the risk-coverage curve of routing the prompts whose score reaches a threshold.

    Parameters
    ----------
    scores : array-like of shape (n_prompts,)
        Routing confidence; ``-inf`` marks a prompt that no threshold routes (for example one
        whose best domain is a fallback domain). Such prompts still count in the coverage
        denominator.
    correct : array-like of bool, shape (n_prompts,)
        Whether routing the prompt would send it to the right adapter.
    """
    score_array = np.asarray(scores, dtype=np.float64)
    correct_array = np.asarray(correct, dtype=bool)
    total = len(score_array)
    routable = np.isfinite(score_array)
    if total == 0 or not routable.any():
        empty = np.zeros(0)
        return RiskCoverage(empty, empty, empty, 0.0)

    order = np.argsort(-score_array[routable], kind="stable")
    sorted_scores = score_array[routable][order]
    correct_counts = np.cumsum(correct_array[routable][order])
    # The last position of each run of equal scores: routing at that score routes the whole run.
    run_ends = np.flatnonzero(np.append(sorted_scores[1:] != sorted_scores[:-1], True))

    routed = run_ends + 1
    coverage = routed / total
    risk = 1.0 - correct_counts[run_ends] / routed
    widths = np.diff(np.concatenate([[0.0], coverage]))
    return RiskCoverage(
        thresholds=sorted_scores[run_ends],
        coverage=coverage,
        risk=risk,
        aurc=float(np.sum(widths * risk)),
    )


def latency_percentiles(milliseconds: Sequence[float]) -> dict[str, float]:
    """Return the p50, p95 and p99 of latencies in milliseconds (linear interpolation)."""
    values = np.asarray(milliseconds, dtype=np.float64)
    if len(values) == 0:
        raise ValueError("no latency samples")
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {"p50_ms": float(p50), "p95_ms": float(p95), "p99_ms": float(p99)}


def _as_arrays(expected: Sequence[str], predicted: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    expected_array = np.asarray(expected, dtype=object)
    predicted_array = np.asarray(predicted, dtype=object)
    if expected_array.shape != predicted_array.shape:
        raise ValueError(
            f"expected has {len(expected_array)} entries but predicted has {len(predicted_array)}"
        )
    return expected_array, predicted_array


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator else 0.0


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """Return 1-based ranks of ``values``, ties sharing their average rank."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    ranks = np.empty(len(values), dtype=np.float64)
    start = 0
    for end in np.append(np.flatnonzero(sorted_values[1:] != sorted_values[:-1]) + 1, len(values)):
        ranks[order[start:end]] = (start + 1 + end) / 2
        start = end
    return ranks
