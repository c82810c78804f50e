"""Measure the static-embedding cascade: accuracy and batch-1 routing latency per setting.

The transformer router is trained fresh from the gateway config (by default the bundled
``data/default.yaml``), as ``benchmarks/skills_accuracy.py`` trains it. The static router is
built as the gateway builds it for ``router.cascade_threshold``, by ``build_cascade``: a static
table distilled from the same embedding model and a router trained on the same exemplars, both
cached under the config's ``cache_dir``. The settings compared on one split of the skills
prompt set:

- ``transformer``: the default router, the baseline;
- ``static``: the static router alone, with the gateway's thresholds and fallbacks;
- ``cascade T``: the static router answers where it routes to a domain with confidence at least
  ``T``, and the transformer router decides the other prompts.

Accuracy counts a row as correct as ``skills_accuracy.py`` does. It is computed from each stage's
predictions of every row, combined with the cascade's own acceptance rule
(``CascadeRouter.accepts``), so the transformer embeds the split once. Latency times
``RoutingService.route``, the gateway's per-request call, on prompts spread evenly over the split
(it is ordered by label, and the static stage answers some labels more often than others). The
settings take turns within each round, percentiles are computed per round, and the median over
rounds is reported.

Usage::

    .venv/bin/python benchmarks/cascade.py
    .venv/bin/python benchmarks/cascade.py --split validation --thresholds 0.8,0.9,0.95
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import (  # noqa: E402
    add_config_argument,
    add_data_argument,
    add_out_argument,
    add_split_argument,
    add_torch_threads_argument,
    check_at_least,
    median_over_rounds,
    percentiles,
    write_and_report,
)

DEFAULT_OUT = REPO / "benchmarks" / "results" / "cascade.json"
DEFAULT_THRESHOLDS = "0.5,0.7,0.8,0.9,0.95,0.98"
ACCURACY_BAR_POINTS = 0.5
"""Largest accuracy loss against the baseline, in points, that a faster setting may have."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_argument(parser)
    add_split_argument(parser, "split of --data to evaluate (default: test)")
    add_config_argument(parser)
    parser.add_argument(
        "--thresholds",
        default=DEFAULT_THRESHOLDS,
        help="comma-separated cascade thresholds, minimum static confidences in [0, 1] "
        f"(default: {DEFAULT_THRESHOLDS})",
    )
    parser.add_argument(
        "--latency-prompts",
        type=int,
        default=200,
        help="prompts, spread evenly over the split, routed one at a time in each latency round, "
        "0 to skip (default: 200)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="latency rounds; the median over rounds of each percentile is reported (default: 5)",
    )
    add_torch_threads_argument(parser)
    add_out_argument(parser, DEFAULT_OUT)
    args = parser.parse_args(argv)

    try:
        args.thresholds = [float(value) for value in args.thresholds.split(",") if value.strip()]
    except ValueError:
        parser.error(f"--thresholds must be comma-separated numbers, got {args.thresholds!r}")
    if not args.thresholds or any(not 0.0 <= value <= 1.0 for value in args.thresholds):
        parser.error(f"--thresholds must be between 0 and 1, got {args.thresholds}")
    check_at_least(parser, args, ("rounds",))
    if args.latency_prompts < 0:
        parser.error(f"--latency-prompts must be 0 or more, got {args.latency_prompts}")
    return args


def routes_of(predictions, adapters) -> list[str]:
    """Return where the gateway sends each prediction: its domain, or ``base`` for the base model."""
    from benchmarks.skills_accuracy import BASE

    return [
        BASE if prediction.fallback or adapters.get(prediction.domain) is None else prediction.domain
        for prediction in predictions
    ]


def measure_accuracy(rows, transformer, static, cascades, adapters) -> dict:
    """Score every setting on ``rows``; return accuracy, static fraction and difference to the baseline."""
    from benchmarks.skills_accuracy import score

    texts = [row.text for row in rows]
    fallback_domains = transformer.fallback_domains
    transformer_predictions = transformer.predict(texts, nearest=1)
    static_predictions = static.predict(texts, nearest=1)

    settings = {
        "transformer": (transformer_predictions, 0),
        "static": (static_predictions, len(rows)),
    }
    for name, cascade in cascades.items():
        accepted = [cascade.accepts(prediction) for prediction in static_predictions]
        combined = [
            s if accept else t
            for s, t, accept in zip(static_predictions, transformer_predictions, accepted, strict=True)
        ]
        settings[name] = (combined, sum(accepted))

    results = {}
    for name, (predictions, static_count) in settings.items():
        stats = score(rows, routes_of(predictions, adapters), fallback_domains)
        results[name] = {
            "accuracy": stats["accuracy"],
            "correct": stats["correct"],
            "static_fraction": static_count / len(rows),
            "fallback_precision": stats["fallback_precision"],
            "fallback_recall": stats["fallback_recall"],
            "per_label": stats["per_label"],
        }
    baseline = results["transformer"]["accuracy"]
    for stats in results.values():
        stats["difference_points"] = 100 * (stats["accuracy"] - baseline)
    return results


