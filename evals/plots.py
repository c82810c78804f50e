"""PNG plots of an evaluation, drawn with matplotlib's Agg canvas (no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from evals.evaluation import Evaluation

DPI = 110


def plot_confusion_matrix(evaluation: Evaluation, path: Path) -> Path:
    """Draw the confusion matrix as a heatmap of row shares, annotated with counts."""
    matrix = evaluation.confusion
    names = evaluation.classes
    row_totals = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, row_totals, out=np.zeros(matrix.shape), where=row_totals > 0)

    size = max(5.0, 0.55 * len(names) + 2.5)
    figure = Figure(figsize=(size + 1.5, size))
    axes = figure.add_subplot()
    image = axes.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=axes, label="share of the expected row")
    axes.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    axes.set_yticks(range(len(names)), names, fontsize=8)
    axes.set_xlabel("predicted")
    axes.set_ylabel("expected")
    axes.set_title(f"Confusion matrix: {evaluation.name}", fontsize=10)
    if len(names) <= 20:
        for row in range(len(names)):
            for column in range(len(names)):
                if matrix[row, column]:
                    color = "white" if shares[row, column] > 0.6 else "black"
                    axes.text(
                        column,
                        row,
                        str(matrix[row, column]),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color=color,
                    )
    return _save(figure, path)


def plot_risk_coverage(evaluations: Sequence[Evaluation], path: Path) -> Path:
    """Draw the risk-coverage curve of each evaluation, with its operating point."""
    figure = Figure(figsize=(6.5, 4.5))
    axes = figure.add_subplot()
    for evaluation in evaluations:
        curve = evaluation.risk_coverage
        if len(curve.coverage) == 0:
            continue
        line = axes.step(
            curve.coverage, curve.risk, where="post", label=f"{evaluation.name} (AURC {curve.aurc:.4f})"
        )[0]
        summary = evaluation.summary
        axes.plot(
            [summary["coverage"]], [1.0 - (summary["routed_precision"] or 0.0)], "o", color=line.get_color()
        )
    axes.set_xlim(0.0, 1.0)
    axes.set_ylim(bottom=0.0)
    axes.set_xlabel("coverage (share of prompts routed to an adapter)")
    axes.set_ylabel("risk (share of routed prompts on a wrong adapter)")
    axes.set_title("Risk-coverage curve (dot: the router's threshold)", fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="upper left")
    return _save(figure, path)


def plot_reliability(evaluation: Evaluation, path: Path) -> Path:
    """Draw the reliability diagram: accuracy of the best domain per confidence bin."""
    bins = evaluation.reliability
    figure = Figure(figsize=(5.5, 5.0))
    axes = figure.add_subplot()
    lefts = [b.lower for b in bins]
    width = bins[0].upper - bins[0].lower if bins else 0.1
    filled = [b for b in bins if b.count]

    axes.bar(
        lefts, [b.accuracy for b in bins], width=width, align="edge", edgecolor="black", label="accuracy"
    )
    axes.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    axes.plot(
        [b.lower + width / 2 for b in filled],
        [b.mean_confidence for b in filled],
        "_",
        markersize=14,
        markeredgewidth=2.5,
        color="darkred",
        label="mean confidence of the bin",
    )
    for b in filled:
        axes.text(
            b.lower + width / 2,
            0.02,
            str(b.count),
            ha="center",
            fontsize=7,
            rotation=90,
            bbox={"facecolor": "white", "edgecolor": "none", "pad": 1},
        )

    ece = evaluation.summary["ece"]
    axes.set_xlim(0.0, 1.0)
    axes.set_ylim(0.0, 1.0)
    axes.set_xlabel("confidence")
    axes.set_ylabel("share whose best domain is the expected one")
    axes.set_title(f"Reliability diagram (ECE {ece:.4f}, boxed: prompts per bin)", fontsize=10)
    axes.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncols=3)
    return _save(figure, path)


def plot_confidence_histograms(evaluation: Evaluation, path: Path, threshold: float | None) -> Path:
    """Draw histograms of the routing confidence of in-domain and expected-fallback prompts."""
    figure = Figure(figsize=(6.5, 4.5))
    axes = figure.add_subplot()
    edges = np.linspace(0.0, 1.0, 41)
    confidence = np.clip(evaluation.routing_confidence, 0.0, 1.0)
    for mask, label, color in (
        (~evaluation.expected_fallback, "in-domain prompts", "tab:blue"),
        (evaluation.expected_fallback, "expected-fallback prompts", "tab:orange"),
    ):
        if mask.any():
            axes.hist(
                confidence[mask],
                bins=edges,
                weights=np.full(int(mask.sum()), 1.0 / mask.sum()),
                alpha=0.55,
                color=color,
                label=f"{label} ({mask.sum()})",
            )
    if threshold is not None:
        axes.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.3f}")
    axes.set_xlabel("routing confidence (0 when the best domain is served by the base model)")
    axes.set_ylabel("share of the group's prompts")
    axes.set_title(f"Confidence: {evaluation.name}", fontsize=10)
    axes.legend(fontsize=8)
    return _save(figure, path)


def _save(figure: Figure, path: Path) -> Path:
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=DPI, format="png", bbox_inches="tight")
    return path
