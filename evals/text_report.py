"""Plain-text tables of evaluation results for the terminal."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from evals.evaluation import RELIABILITY_BINS, Evaluation

TEXT_WIDTH = 70
"""Characters of prompt text shown per misclassified row."""

SUMMARY_ROWS = (
    ("accuracy", "accuracy (base model counted as a class)"),
    ("macro_f1", "macro-F1 (domains and base model)"),
    ("in_domain_accuracy", "in-domain accuracy (routed to its own adapter)"),
    ("routed_precision", "routed precision"),
    ("coverage", "coverage (share routed to an adapter)"),
    ("fallback_precision", "fallback precision"),
    ("fallback_recall", "fallback recall"),
    ("fallback_rate", "fallback rate"),
    ("auroc", "AUROC of confidence, in-domain vs expected fallback"),
    ("ece", f"expected calibration error ({RELIABILITY_BINS} bins)"),
    ("aurc", "area under the risk-coverage curve"),
)

COMPARISON_COLUMNS = (
    ("accuracy", "accuracy"),
    ("macro_f1", "macro-F1"),
    ("in_domain_accuracy", "in-domain"),
    ("routed_precision", "routed P"),
    ("fallback_precision", "fallback P"),
    ("fallback_recall", "fallback R"),
    ("auroc", "AUROC"),
    ("ece", "ECE"),
    ("aurc", "AURC"),
)


def render_data_line(data: Mapping[str, Any]) -> str:
    """Return the line that names the evaluated records."""
    split = f", split {data['split']}" if data.get("split") else ""
    return (
        f"data: {data['path']}{split}: {data['records']} records "
        f"({data['in_domain']} in-domain, {data['expected_fallback']} expected fallback)"
    )


def render_evaluation(evaluation: Evaluation, data: Mapping[str, Any]) -> str:
    """Return every table of one router: summary, per domain, confusion, latency, errors."""
    sections = [
        render_data_line(data) + "\n" + f"router: {describe_router(evaluation)}",
        _summary_table(evaluation),
        _per_domain_table(evaluation),
        _confusion_table(evaluation),
        _latency_table(evaluation.latency),
        _groups_table(evaluation),
        _misclassified_table(evaluation),
    ]
    return "\n\n".join(section for section in sections if section) + "\n"


def _groups_table(evaluation: Evaluation) -> str:
    if not evaluation.groups:
        return ""
    rows = [
        [name, str(figures["records"]), str(figures["correct"]), _number(figures["accuracy"])]
        for name, figures in evaluation.groups.items()
    ]
    return "per group\n" + _table(["group", "records", "correct", "accuracy"], rows)


def render_comparison(evaluations: Sequence[Evaluation]) -> str:
    """Return one table with a row per router, then each router's description."""
    header = ["router", *(title for _, title in COMPARISON_COLUMNS), "p50 ms", "p95 ms"]
    rows = []
    for evaluation in evaluations:
        batch_1 = evaluation.latency.get("batch_1") or {}
        rows.append(
            [
                evaluation.name,
                *(_number(evaluation.summary[key]) for key, _ in COMPARISON_COLUMNS),
                _milliseconds(batch_1.get("p50_ms")),
                _milliseconds(batch_1.get("p95_ms")),
            ]
        )
    routers = "\n".join(f"  {e.name}: {describe_router(e)}" for e in evaluations)
    return f"{_table(header, rows)}\nrouters:\n{routers}\n"


def describe_router(evaluation: Evaluation) -> str:
    """Return a one-line description of the evaluated router."""
    router = evaluation.router
    if "head" not in router:
        return f"gateway {router['source'].get('url')}, domains {', '.join(router['domains'])}"
    thresholds = router["thresholds"]
    parts = [
        f"{router['head']} head on {router['embedding_model']}",
        f"confidence mode {router['confidence_mode']}",
        f"confidence threshold {thresholds['confidence']:.4f}",
    ]
    if thresholds["domains"]:
        parts.append(f"{len(thresholds['domains'])} per-domain thresholds")
    if thresholds["out_of_domain"]:
        parts.append(f"out-of-domain threshold {thresholds['out_of_domain']:.4f}")
    if router["fallback_domains"]:
        parts.append(f"fallback domains {', '.join(router['fallback_domains'])}")
    return ", ".join(parts)


def _summary_table(evaluation: Evaluation) -> str:
    rows = [[title, _number(evaluation.summary[key])] for key, title in SUMMARY_ROWS]
    rows.append(["misclassified prompts", str(evaluation.summary["misclassified"])])
    return _table(["metric", "value"], rows)


def _per_domain_table(evaluation: Evaluation) -> str:
    rows = [
        [name, _number(s.precision), _number(s.recall), _number(s.f1), str(s.support)]
        for name, s in evaluation.per_class.items()
    ]
    return _table(["domain", "precision", "recall", "F1", "support"], rows)


def _confusion_table(evaluation: Evaluation) -> str:
    names = evaluation.classes
    header = ["expected \\ predicted", *(str(i) for i in range(len(names)))]
    rows = [
        [f"{i} {name}", *(str(count) for count in evaluation.confusion[i])] for i, name in enumerate(names)
    ]
    return "confusion matrix (rows: expected, columns: predicted, numbered as the rows)\n" + _table(
        header, rows
    )


def _latency_table(latency: Mapping[str, Any]) -> str:
    rows = []
    batch_1 = latency.get("batch_1")
    if batch_1:
        what = "round trip, 1 prompt per request" if "gateway_routing" in latency else "batch 1, per call"
        rows.append(_latency_row(what, batch_1))
    gateway = latency.get("gateway_routing")
    if gateway:
        rows.append(_latency_row("gateway routing_ms, per request", gateway))
    batched = latency.get("batched")
    if batched:
        rows.append(_latency_row(f"batch {batched['batch_size']}, per call", batched))
    if not rows:
        return ""
    table = _table(["latency (ms)", "calls", "p50", "p95", "p99"], rows)
    if batched:
        table += f"\nbatched throughput: {batched['prompts_per_second']:.0f} prompts/s"
    return table


def _latency_row(what: str, figures: Mapping[str, Any]) -> list[str]:
    return [
        what,
        str(figures["calls"]),
        *(_milliseconds(figures[key]) for key in ("p50_ms", "p95_ms", "p99_ms")),
    ]


def _misclassified_table(evaluation: Evaluation) -> str:
    rows = evaluation.misclassified
    if not rows:
        return "misclassified: none"
    table_rows = [
        [
            str(row["line"]),
            row["expected"],
            row["predicted"],
            _number(row["confidence"]),
            row["fallback_reason"] or "routed",
            _shorten(row["text"]),
        ]
        for row in rows
    ]
    title = f"misclassified: {len(rows)} of {evaluation.summary['misclassified']}, most confident first"
    return (
        title + "\n" + _table(["line", "expected", "predicted", "confidence", "reason", "text"], table_rows)
    )


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Return rows as aligned columns; columns of numbers are right-aligned."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    numeric = [i > 0 and all(_is_number(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [cell.rjust(widths[i]) if numeric[i] else cell.ljust(widths[i]) for i, cell in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _is_number(cell: str) -> bool:
    if cell == "n/a":
        return True
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _number(value: float | int | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _milliseconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _shorten(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= TEXT_WIDTH else flat[: TEXT_WIDTH - 3] + "..."
