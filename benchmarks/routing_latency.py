"""Measure how long the router takes to decide, per embedding backend.

The router is built the way the gateway builds it (the gateway config, by default the bundled
``data/default.yaml``, names the exemplars, head and thresholds) and wrapped in a
``RoutingService``. For each embedding backend the script measures, on prompts of one split of
the skills prompt set:

- batch 1: ``RoutingService.route`` for one prompt at a time, the call the gateway makes per
  request (embedding, head, thresholds, nearest exemplars), with p50, p95 and p99;
- the embedding call alone at batch 1, to show what the rest of the decision costs;
- throughput: ``RoutingService.route_many`` over batches of 32 and 128 prompts, in prompts per
  second.

Each statistic is computed per round and the median over rounds is reported, because other
processes on a small shared machine make single rounds noisy. The first backend listed is the
baseline: every row reports its ratio to the baseline's figure from the same run.

Usage::

    .venv/bin/python benchmarks/routing_latency.py
    .venv/bin/python benchmarks/routing_latency.py --rounds 7 --prompts 300
    .venv/bin/python benchmarks/routing_latency.py --torch-threads 2 --out /tmp/latency.json
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
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
    build_router,
    check_at_least,
    load_texts,
    machine_info,
    median_over_rounds,
    percentiles,
    routing_service,
    split_list,
    write_and_report,
)

DEFAULT_OUT = REPO / "benchmarks" / "results" / "routing_latency.json"
PERCENTILES = (50, 95, 99)


BACKENDS = ("pytorch", "onnx", "onnx-int8")
"""Embedding backends, as ``router.embedding_backend`` names them in a gateway config."""
LIBRARIES = ("torch", "sentence-transformers", "onnxruntime", "numpy", "faiss-cpu")
"""Distributions whose versions are stored with the results."""


def backend_embedder(config, backend: str):
    """Return the embedder the gateway builds for ``config`` with ``backend`` selected."""
    from router.router_loader import make_embedder

    settings = config.router.model_copy(update={"embedding_backend": backend})
    return make_embedder(settings, max_chunks=config.conversation.max_chunks)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_argument(parser)
    add_split_argument(parser, "split of --data whose prompts are routed (default: test)")
    add_config_argument(parser)
    parser.add_argument(
        "--backends",
        default=",".join(BACKENDS),
        help=f"comma-separated embedding backends, the first is the baseline; known: "
        f"{', '.join(BACKENDS)} (default: {','.join(BACKENDS)})",
    )
    parser.add_argument(
        "--prompts",
        type=int,
        default=200,
        help="prompts routed one at a time in each round of the batch-1 measurement (default: 200)",
    )
    parser.add_argument(
        "--batch-sizes",
        default="32,128",
        help="comma-separated batch sizes for the throughput measurement (default: 32,128)",
    )
    parser.add_argument(
        "--batches",
        type=int,
        default=2,
        help="batches routed per round of the throughput measurement, per batch size (default: 2)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="rounds of every measurement; medians over rounds are reported (default: 5)",
    )
    add_torch_threads_argument(parser)
    add_out_argument(parser, DEFAULT_OUT)
    args = parser.parse_args(argv)

    args.backends = split_list(args.backends)
    unknown = [name for name in args.backends if name not in BACKENDS]
    if unknown or not args.backends:
        known = ", ".join(BACKENDS)
        parser.error(f"unknown embedding backend {unknown or args.backends}: choose from {known}")
    args.batch_sizes = [int(size) for size in args.batch_sizes.split(",") if size.strip()]
    if any(size < 1 for size in args.batch_sizes):
        parser.error(f"--batch-sizes must be positive integers, got {args.batch_sizes}")
    check_at_least(parser, args, ("prompts", "batches", "rounds"))
    return args


def build_service(config, domain_router, embedder):
    """Wrap ``domain_router``, embedding with ``embedder`` instead, like the gateway does."""
    # NOTE: the head is trained on the default backend's embeddings and reused with every
    # backend, as a router artifact is when a backend embeds with the same model.
    domain_router = domain_router.with_thresholds(domain_router.thresholds)
    domain_router.embedder = embedder
    return routing_service(config, domain_router)


def time_calls_ms(call: Callable[[str], object], texts: Sequence[str]) -> np.ndarray:
    """Call ``call`` on each text in turn; return each call's wall time in milliseconds."""
    timings = np.empty(len(texts))
    for position, text in enumerate(texts):
        started = time.perf_counter()
        call(text)
        timings[position] = (time.perf_counter() - started) * 1000
    return timings


