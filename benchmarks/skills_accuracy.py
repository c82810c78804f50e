"""Measure how well the default router sends prompts to the right skill domain.

The router is built the way the gateway builds it: the gateway config (by default the bundled
``data/default.yaml``) names the exemplars, head and thresholds, ``build_domain_router`` trains
it, and a ``RoutingService`` turns each prediction into a decision. It is then evaluated on one
split of a labelled prompt set whose records are ``{"text", "label", "split"}``. A row counts as
correct when the router sends it to the adapter of its label's domain, or, for a row labelled
with a fallback domain (``general``), when the base model serves it for any reason.

Two baselines run on the same rows: the gateway with the k-NN head instead of the logistic one
(same exemplars and thresholds), and a nearest-centroid classifier over the exemplar embeddings
(the most similar domain mean wins, no thresholds).

Usage::

    .venv/bin/python benchmarks/skills_accuracy.py
    .venv/bin/python benchmarks/skills_accuracy.py --split validation --out /tmp/validation.json
    .venv/bin/python benchmarks/skills_accuracy.py --confidence-threshold 0.3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import (  # noqa: E402
    add_config_argument,
    add_data_argument,
    add_out_argument,
    add_split_argument,
    platform_info,
    read_split,
    routing_service,
    write_and_report,
)
from evals.dataset import file_sha256  # noqa: E402

DEFAULT_OUT = REPO / "benchmarks" / "results" / "skills_accuracy.json"
BASE = "base"
"""Route name for rows the base model serves, in confusion tables."""


@dataclass(frozen=True)
class Row:
    """One labelled prompt of the evaluation split."""

    text: str
    label: str
    source: str


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_argument(parser)
    add_split_argument(parser, "split of --data to evaluate (default: test)")
    add_config_argument(parser)
    parser.add_argument(
        "--confidence-threshold",
        type=float,
        default=None,
        help="override the config's router.confidence_threshold, 0-1 (default: the config's value)",
    )
    parser.add_argument(
        "--out-of-domain-threshold",
        type=float,
        default=None,
        help="override the config's router.out_of_domain_threshold, a cosine similarity "
        "(default: the config's value)",
    )
    add_out_argument(parser, DEFAULT_OUT)
    parser.add_argument(
        "--latency-prompts",
        type=int,
        default=200,
        help="prompts routed one at a time to measure routing latency, 0 to skip (default: 200)",
    )
    parser.add_argument(
        "--latency-rounds",
        type=int,
        default=3,
        help="times each latency prompt is routed; the median over all calls is reported (default: 3)",
    )
    parser.add_argument(
        "--embedding-backend",
        choices=["pytorch", "onnx", "onnx-int8"],
        default="pytorch",
        help="embedding backend used to route the evaluated prompts; the router is trained with "
        "the PyTorch one either way, as an artifact is (default: pytorch)",
    )
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="PyTorch intra-op threads for embedding (default: 1, the steadiest latency on a 2-vCPU VM)",
    )
    return parser.parse_args(argv)


def load_rows(path: Path, split: str) -> list[Row]:
    """Read the rows of ``split`` from a JSONL prompt set."""
    return [
        Row(record["text"], record["label"], record.get("source", "")) for record in read_split(path, split)
    ]


def build_service(config, head: str, cache_dir: str):
    """Train a router from the config's router settings with ``head`` and wrap it like the gateway."""
    from router.router_loader import build_domain_router

    # A fresh cache folder makes every run train the router instead of loading an earlier one.
    settings = config.router.model_copy(update={"head": head, "cache_dir": cache_dir})
    domain_router = build_domain_router(settings, config.adapters, max_chunks=config.conversation.max_chunks)
    return routing_service(config, domain_router)


def gateway_routes(service, texts: Sequence[str]) -> tuple[list[str], list[str], Counter]:
    """Route ``texts`` as the gateway does.

    Returns
    -------
    routes : list of str
        Where each text goes: a domain, or ``base`` for the base model.
    reasons : list of str
        Each text's fallback reason, or ``none``.
    counts : Counter
        How many texts have each reason.
    """
    decisions = service.route_many(list(texts))
    routes = [BASE if decision.fallback else decision.domain for decision in decisions]
    reasons = [decision.fallback_reason or "none" for decision in decisions]
    return routes, reasons, Counter(reasons)


