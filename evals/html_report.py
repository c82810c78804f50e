"""The HTML evaluation report: one page, its PNG plots and the JSON results, in one folder."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

from evals.evaluation import Evaluation
from evals.plots import (
    plot_confidence_histograms,
    plot_confusion_matrix,
    plot_reliability,
    plot_risk_coverage,
)
from evals.text_report import COMPARISON_COLUMNS, SUMMARY_ROWS, describe_router, render_data_line

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f3f3f3; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.5em 0; }
.plots { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; }
.plots img { max-width: 520px; }
.plots img.wide { max-width: 900px; }
td.text { max-width: 480px; font-size: 0.85em; }
"""


def write_report(
    evaluations: Sequence[Evaluation], data: Mapping[str, Any], results: Mapping[str, Any], directory: Path
) -> Path:
    """Write ``index.html``, one set of PNG plots per router and ``results.json`` into ``directory``.

    Returns the path of ``index.html``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")

    body = [f"<h1>Router evaluation</h1><p>{escape(render_data_line(data))}</p>"]
    if len(evaluations) > 1:
        plot_risk_coverage(evaluations, directory / "risk_coverage_all.png")
        body.append("<h2>Comparison</h2>" + _comparison_table(evaluations))
        body.append('<img src="risk_coverage_all.png" alt="risk-coverage curves of every router">')

    used: set[str] = set()
    for evaluation in evaluations:
        prefix = _unique_slug(evaluation.name, used)
        body.append(_router_section(evaluation, directory, prefix))

    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>Router evaluation</title><style>{STYLE}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
    index = directory / "index.html"
    index.write_text(page, encoding="utf-8")
    return index


def _router_section(evaluation: Evaluation, directory: Path, prefix: str) -> str:
    thresholds = evaluation.router.get("thresholds")
    threshold = thresholds["confidence"] if thresholds else None
    plots = [
        (plot_confusion_matrix(evaluation, directory / f"{prefix}_confusion.png"), "confusion matrix"),
        (plot_risk_coverage([evaluation], directory / f"{prefix}_risk_coverage.png"), "risk-coverage curve"),
        (plot_reliability(evaluation, directory / f"{prefix}_reliability.png"), "reliability diagram"),
        (
            plot_confidence_histograms(evaluation, directory / f"{prefix}_confidence.png", threshold),
            "confidence histograms",
        ),
    ]
    confusion, *others = plots
    images = f'<img class="wide" src="{escape(confusion[0].name)}" alt="{escape(confusion[1])}">' + "".join(
        f'<img src="{escape(path.name)}" alt="{escape(alt)}">' for path, alt in others
    )

    summary_rows = [[title, _number(evaluation.summary[key])] for key, title in SUMMARY_ROWS]
    summary_rows.append(["misclassified prompts", str(evaluation.summary["misclassified"])])
    per_domain = [
        [name, _number(s.precision), _number(s.recall), _number(s.f1), str(s.support)]
        for name, s in evaluation.per_class.items()
    ]
    return (
        f"<h2>{escape(evaluation.name)}</h2><p>{escape(describe_router(evaluation))}</p>"
        + _table(["metric", "value"], summary_rows)
        + f'<div class="plots">{images}</div>'
        + "<h3>Per domain</h3>"
        + _table(["domain", "precision", "recall", "F1", "support"], per_domain)
        + "<h3>Latency</h3>"
        + _latency_table(evaluation.latency)
        + f"<h3>Misclassified prompts, most confident first ({len(evaluation.misclassified)} of "
        f"{evaluation.summary['misclassified']})</h3>" + _misclassified_table(evaluation.misclassified)
    )


def _comparison_table(evaluations: Sequence[Evaluation]) -> str:
    rows = []
    for evaluation in evaluations:
        batch_1 = evaluation.latency.get("batch_1") or {}
        rows.append(
            [
                evaluation.name,
                *(_number(evaluation.summary[key]) for key, _ in COMPARISON_COLUMNS),
                _number(batch_1.get("p50_ms"), 2),
                _number(batch_1.get("p95_ms"), 2),
            ]
        )
    return _table(["router", *(title for _, title in COMPARISON_COLUMNS), "p50 ms", "p95 ms"], rows)


def _latency_table(latency: Mapping[str, Any]) -> str:
    rows = []
    for key, what in (
        ("batch_1", "batch 1 (gateway: round trip per request)"),
        ("gateway_routing", "gateway routing_ms per request"),
        ("batched", "batched, per call"),
    ):
        figures = latency.get(key)
        if figures:
            size = f" of {figures['batch_size']}" if "batch_size" in figures else ""
            rows.append(
                [
                    what + size,
                    str(figures["calls"]),
                    *(_number(figures[p], 2) for p in ("p50_ms", "p95_ms", "p99_ms")),
                ]
            )
    if not rows:
        return "<p>not measured</p>"
    return _table(["latency (ms)", "calls", "p50", "p95", "p99"], rows)


def _misclassified_table(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return "<p>none</p>"
    table_rows = []
    for row in rows:
        scores = ", ".join(f"{domain} {score:.3f}" for domain, score in row["scores"].items())
        nearest = row["nearest"]
        nearest_text = (
            f"{nearest['label']} ({nearest['similarity']:.3f}): {nearest['text']}" if nearest else ""
        )
        table_rows.append(
            [
                str(row["line"]),
                row["label"],
                row["expected"],
                row["predicted"],
                _number(row["confidence"]),
                row["fallback_reason"] or "routed",
                scores,
                row["text"],
                nearest_text,
            ]
        )
    return _table(
        [
            "line",
            "label",
            "expected",
            "predicted",
            "confidence",
            "reason",
            "top scores",
            "text",
            "nearest exemplar",
        ],
        table_rows,
    )


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{escape(cell)}</th>" for cell in header)
    body = "".join(
        "<tr>" + "".join(f"<td{_cell_class(cell)}>{escape(cell)}</td>" for cell in row) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell_class(cell: str) -> str:
    if re.fullmatch(r"-?[0-9.]+|n/a", cell):
        return ' class="number"'
    return ' class="text"' if len(cell) > 60 else ""


def _number(value: float | int | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _unique_slug(name: str, used: set[str]) -> str:
    base = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")[:40] or "router"
    slug, number = base, 2
    while slug in used:
        slug, number = f"{base}_{number}", number + 1
    used.add(slug)
    return slug