def latency_stats(call: Callable[[str], object], texts: Sequence[str], rounds: int) -> dict:
    """Measure ``call`` at batch 1 for ``rounds`` rounds; return the median over rounds of each percentile."""
    per_round = []
    for _ in range(rounds):
        per_round.append(percentiles(time_calls_ms(call, texts), PERCENTILES))
    return {
        **median_over_rounds(per_round),
        "calls_per_round": len(texts),
        "rounds": per_round,
    }


def throughput_stats(service, texts: Sequence[str], batch_size: int, batches: int, rounds: int) -> dict:
    """Route ``batches`` batches of ``batch_size`` prompts per round; return prompts per second."""
    batch_list = [
        [texts[(start + offset) % len(texts)] for offset in range(batch_size)]
        for start in range(0, batch_size * batches, batch_size)
    ]
    per_round = []
    for _ in range(rounds):
        started = time.perf_counter()
        for batch in batch_list:
            service.route_many(batch)
        per_round.append(batch_size * batches / (time.perf_counter() - started))
    return {"prompts_per_second": statistics.median(per_round), "rounds": per_round}


def measure_backend(service, texts: Sequence[str], args: argparse.Namespace) -> dict:
    """Measure one backend: batch-1 decision and embedding latency, and batch throughput."""
    embedder = service.domain_router.embedder
    alias = service.routing_alias

    # Warm-up: the first calls allocate buffers and fill caches.
    for text in texts[:10]:
        service.route(alias, text)

    return {
        "embedder": type(embedder).__name__,
        "decision": latency_stats(lambda text: service.route(alias, text), texts, args.rounds),
        "embedding": latency_stats(lambda text: embedder.encode([text]), texts, args.rounds),
        "throughput": {
            str(size): throughput_stats(service, texts, size, args.batches, args.rounds)
            for size in args.batch_sizes
        },
    }


def add_ratios(backends: dict) -> None:
    """Add each backend's ratios to the first (baseline) backend: latency and throughput."""
    baseline = next(iter(backends.values()))
    for stats in backends.values():
        stats["decision_p50_ratio"] = stats["decision"]["p50_ms"] / baseline["decision"]["p50_ms"]
        stats["throughput_ratio"] = {
            size: run["prompts_per_second"] / baseline["throughput"][size]["prompts_per_second"]
            for size, run in stats["throughput"].items()
        }


def machine(torch_threads: int) -> dict:
    """Describe the machine, the load now and the versions of ``LIBRARIES``, for the results."""
    return machine_info(LIBRARIES, torch_threads=torch_threads)


def print_report(result: dict) -> None:
    baseline = next(iter(result["backends"]))
    print(
        f"{result['prompts']} prompts of the {result['split']} split, {result['rounds_count']} rounds, "
        f"{result['machine']['torch_threads']} torch thread(s), {result['machine']['cpus']} CPUs, "
        f"load average {result['machine']['load_average_1m']:.2f} at the start"
    )

    print()
    print("batch 1, milliseconds (median over rounds of each round's percentile)")
    header = f"{'backend':<12}{'stage':<11}" + "".join(f"{f'p{q}':>9}" for q in PERCENTILES)
    print(f"{header}{f'p50 vs {baseline}':>16}")
    for name, stats in result["backends"].items():
        for stage in ("decision", "embedding"):
            row = stats[stage]
            cells = "".join(f"{row[f'p{q}_ms']:>9.2f}" for q in PERCENTILES)
            ratio = f"{stats['decision_p50_ratio']:.2f}" if stage == "decision" else ""
            print(f"{name:<12}{stage:<11}{cells}{ratio:>16}")

    print()
    print("throughput, prompts per second (route_many, median over rounds)")
    sizes = list(next(iter(result["backends"].values()))["throughput"])
    print(f"{'backend':<12}" + "".join(f"{f'batch {size}':>12}{'ratio':>8}" for size in sizes))
    for name, stats in result["backends"].items():
        cells = "".join(
            f"{stats['throughput'][size]['prompts_per_second']:>12.0f}{stats['throughput_ratio'][size]:>8.2f}"
            for size in sizes
        )
        print(f"{name:<12}{cells}")
    print(f"(ratios are against the {baseline} backend measured in the same run)")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.torch_threads)
    logging.basicConfig(level=logging.WARNING)
    from router.config import load_config

    config = load_config(args.config)
    texts = load_texts(args.data, args.split)[: args.prompts]
    result = {
        "data": str(args.data),
        "split": args.split,
        "config": config.source,
        "prompts": len(texts),
        "rounds_count": args.rounds,
        "machine": machine(args.torch_threads),
        "backends": {},
    }

    domain_router = build_router(config)
    for name in args.backends:
        service = build_service(config, domain_router, backend_embedder(config, name))
        result["backends"][name] = measure_backend(service, texts, args)
    add_ratios(result["backends"])
    result["machine"]["load_average_1m_end"] = os.getloadavg()[0]

    write_and_report(result, args.out, print_report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
