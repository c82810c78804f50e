"""Measure what the gateway adds to a request, against a fast upstream called directly.

The script starts two processes on 127.0.0.1: ``benchmarks/fast_upstream.py``, an
OpenAI-compatible server that responds immediately, and a real gateway (``adapter-router serve``)
whose upstream backend is that server and whose router settings come from the gateway config
(by default the bundled ``data/default.yaml``). The same chat requests, user prompts of the skills
test split, are then sent at each concurrency level to three targets:

- ``direct``: the upstream itself, the baseline;
- ``gateway, explicit``: the gateway with ``model`` set to an adapter, so nothing is embedded
  (the gateway's own overhead, routing excluded);
- ``gateway, routed``: the gateway with ``model`` set to the routing alias, so each request is
  embedded and classified before it is forwarded.

Each round sends a fixed number of requests per target and concurrency level, the targets
interleaved so that they share the machine's noise; medians over rounds are reported. Added
latency is a gateway target's figure minus the direct figure of the same run.

Usage::

    .venv/bin/python benchmarks/gateway_overhead.py
    .venv/bin/python benchmarks/gateway_overhead.py --requests 1=100,32=500 --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import (  # noqa: E402
    DEFAULT_DATA,
    add_out_argument,
    check_at_least,
    describe_load_average,
    load_texts,
    median_over_rounds,
    percentiles,
    platform_info,
    write_and_report,
)
from benchmarks.http_load import run_load  # noqa: E402
from tests.server_process import ADAPTER_ROUTER, ServerProcess, free_port  # noqa: E402

DEFAULT_OUT = REPO / "benchmarks" / "results" / "gateway_overhead.json"
DEFAULT_REQUESTS = "1=200,32=1000,256=1000"
EXPLICIT_ADAPTER = "math"


def parse_requests(value: str) -> dict[int, int]:
    """Parse ``CONCURRENCY=REQUESTS`` pairs, e.g. ``1=200,32=1000``."""
    plan = {}
    for pair in value.split(","):
        concurrency, _, count = pair.partition("=")
        try:
            plan[int(concurrency)] = int(count)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"invalid --requests entry {pair!r}: write CONCURRENCY=REQUESTS, e.g. 32=1000"
            ) from None
    if any(concurrency < 1 or count < concurrency for concurrency, count in plan.items()):
        raise argparse.ArgumentTypeError(
            f"each concurrency must be at least 1 and at most its request count, got {value}"
        )
    return plan


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--config",
        default=None,
        help="gateway config whose router settings to use; its backend is replaced by the fast "
        "upstream (default: the bundled data/default.yaml)",
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_DATA,
        help=f"prompt set whose test split gives the user messages (default: {DEFAULT_DATA})",
    )
    parser.add_argument(
        "--requests",
        type=parse_requests,
        default=parse_requests(DEFAULT_REQUESTS),
        help=f"CONCURRENCY=REQUESTS pairs: requests sent per round, target and concurrency level "
        f"(default: {DEFAULT_REQUESTS})",
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds; medians over rounds are reported (default: 3)"
    )
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="PyTorch intra-op threads of the gateway, set through OMP_NUM_THREADS (default: 1)",
    )
    add_out_argument(parser, DEFAULT_OUT)
    args = parser.parse_args(argv)
    check_at_least(parser, args, ("rounds",))
    return args


def write_gateway_config(source: str | None, upstream_url: str, folder: Path) -> Path:
    """Write a gateway config with the router settings of ``source`` and the fast upstream as backend."""
    from router.config import load_config

    config = load_config(source)
    document = {
        "router": config.router.model_dump(),
        "adapters": config.adapters,
        "backend": {
            "type": "upstream",
            "url": upstream_url,
            "base_model_name": config.backend.base_model_name,
        },
        "conversation": config.conversation.model_dump(),
        "sessions": config.sessions.model_dump(),
        "server": {**config.server.model_dump(), "log_prompts": False},
    }
    path = folder / "gateway.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


def send_requests(url: str, model: str, texts: Sequence[str], concurrency: int, count: int) -> dict:
    """Send ``count`` chat requests with ``concurrency`` in flight; return latency and throughput."""

    def make_body(index: int) -> dict:
        message = {"role": "user", "content": texts[index % len(texts)]}
        return {"model": model, "messages": [message], "max_tokens": 16}

    result = run_event_loop(run_load(url, make_body, concurrency, count))
    return {**percentiles(result.latencies_ms, (50, 99)), "requests_per_second": result.requests_per_second}


def run_event_loop(coroutine):
    """Run ``coroutine`` on uvloop when it is installed (a cheaper client), else on asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def run_rounds(targets: dict[str, tuple[str, str]], texts: Sequence[str], args: argparse.Namespace) -> dict:
    """Run every round; return ``{concurrency: {target: {statistic: median, "rounds": [...]}}}``."""
    per_round: dict[int, dict[str, list[dict]]] = {
        concurrency: {name: [] for name in targets} for concurrency in args.requests
    }
    for round_number in range(args.rounds):
        for concurrency, count in args.requests.items():
            for name, (url, model) in targets.items():
                stats = send_requests(url, model, texts, concurrency, count)
                per_round[concurrency][name].append(stats)
                print(
                    f"round {round_number + 1}, concurrency {concurrency:>3}, {name:<18} "
                    f"p50 {stats['p50_ms']:8.2f} ms  p99 {stats['p99_ms']:8.2f} ms  "
                    f"{stats['requests_per_second']:7.0f} req/s",
                    flush=True,
                )

    return {
        str(concurrency): {
            name: {**median_over_rounds(rounds), "rounds": rounds} for name, rounds in by_target.items()
        }
        for concurrency, by_target in per_round.items()
    }


