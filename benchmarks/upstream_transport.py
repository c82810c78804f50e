"""Measure the CPU time the gateway's upstream client spends per request, per httpx transport.

The gateway forwards every request with an ``httpx.AsyncClient``. This script sends the same chat
request to ``benchmarks/fast_upstream.py`` through two clients that differ only in their transport:
httpx's default (httpcore, the baseline) and the gateway's ``KeepAliveTransport``. It reports the
client process's CPU time per request and the requests per second, one request at a time and with
32 in flight, as medians over rounds. The upstream runs in its own process.

Usage::

    .venv/bin/python benchmarks/upstream_transport.py
    .venv/bin/python benchmarks/upstream_transport.py --requests 5000 --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import (  # noqa: E402
    add_out_argument,
    describe_load_average,
    machine_info,
    median_over_rounds,
    write_and_report,
)
from router.backends.keepalive_transport import KeepAliveTransport  # noqa: E402
from tests.server_process import ServerProcess, free_port  # noqa: E402

DEFAULT_OUT = REPO / "benchmarks" / "results" / "upstream_transport.json"
BODY = {"model": "math", "messages": [{"role": "user", "content": "Solve for x: 3x + 5 = 20"}]}
CONCURRENCY = (1, 32)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000, help="requests per measurement (default: 3000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; medians are reported (default: 3)")
    add_out_argument(parser, DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.requests < max(CONCURRENCY) or args.rounds < 1:
        parser.error(f"--requests must be at least {max(CONCURRENCY)} and --rounds at least 1")
    return args


async def measure(client: httpx.AsyncClient, url: str, concurrency: int, count: int) -> dict:
    """Send ``count`` requests with ``concurrency`` in flight; return CPU ms per request and rate."""

    async def worker(requests: int) -> None:
        for _ in range(requests):
            response = await client.post(url, json=BODY)
            response.raise_for_status()
            response.json()

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(count // concurrency) for _ in range(concurrency)))
    sent = count // concurrency * concurrency
    return {
        "cpu_ms_per_request": (time.process_time() - cpu) * 1000 / sent,
        "requests_per_second": sent / (time.perf_counter() - wall),
    }


async def run(url: str, args: argparse.Namespace) -> dict:
    clients = {
        "httpcore": lambda: httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=256)),
        "keep-alive": lambda: httpx.AsyncClient(timeout=30, transport=KeepAliveTransport()),
    }
    rounds: dict[str, dict[int, list[dict]]] = {name: {c: [] for c in CONCURRENCY} for name in clients}
    for round_number in range(args.rounds):
        for name, make_client in clients.items():
            async with make_client() as client:
                await measure(client, url, 1, 200)  # warm-up: connections open, code paths hot
                for concurrency in CONCURRENCY:
                    stats = await measure(client, url, concurrency, args.requests)
                    rounds[name][concurrency].append(stats)
                    print(
                        f"round {round_number + 1}, {name:<10} concurrency {concurrency:>2}: "
                        f"{stats['cpu_ms_per_request']:.3f} ms CPU per request, "
                        f"{stats['requests_per_second']:.0f} req/s",
                        flush=True,
                    )
    return {
        name: {
            str(concurrency): {**median_over_rounds(runs), "rounds": runs}
            for concurrency, runs in by_concurrency.items()
        }
        for name, by_concurrency in rounds.items()
    }


def print_report(result: dict) -> None:
    machine = result["machine"]
    load = describe_load_average(machine["load_average_1m"], machine["load_average_1m_end"])
    print(f"\n{result['rounds']} rounds of {result['requests']} requests, medians; {load}")
    print(f"{'transport':<12}{'in flight':>10}{'CPU ms/request':>16}{'req/s':>8}{'CPU vs httpcore':>17}")
    for name, by_concurrency in result["results"].items():
        for concurrency, stats in by_concurrency.items():
            print(
                f"{name:<12}{concurrency:>10}{stats['cpu_ms_per_request']:>16.3f}"
                f"{stats['requests_per_second']:>8.0f}{stats['cpu_vs_httpcore']:>17.2f}"
            )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    machine = machine_info(["httpx", "httptools"])
    with tempfile.TemporaryDirectory(prefix="upstream-transport-") as folder:
        port = free_port()
        upstream = ServerProcess(
            "fast upstream",
            [sys.executable, str(REPO / "benchmarks" / "fast_upstream.py"), "--port", str(port)],
            port,
            Path(folder) / "upstream.log",
        )
        upstream.start()
        try:
            import uvloop

            results = uvloop.run(run(f"{upstream.url}/v1/chat/completions", args))
        finally:
            upstream.stop()

    baseline = results["httpcore"]
    for by_concurrency in results.values():
        for concurrency, stats in by_concurrency.items():
            stats["cpu_vs_httpcore"] = (
                stats["cpu_ms_per_request"] / baseline[concurrency]["cpu_ms_per_request"]
            )
    machine["load_average_1m_end"] = os.getloadavg()[0]
    result = {"requests": args.requests, "rounds": args.rounds, "results": results, "machine": machine}
    write_and_report(result, args.out, print_report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