def low_confidence_breakdown(rows: Sequence[Row], service, reasons: Sequence[str]) -> dict:
    """Split the low-confidence fallbacks by what the best domain would have done.

    ``right_domain`` rows were lost to the threshold, ``fallback_label`` rows (labelled with a
    fallback domain) were saved by it, and ``wrong_domain`` rows would have been misrouted anyway.
    """
    fallback_domains = service.domain_router.fallback_domains
    low = [i for i, reason in enumerate(reasons) if reason == "low_confidence"]
    best = service.domain_router.predict([rows[i].text for i in low], nearest=1)
    counts = Counter()
    for i, prediction in zip(low, best, strict=True):
        if rows[i].label in fallback_domains:
            counts["fallback_label"] += 1
        elif prediction.domain == rows[i].label:
            counts["right_domain"] += 1
        else:
            counts["wrong_domain"] += 1
    return {key: counts[key] for key in ("right_domain", "fallback_label", "wrong_domain")}


def centroid_routes(domain_router, embeddings: np.ndarray) -> list[str]:
    """Route each embedding to the domain whose mean exemplar embedding is most similar."""
    vectors = domain_router.index.vectors()
    domains = sorted({exemplar.domain for exemplar in domain_router.exemplars})
    exemplar_domains = np.array([exemplar.domain for exemplar in domain_router.exemplars])
    centroids = np.stack([vectors[exemplar_domains == domain].mean(axis=0) for domain in domains])
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)

    best = (embeddings @ centroids.T).argmax(axis=1)
    fallback = domain_router.fallback_domains
    return [BASE if domains[i] in fallback else domains[i] for i in best]


def score(rows: Sequence[Row], routes: Sequence[str], fallback_domains: frozenset[str]) -> dict:
    """Compute accuracy per label and overall, fallback precision and recall, and the confusion."""
    correct = [
        route == BASE if row.label in fallback_domains else route == row.label
        for row, route in zip(rows, routes, strict=True)
    ]

    per_label = {}
    confusion = {}
    for label in sorted({row.label for row in rows}):
        indices = [i for i, row in enumerate(rows) if row.label == label]
        per_label[label] = {
            "support": len(indices),
            "accuracy": sum(correct[i] for i in indices) / len(indices),
        }
        confusion[label] = dict(Counter(routes[i] for i in indices).most_common())

    should_fall_back = [row.label in fallback_domains for row in rows]
    fell_back = [route == BASE for route in routes]
    true_fallbacks = sum(s and f for s, f in zip(should_fall_back, fell_back, strict=True))
    return {
        "accuracy": sum(correct) / len(rows),
        "correct": sum(correct),
        "rows": len(rows),
        "per_label": per_label,
        "fallback_precision": true_fallbacks / sum(fell_back) if any(fell_back) else None,
        "fallback_recall": true_fallbacks / sum(should_fall_back) if any(should_fall_back) else None,
        "confusion": confusion,
    }


def per_source_accuracy(rows: Sequence[Row], routes: Sequence[str], fallback_domains: frozenset[str]) -> dict:
    """Return accuracy per ``source`` of the prompt set, to show which styles are missed."""
    by_source: dict[str, list[bool]] = {}
    for row, route in zip(rows, routes, strict=True):
        hit = route == BASE if row.label in fallback_domains else route == row.label
        by_source.setdefault(row.source, []).append(hit)
    return {
        source: {"support": len(hits), "accuracy": sum(hits) / len(hits)}
        for source, hits in sorted(by_source.items())
    }


def routing_latency_ms(service, texts: Sequence[str], rounds: int) -> dict:
    """Route ``texts`` one request at a time, as the gateway does, and return latency statistics."""
    service.route(service.routing_alias, "warm-up")
    timings = []
    for _ in range(rounds):
        for text in texts:
            started = time.perf_counter()
            service.route(service.routing_alias, text)
            timings.append((time.perf_counter() - started) * 1000)
    timings.sort()
    return {
        "calls": len(timings),
        "median_ms": statistics.median(timings),
        "p90_ms": timings[int(0.9 * (len(timings) - 1))],
    }