def measure_latency(services: dict, texts: Sequence[str], rounds: int) -> dict:
    """Time ``RoutingService.route`` per prompt for every service, the services taking turns each round."""
    for service in services.values():
        for text in texts[:10]:
            service.route(service.routing_alias, text)

    per_round: dict[str, list[dict]] = {name: [] for name in services}
    static_counts = dict.fromkeys(services, 0)
    for _ in range(rounds):
        for name, service in services.items():
            timings = np.empty(len(texts))
            for position, text in enumerate(texts):
                started = time.perf_counter()
                decision = service.route(service.routing_alias, text)
                timings[position] = (time.perf_counter() - started) * 1000
                static_counts[name] += decision.stage == "static"
            per_round[name].append(percentiles(timings, (50, 99)))

    results = {}
    for name, rounds_stats in per_round.items():
        results[name] = {
            **median_over_rounds(rounds_stats),
            "static_fraction": static_counts[name] / (rounds * len(texts)),
            "rounds": rounds_stats,
        }
    baseline = results["transformer"]
    for stats in results.values():
        stats["p50_ratio"] = stats["p50_ms"] / baseline["p50_ms"]
        stats["p99_ratio"] = stats["p99_ms"] / baseline["p99_ms"]
    return results


def lowest_threshold_within_bar(accuracy: dict, thresholds: Sequence[float]) -> float | None:
    """Return the lowest threshold whose cascade loses at most ``ACCURACY_BAR_POINTS`` points."""
    passing = [
        t for t in thresholds if accuracy[cascade_name(t)]["difference_points"] >= -ACCURACY_BAR_POINTS
    ]
    return min(passing) if passing else None


def cascade_name(threshold: float) -> str:
    return f"cascade {threshold:g}"


def print_report(result: dict) -> None:
    machine = result["machine"]
    print(
        f"{result['rows']} rows of the {result['split']} split; latency over "
        f"{result['latency_prompts']} prompts x {result['rounds_count']} rounds, "
        f"{machine['torch_threads']} torch thread(s), {machine['cpus']} CPUs, load average "
        f"{machine['load_average_1m']:.2f} at the start and {machine['load_average_1m_end']:.2f} at the end"
    )
    print()
    header = f"{'setting':<16}{'accuracy':>10}{'vs base, pts':>14}{'static share':>14}"
    latency = result["latency"]
    if latency:
        header += f"{'p50 ms':>9}{'p99 ms':>9}{'p50 ratio':>11}{'p99 ratio':>11}"
    print(header)
    for name, stats in result["accuracy"].items():
        line = (
            f"{name:<16}{stats['accuracy']:>10.4f}{stats['difference_points']:>+14.2f}"
            f"{stats['static_fraction']:>14.3f}"
        )
        if latency:
            times = latency[name]
            line += (
                f"{times['p50_ms']:>9.2f}{times['p99_ms']:>9.2f}"
                f"{times['p50_ratio']:>11.2f}{times['p99_ratio']:>11.2f}"
            )
        print(line)
    print("(points and ratios are against the transformer router measured in the same run)")
    best = result["lowest_threshold_within_bar"]
    print(
        f"lowest threshold within {ACCURACY_BAR_POINTS} points of the transformer: "
        f"{'none' if best is None else f'{best:g}'}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.torch_threads)
    logging.basicConfig(level=logging.WARNING)
    from benchmarks.skills_accuracy import build_service, load_rows
    from classifier.cascade import CascadeRouter
    from router.config import load_config
    from router.router_loader import build_cascade
    from router.routing import RoutingService

    config = load_config(args.config)
    rows = load_rows(args.data, args.split)
    load_start = os.getloadavg()[0]

    with tempfile.TemporaryDirectory(prefix="cascade-") as cache_dir:
        service = build_service(config, config.router.head, cache_dir)
    transformer = service.domain_router
    first = build_cascade(transformer, config.router, threshold=args.thresholds[0])
    static = first.static_router
    cascades = {
        cascade_name(threshold): CascadeRouter(transformer, static, threshold=threshold)
        for threshold in args.thresholds
    }

    accuracy = measure_accuracy(rows, transformer, static, cascades, config.adapters)

    routers = {"transformer": transformer, "static": static, **cascades}
    services = {
        name: RoutingService(
            domain_router,
            config.adapters,
            base_model=config.backend.base_model_name,
            routing_alias=config.server.routing_alias,
        )
        for name, domain_router in routers.items()
    }
    # The split is ordered by label, so the latency prompts are spread evenly over it.
    step = max(1, len(rows) // args.latency_prompts) if args.latency_prompts else 1
    latency_texts = [row.text for row in rows[::step][: args.latency_prompts]]
    latency = measure_latency(services, latency_texts, args.rounds) if latency_texts else None

    result = {
        "data": str(args.data),
        "split": args.split,
        "config": config.source,
        "rows": len(rows),
        "latency_prompts": len(latency_texts),
        "rounds_count": args.rounds,
        "static_embedder": {
            "name": static.embedder.name,
            "dimension": static.embedder.dimension,
            "table": str(static.embedder.table_path),
        },
        "transformer_embedder": type(transformer.embedder).__name__,
        "thresholds": args.thresholds,
        "accuracy": accuracy,
        "latency": latency,
        "lowest_threshold_within_bar": lowest_threshold_within_bar(accuracy, args.thresholds),
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": args.torch_threads,
            "load_average_1m": load_start,
            "load_average_1m_end": os.getloadavg()[0],
        },
    }

    write_and_report(result, args.out, print_report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
