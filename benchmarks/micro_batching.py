"""Measure what micro-batching does for routing throughput as concurrency grows.

The gateway routes each request on a worker thread. With ``router.batching`` enabled (the
default), the threads' texts are embedded together (``classifier/batching.py``). Without it,
each thread embeds its own text and the calls compete for the cores. This script runs that in one
process: ``concurrency`` threads route prompts of the skills test split through
``RoutingService.route_conversation``, the call the gateway makes for a chat request, until a
fixed number of prompts is routed. For each embedding backend it reports decisions per second and
the latency of one decision at p50 and p99, with batching off (the baseline) and on, and the ratio.
Medians over rounds are reported; batching off and on alternate within each round, so that both
see the same machine noise.

Usage::

    .venv/bin/python benchmarks/micro_batching.py
    .venv/bin/python benchmarks/micro_batching.py --backends onnx-int8 --concurrency 1,32 --rounds 5
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import (  # noqa: E402
    DEFAULT_DATA,
    build_router,
    describe_load_average,
    load_texts,
    median_over_rounds,
    percentiles,
    split_list,
    write_and_report,
)
from benchmarks.routing_latency import BACKENDS, build_service, machine  # noqa: E402

DEFAULT_OUT = REPO / "benchmarks" / "results" / "micro_batching.json"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help=f"prompt set (default: {DEFAULT_DATA})"
    )
    parser.add_argument(
        "--config", default=None, help="gateway config (default: the bundled data/default.yaml)"
    )
    parser.add_argument(
        "--backends",
        default="pytorch,onnx-int8",
        help=f"comma-separated embedding backends; known: {', '.join(BACKENDS)} (default: pytorch,onnx-int8)",
    )
    parser.add_argument(
        "--concurrency", default="1,8,32", help="comma-separated thread counts (default: 1,8,32)"
    )
    parser.add_argument(
        "--prompts", type=int, default=256, help="prompts routed per measurement (default: 256)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds; medians are reported (default: 3)")
    parser.add_argument("--torch-threads", type=int, default=1, help="PyTorch intra-op threads (default: 1)")
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"JSON results (default: {DEFAULT_OUT})"
    )

    args = parser.parse_args(argv)
    args.backends = split_list(args.backends)
    unknown = sorted(set(args.backends) - set(BACKENDS))
    if unknown:
        parser.error(f"unknown backend {', '.join(unknown)}: choose from {', '.join(BACKENDS)}")

    try:
        args.concurrency = [int(value) for value in args.concurrency.split(",")]
    except ValueError:
        parser.error(f"--concurrency must be comma-separated integers, got {args.concurrency!r}")

    if min(args.concurrency) < 1 or args.prompts < max(args.concurrency) or args.rounds < 1:
        parser.error("--concurrency values must be at least 1, --prompts at least the largest, --rounds >= 1")
    return args


def route_concurrently(service, texts: Sequence[str], concurrency: int, count: int) -> dict:
    """Route ``count`` prompts on ``concurrency`` threads; return throughput and latency."""
    next_index = iter(range(count))
    lock = threading.Lock()
    latencies: list[float] = []

    def work() -> None:
        while True:
            with lock:
                index = next(next_index, None)
            if index is None:
                return
            messages = [{"role": "user", "content": texts[index % len(texts)]}]
            started = time.perf_counter()
            service.route_conversation("auto", messages)
            elapsed = (time.perf_counter() - started) * 1000
            with lock:
                latencies.append(elapsed)

    threads = [threading.Thread(target=work) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    return {"decisions_per_second": count / wall, **percentiles(latencies, (50, 99))}


def measure(config, domain_router, backend: str, texts: Sequence[str], args: argparse.Namespace) -> dict:
    """Return ``{concurrency: {"off"|"on": medians and rounds}}`` for one backend."""
    from router.router_loader import make_embedder

    services = {}
    for mode, enabled in (("off", False), ("on", True)):
        settings = config.router.model_copy(
            update={
                "embedding_backend": backend,
                "batching": config.router.batching.model_copy(update={"enabled": enabled}),
            }
        )
        embedder = make_embedder(settings, max_chunks=config.conversation.max_chunks)
        services[mode] = build_service(config, domain_router, embedder)
        services[mode].route_conversation("auto", [{"role": "user", "content": "warm-up"}])

    results: dict[str, dict] = {}
    for concurrency in args.concurrency:
        rounds: dict[str, list[dict]] = {"off": [], "on": []}
        for round_number in range(args.rounds):
            for mode, service in services.items():
                stats = route_concurrently(service, texts, concurrency, args.prompts)
                rounds[mode].append(stats)
                print(
                    f"{backend:<10} concurrency {concurrency:>3} batching {mode:<3} "
                    f"round {round_number + 1}: "
                    f"{stats['decisions_per_second']:7.1f}/s  p50 {stats['p50_ms']:8.2f} ms  "
                    f"p99 {stats['p99_ms']:8.2f} ms",
                    flush=True,
                )
        results[str(concurrency)] = {
            mode: {**median_over_rounds(runs), "rounds": runs} for mode, runs in rounds.items()
        }
        on, off = results[str(concurrency)]["on"], results[str(concurrency)]["off"]
        on["throughput_vs_off"] = on["decisions_per_second"] / off["decisions_per_second"]
    return results


def print_report(result: dict) -> None:
    info = result["machine"]
    print(
        f"\n{result['rounds']} rounds of {result['prompts']} prompts, medians; "
        f"{info['cpus']} CPUs, "
        f"{describe_load_average(info['load_average_1m'], result['load_average_1m_end'])}"
    )
    print(
        f"{'backend':<10}{'threads':>8}{'batching':>9}{'decisions/s':>13}"
        f"{'p50 ms':>9}{'p99 ms':>9}{'vs off':>8}"
    )
    for backend, by_concurrency in result["backends"].items():
        for concurrency, modes in by_concurrency.items():
            for mode, stats in modes.items():
                ratio = f"{stats.get('throughput_vs_off', 1.0):.2f}"
                print(
                    f"{backend:<10}{concurrency:>8}{mode:>9}{stats['decisions_per_second']:>13.1f}"
                    f"{stats['p50_ms']:>9.2f}{stats['p99_ms']:>9.2f}{ratio:>8}"
                )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.torch_threads))
    import torch

    torch.set_num_threads(args.torch_threads)
    from router.config import load_config

    config = load_config(args.config)
    texts = load_texts(args.data, "test")
    info = machine(args.torch_threads)
    domain_router = build_router(config)
    backends = {backend: measure(config, domain_router, backend, texts, args) for backend in args.backends}
    result = {
        "data": str(args.data),
        "prompts": args.prompts,
        "rounds": args.rounds,
        "backends": backends,
        "machine": info,
        "load_average_1m_end": os.getloadavg()[0],
    }
    write_and_report(result, args.out, print_report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