def machine() -> dict:
    import torch

    return {
        **platform_info(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.is_available(),
        "libraries": {
            name: metadata.version(name)
            for name in ("torch", "sentence-transformers", "scikit-learn", "faiss-cpu", "numpy")
        },
    }


def print_report(result: dict) -> None:
    main = result["gateway"]
    router = result["router"]
    print(f"{result['split']} split of {result['data']}: {main['rows']} rows")
    print(
        f"router: {router['head']} head, {router['embedding_backend']} embedding backend, "
        f"{router['exemplars']} exemplars, "
        f"confidence threshold {router['confidence_threshold']}, "
        f"out-of-domain threshold {router['out_of_domain_threshold']}"
    )

    print()
    print(f"{'label':<10}{'support':>9}{'accuracy':>10}   routed to")
    for label, stats in main["per_label"].items():
        routed = ", ".join(f"{route} {count}" for route, count in main["confusion"][label].items())
        print(f"{label:<10}{stats['support']:>9}{stats['accuracy']:>10.3f}   {routed}")
    print(f"{'overall':<10}{main['rows']:>9}{main['accuracy']:>10.3f}")

    print()
    print(f"fallback precision {main['fallback_precision']:.3f}, recall {main['fallback_recall']:.3f}")
    reasons = ", ".join(f"{reason} {count}" for reason, count in result["fallback_reasons"].items())
    print(f"fallback reasons: {reasons}")
    low = result["low_confidence_fallbacks"]
    print(
        f"low-confidence fallbacks whose best domain was: the label's {low['right_domain']}, "
        f"a fallback label {low['fallback_label']}, another domain {low['wrong_domain']}"
    )
    latency = result["latency"]
    if latency:
        print(
            f"routing latency per prompt: median {latency['median_ms']:.2f} ms, "
            f"p90 {latency['p90_ms']:.2f} ms ({latency['calls']} calls, "
            f"{result['machine']['torch_threads']} torch thread(s))"
        )

    print()
    print(f"{'router':<28}{'accuracy':>10}{'vs gateway':>12}{'error ratio':>13}")
    for name, stats in result["comparison"].items():
        ratio = "n/a" if stats["error_ratio"] is None else f"{stats['error_ratio']:.2f}"
        print(f"{name:<28}{stats['accuracy']:>10.3f}{stats['difference_points']:>+12.1f}{ratio:>13}")
    print(
        "(difference in points against the gateway router; error ratio = its errors / the gateway's errors)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.torch_threads)
    from router.config import load_config

    config = load_config(args.config)
    overrides = {
        key: value
        for key, value in (
            ("confidence_threshold", args.confidence_threshold),
            ("out_of_domain_threshold", args.out_of_domain_threshold),
        )
        if value is not None
    }
    if overrides:
        # The same fields a gateway config sets, so the router is still built the gateway's way.
        config = config.model_copy(update={"router": config.router.model_copy(update=overrides)})
    rows = load_rows(args.data, args.split)
    texts = [row.text for row in rows]

    with tempfile.TemporaryDirectory(prefix="skills-accuracy-") as cache_dir:
        started = time.perf_counter()
        service = build_service(config, config.router.head, cache_dir)
        train_seconds = time.perf_counter() - started
        knn_service = build_service(config, "knn", cache_dir)

    if args.embedding_backend != "pytorch":
        from benchmarks.routing_latency import backend_embedder

        embedder = backend_embedder(config, args.embedding_backend)
        service.domain_router.embedder = embedder
        knn_service.domain_router.embedder = embedder

    domain_router = service.domain_router
    fallback_domains = domain_router.fallback_domains
    routes, row_reasons, reasons = gateway_routes(service, texts)
    knn_routes, _, _ = gateway_routes(knn_service, texts)
    centroid = centroid_routes(domain_router, domain_router.embedder.encode(texts))

    gateway = score(rows, routes, fallback_domains)
    baselines = {
        "gateway with knn head": score(rows, knn_routes, fallback_domains),
        "nearest centroid": score(rows, centroid, fallback_domains),
    }
    gateway_errors = gateway["rows"] - gateway["correct"]
    comparison = {
        name: {
            "accuracy": stats["accuracy"],
            "difference_points": 100 * (stats["accuracy"] - gateway["accuracy"]),
            # None when the gateway router makes no errors, so the ratio is undefined.
            "error_ratio": (stats["rows"] - stats["correct"]) / gateway_errors if gateway_errors else None,
        }
        for name, stats in baselines.items()
    }

    latency_texts = texts[: args.latency_prompts]
    latency = routing_latency_ms(service, latency_texts, args.latency_rounds) if latency_texts else None

    thresholds = domain_router.thresholds
    exemplar_counts = Counter(exemplar.domain for exemplar in domain_router.exemplars)
    result = {
        "data": str(args.data),
        "data_sha256": file_sha256(args.data),
        "split": args.split,
        "router": {
            "config": config.source,
            "exemplars": len(domain_router.exemplars),
            "exemplars_per_domain": dict(sorted(exemplar_counts.items())),
            "head": config.router.head,
            "embedding_backend": args.embedding_backend,
            "head_params": domain_router.head.get_params(),
            "fallback_domains": sorted(fallback_domains),
            "confidence_threshold": thresholds.confidence,
            "domain_thresholds": dict(thresholds.domains),
            "out_of_domain_threshold": thresholds.out_of_domain,
            "confidence_mode": str(domain_router.confidence_mode),
            "train_seconds": train_seconds,
        },
        "gateway": gateway,
        "per_source": per_source_accuracy(rows, routes, fallback_domains),
        "fallback_reasons": dict(reasons.most_common()),
        "low_confidence_fallbacks": low_confidence_breakdown(rows, service, row_reasons),
        "baselines": baselines,
        "comparison": comparison,
        "latency": latency,
        "machine": machine(),
    }

    write_and_report(result, args.out, print_report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