def add_overhead(results: dict) -> None:
    """Add each gateway target's added latency and throughput ratio against ``direct``."""
    for by_target in results.values():
        direct = by_target["direct"]
        for stats in by_target.values():
            stats["added_p50_ms"] = stats["p50_ms"] - direct["p50_ms"]
            stats["added_p99_ms"] = stats["p99_ms"] - direct["p99_ms"]
            stats["throughput_ratio"] = stats["requests_per_second"] / direct["requests_per_second"]


def print_report(result: dict) -> None:
    machine = result["machine"]
    print()
    print(
        f"{result['rounds_count']} rounds, medians over rounds; {machine['cpus']} CPUs, "
        f"{describe_load_average(machine['load_average_1m'], machine['load_average_1m_end'])}; "
        f"the client, the gateway and the upstream share the machine"
    )
    print(
        f"{'concurrency':>11}  {'target':<18}{'requests':>9}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'added p50':>11}{'added p99':>11}{'req/s':>8}{'vs direct':>11}"
    )
    for concurrency, by_target in result["results"].items():
        for name, stats in by_target.items():
            print(
                f"{concurrency:>11}  {name:<18}{result['requests'][concurrency]:>9}"
                f"{stats['p50_ms']:>9.2f}{stats['p99_ms']:>9.2f}"
                f"{stats['added_p50_ms']:>+11.2f}{stats['added_p99_ms']:>+11.2f}"
                f"{stats['requests_per_second']:>8.0f}{stats['throughput_ratio']:>11.2f}"
            )
    print("(added = the target's figure minus direct's; vs direct = requests per second over direct's)")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    texts = load_texts(args.data, "test")
    load_start = os.getloadavg()[0]

    with tempfile.TemporaryDirectory(prefix="gateway-overhead-") as folder:
        folder_path = Path(folder)
        upstream_port, gateway_port = free_port(), free_port()
        upstream = ServerProcess(
            "fast upstream",
            [sys.executable, str(REPO / "benchmarks" / "fast_upstream.py"), "--port", str(upstream_port)],
            upstream_port,
            folder_path / "upstream.log",
        )
        config_path = write_gateway_config(args.config, f"{upstream.url}/v1", folder_path)
        gateway = ServerProcess(
            "gateway",
            [ADAPTER_ROUTER, "serve", "--config", str(config_path), "--port", str(gateway_port)],
            gateway_port,
            folder_path / "gateway.log",
        )
        os.environ["OMP_NUM_THREADS"] = str(args.torch_threads)
        try:
            upstream.start()
            gateway.start()
            routing_alias = yaml.safe_load(config_path.read_text(encoding="utf-8"))["server"]["routing_alias"]
            targets = {
                "direct": (f"{upstream.url}/v1/chat/completions", EXPLICIT_ADAPTER),
                "gateway, explicit": (f"{gateway.url}/v1/chat/completions", EXPLICIT_ADAPTER),
                "gateway, routed": (f"{gateway.url}/v1/chat/completions", routing_alias),
            }
            results = run_rounds(targets, texts, args)
        finally:
            gateway.stop()
            upstream.stop()

    add_overhead(results)
    result = {
        "data": str(args.data),
        "config": args.config or "data/default.yaml",
        "rounds_count": args.rounds,
        "requests": {str(concurrency): count for concurrency, count in args.requests.items()},
        "gateway_torch_threads": args.torch_threads,
        "results": results,
        "machine": {
            **platform_info(),
            "load_average_1m": load_start,
            "load_average_1m_end": os.getloadavg()[0],
        },
    }
    write_and_report(result, args.out, print_report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
