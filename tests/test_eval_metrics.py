"""Evaluation metrics and threshold calibration against hand-computed and scikit-learn values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as sk

from evals.calibration import CalibrationTarget, calibrate, choose_threshold, parse_target, sweep_thresholds
from evals.errors import CalibrationError, EvalError
from evals.label_map import BASE_MODEL
from evals.metrics import (
    accuracy,
    auroc,
    class_scores,
    confusion_matrix,
    expected_calibration_error,
    fallback_scores,
    in_domain_accuracy,
    latency_percentiles,
    macro_f1,
    reliability_bins,
    risk_coverage,
    routed_precision,
)
from evals.outcome import RoutingOutcome

B = BASE_MODEL
EXPECTED = ["math", "math", "code", "code", "code", "legal", B, B, B, "math"]
PREDICTED = ["math", "code", "code", "code", B, "math", B, "code", B, "math"]
CLASSES = ["code", "legal", "math", B]


def test_accuracy_matches_sklearn():
    assert accuracy(EXPECTED, PREDICTED) == pytest.approx(sk.accuracy_score(EXPECTED, PREDICTED))
    assert accuracy(EXPECTED, PREDICTED) == pytest.approx(0.6)


def test_confusion_matrix_matches_sklearn():
    ours = confusion_matrix(EXPECTED, PREDICTED, CLASSES)

    np.testing.assert_array_equal(ours, sk.confusion_matrix(EXPECTED, PREDICTED, labels=CLASSES))
    assert ours[CLASSES.index("code"), CLASSES.index(B)] == 1
    assert ours[CLASSES.index(B), CLASSES.index("code")] == 1


def test_class_scores_match_sklearn():
    precision, recall, f1, support = sk.precision_recall_fscore_support(
        EXPECTED, PREDICTED, labels=CLASSES, zero_division=0
    )
    ours = class_scores(EXPECTED, PREDICTED, CLASSES)

    for i, name in enumerate(CLASSES):
        assert ours[name].precision == pytest.approx(precision[i]), name
        assert ours[name].recall == pytest.approx(recall[i]), name
        assert ours[name].f1 == pytest.approx(f1[i]), name
        assert ours[name].support == support[i], name
    # legal is expected once and never predicted: every score is 0, as with zero_division=0.
    assert ours["legal"].precision == 0.0
    assert ours["legal"].f1 == 0.0


def test_macro_f1_matches_sklearn():
    assert macro_f1(EXPECTED, PREDICTED) == pytest.approx(sk.f1_score(EXPECTED, PREDICTED, average="macro"))


def test_macro_f1_counts_predicted_only_classes():
    expected = ["math", "math", B]
    predicted = ["math", "sql", B]

    assert macro_f1(expected, predicted) == pytest.approx(sk.f1_score(expected, predicted, average="macro"))
    assert macro_f1(expected, predicted) == pytest.approx((2 / 3 + 0.0 + 1.0) / 3)


def test_in_domain_accuracy_counts_fallback_as_wrong():
    # In-domain rows: math ok, math->code, code ok, code ok, code->base, legal->math, math ok.
    assert in_domain_accuracy(EXPECTED, PREDICTED) == pytest.approx(4 / 7)


def test_routed_precision_by_hand():
    # Routed rows: math ok, code wrong, code ok, code ok, math wrong, code wrong (expected base), math ok.
    assert routed_precision(EXPECTED, PREDICTED) == pytest.approx(4 / 7)


def test_fallback_scores_by_hand():
    scores = fallback_scores(EXPECTED, PREDICTED)

    assert scores.precision == pytest.approx(2 / 3)
    assert scores.recall == pytest.approx(2 / 3)
    assert scores.rate == pytest.approx(3 / 10)


def test_fallback_scores_without_fallbacks_are_zero():
    scores = fallback_scores(["math", "code"], ["math", "code"])

    assert scores.precision == 0.0
    assert scores.recall == 0.0
    assert scores.rate == 0.0


@pytest.mark.parametrize(
    ("scores", "positive"),
    [
        ([0.9, 0.8, 0.7, 0.3, 0.2], [True, True, False, True, False]),
        ([0.5, 0.5, 0.5, 0.1, 0.9, 0.5], [True, False, True, False, True, False]),
        ([0.0, 0.0, 0.0, 0.0], [True, False, True, False]),
    ],
)
def test_auroc_matches_sklearn_with_ties(scores, positive):
    assert auroc(scores, positive) == pytest.approx(sk.roc_auc_score(positive, scores))


def test_auroc_by_hand():
    # Positives 0.9 and 0.4 against negatives 0.5 and 0.1: 3 of 4 pairs ordered right.
    assert auroc([0.9, 0.4, 0.5, 0.1], [True, True, False, False]) == pytest.approx(0.75)


def test_auroc_without_both_classes_is_none():
    assert auroc([0.2, 0.9], [True, True]) is None
    assert auroc([0.2, 0.9], [False, False]) is None


def test_expected_calibration_error_by_hand():
    confidence = [0.95, 0.95, 0.15, 0.55]
    correct = [True, False, False, True]

    # Bins [0.9, 1]: |0.5 - 0.95| * 2/4; [0.1, 0.2): |0 - 0.15| * 1/4; [0.5, 0.6): |1 - 0.55| * 1/4.
    assert expected_calibration_error(confidence, correct, n_bins=10) == pytest.approx(
        0.225 + 0.0375 + 0.1125
    )


def test_expected_calibration_error_of_perfect_calibration_is_zero():
    confidence = [1.0, 1.0, 0.0, 0.0]
    correct = [True, True, False, False]

    assert expected_calibration_error(confidence, correct) == pytest.approx(0.0)


def test_reliability_bins_edge_values():
    bins = reliability_bins([0.0, 1.0, 0.1, 0.35], [False, True, True, True], n_bins=10)

    assert len(bins) == 10
    assert [b.count for b in bins] == [1, 1, 0, 1, 0, 0, 0, 0, 0, 1]
    assert bins[9].mean_confidence == pytest.approx(1.0)
    assert bins[9].accuracy == pytest.approx(1.0)
    assert bins[0].accuracy == pytest.approx(0.0)
    assert bins[3].lower == pytest.approx(0.3)
    assert bins[3].upper == pytest.approx(0.4)


def test_risk_coverage_ties_and_unroutable():
    curve = risk_coverage([0.9, 0.8, 0.8, 0.3, -math.inf], [True, False, True, False, True])

    np.testing.assert_allclose(curve.thresholds, [0.9, 0.8, 0.3])
    np.testing.assert_allclose(curve.coverage, [0.2, 0.6, 0.8])
    np.testing.assert_allclose(curve.risk, [0.0, 1 / 3, 0.5])
    assert curve.aurc == pytest.approx(0.2 * 0.0 + 0.4 * (1 / 3) + 0.2 * 0.5)


def test_aurc_without_ties_is_mean_selective_risk():
    rng = np.random.default_rng(3)
    scores = rng.random(50)
    correct = rng.random(50) < 0.7
    ordered = correct[np.argsort(-scores)]
    selective_risk = [1 - ordered[: k + 1].mean() for k in range(50)]

    assert risk_coverage(scores, correct).aurc == pytest.approx(np.mean(selective_risk))


def test_latency_percentiles_match_numpy():
    values = [5.0, 1.0, 3.0, 2.0, 100.0, 4.0]
    figures = latency_percentiles(values)

    assert figures["p50_ms"] == pytest.approx(3.5)
    assert figures["p95_ms"] == pytest.approx(np.percentile(values, 95))
    assert figures["p99_ms"] == pytest.approx(np.percentile(values, 99))


# Calibration. Routable prompts, best first: 0.9 right, 0.8 right, 0.7 expected fallback,
# 0.6 right, 0.4 wrong domain; one more expected-fallback prompt no threshold routes.
SWEEP = sweep_thresholds(
    [0.6, 0.9, 0.4, 0.7, 0.8],
    [True, True, False, False, True],
    [False, False, False, True, False],
    total=6,
    in_domain=4,
    n_expected_fallback=2,
)


def test_sweep_figures_by_hand():
    np.testing.assert_allclose(SWEEP.thresholds, [0.95, 0.85, 0.75, 0.65, 0.5, 0.2])
    np.testing.assert_array_equal(SWEEP.routed, [0, 1, 2, 3, 4, 5])
    np.testing.assert_allclose(SWEEP.in_domain_accuracy, [0, 0.25, 0.5, 0.5, 0.75, 0.75])
    np.testing.assert_allclose(SWEEP.fallback_recall, [1, 1, 1, 0.5, 0.5, 0.5])
    np.testing.assert_allclose(SWEEP.routed_precision, [0, 1, 1, 2 / 3, 3 / 4, 3 / 5])
    np.testing.assert_allclose(SWEEP.fallback_rate, [1, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6])


@pytest.mark.parametrize(
    ("target", "threshold"),
    [
        (CalibrationTarget("balance"), 0.75),
        (CalibrationTarget("precision", 0.9), 0.75),
        (CalibrationTarget("precision", 0.7), 0.5),
        (CalibrationTarget("fallback-rate", 0.5), 0.65),
        (CalibrationTarget("fallback-rate", 0.2), 0.2),
    ],
)
def test_choose_threshold_per_target(target, threshold):
    assert SWEEP.thresholds[choose_threshold(SWEEP, target)] == pytest.approx(threshold)


def test_unreachable_targets_raise():
    with pytest.raises(CalibrationError, match=r"no threshold keeps the fallback rate at 0\.1"):
        choose_threshold(SWEEP, CalibrationTarget("fallback-rate", 0.1))
    unreachable = sweep_thresholds([0.9], [False], [False], total=1, in_domain=1, n_expected_fallback=0)
    with pytest.raises(CalibrationError, match=r"no threshold reaches routed precision 0\.5"):
        choose_threshold(unreachable, CalibrationTarget("precision", 0.5))
    with pytest.raises(CalibrationError, match="needs expected-fallback prompts"):
        choose_threshold(unreachable, CalibrationTarget("balance"))


def test_sweep_threshold_sits_between_tied_confidences():
    sweep = sweep_thresholds(
        [0.8, 0.8, 0.4],
        [True, True, False],
        [False, False, True],
        total=3,
        in_domain=2,
        n_expected_fallback=1,
    )

    np.testing.assert_allclose(sweep.thresholds, [0.9, 0.6, 0.2])
    np.testing.assert_array_equal(sweep.routed, [0, 2, 3])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("balance", CalibrationTarget("balance")),
        ("precision:0.95", CalibrationTarget("precision", 0.95)),
        ("fallback-rate:0.1", CalibrationTarget("fallback-rate", 0.1)),
        ("fallback_rate:0.2", CalibrationTarget("fallback-rate", 0.2)),
    ],
)
def test_parse_target(text, expected):
    assert parse_target(text) == expected


@pytest.mark.parametrize("text", ["precision", "precision:high", "precision:1.5", "recall:0.9", "balance:1"])
def test_parse_target_rejects_invalid(text):
    with pytest.raises(EvalError, match="invalid --target"):
        parse_target(text)


def _outcome(top: str, confidence: float, *, eligible: bool = True) -> RoutingOutcome:
    return RoutingOutcome(
        predicted=B,
        top_domain=top,
        top_target=top if eligible else B,
        confidence=confidence,
        eligible=eligible,
        fallback_reason="low_confidence" if eligible else "fallback_domain",
    )


def test_calibrate_global_threshold_and_figures():
    outcomes = [
        _outcome("math", 0.9),
        _outcome("math", 0.8),
        _outcome("code", 0.7),
        _outcome("code", 0.6),
        _outcome("math", 0.4),
        _outcome("general", 0.95, eligible=False),
    ]
    targets = ["math", "math", B, "code", "code", B]

    calibration = calibrate(outcomes, targets, CalibrationTarget("balance"))

    assert calibration.confidence == pytest.approx(0.75)
    assert calibration.domains == {}
    assert calibration.figures["in_domain_accuracy"] == pytest.approx(0.5)
    assert calibration.figures["fallback_recall"] == pytest.approx(1.0)
    assert calibration.figures["routed_precision"] == pytest.approx(1.0)
    assert calibration.figures["fallback_rate"] == pytest.approx(4 / 6)


def test_calibrate_per_domain_thresholds():
    # math: confident and right. code: right above 0.5, expected fallback at 0.45.
    outcomes = [_outcome("math", c) for c in (0.9, 0.8, 0.7)] + [
        _outcome("code", c) for c in (0.6, 0.55, 0.45)
    ]
    targets = ["math", "math", "math", "code", "code", B]

    calibration = calibrate(
        outcomes, targets, CalibrationTarget("precision", 1.0), per_domain=True, min_domain_records=3
    )

    assert calibration.domains["math"] == pytest.approx(0.35)
    assert calibration.domains["code"] == pytest.approx(0.5)
    assert calibration.domain_details["code"]["reached"] is True
    assert calibration.figures["in_domain_accuracy"] == pytest.approx(1.0)
    assert calibration.figures["fallback_recall"] == pytest.approx(1.0)


def test_calibrate_small_domain_keeps_global():
    outcomes = [_outcome("math", c) for c in (0.9, 0.8, 0.7)] + [_outcome("code", 0.6)]
    targets = ["math", "math", B, "code"]

    calibration = calibrate(
        outcomes, targets, CalibrationTarget("balance"), per_domain=True, min_domain_records=3
    )

    assert "code" not in calibration.domains
    assert calibration.domain_details["code"] == {
        "threshold": calibration.confidence,
        "records": 1,
        "own_threshold": False,
    }
    assert calibration.domains["math"] == pytest.approx(0.75)
