"""Helpers shared by the benchmark scripts.

They cover what the scripts do alike: the prompt set and its command-line options, the
description of the machine stored with each result, per-round statistics, wrapping a router the
way the gateway does, and writing the JSON results.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
from collections.abc import Callable, Iterable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "skills" / "skills.jsonl"
SPLITS = ("train", "validation", "test")
"""Splits of the skills prompt set, as its ``split`` field names them."""


def add_data_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--data``, the labelled prompt set (the skills JSONL file by default)."""
    parser.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_DATA,
        help=f"labelled prompt set, JSONL with text, label, split (default: {DEFAULT_DATA})",
    )


def add_split_argument(
    parser: argparse.ArgumentParser, help_text: str, choices: Sequence[str] = SPLITS
) -> None:
    """Add ``--split``, the split of ``--data`` a script uses, ``test`` by default."""
    parser.add_argument("--split", choices=list(choices), default="test", help=help_text)


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--config``, the gateway config whose router settings a script uses."""
    parser.add_argument(
        "--config",
        default=None,
        help="gateway config whose router settings to use (default: the bundled data/default.yaml)",
    )


def add_torch_threads_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--torch-threads``, the PyTorch intra-op thread count, 1 by default."""
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="PyTorch intra-op threads (default: 1; two threads on a 2-vCPU VM gave erratic timings)",
    )


def add_out_argument(parser: argparse.ArgumentParser, default: Path) -> None:
    """Add ``--out``, the path of the JSON results."""
    parser.add_argument(
        "--out",
        type=Path,
        default=default,
        help=f"where to write the JSON results (default: {default})",
    )


def check_at_least(
    parser: argparse.ArgumentParser, args: argparse.Namespace, names: Iterable[str], minimum: int = 1
) -> None:
    """Exit through ``parser.error`` when an option in ``names`` is below ``minimum``.

    ``names`` are attribute names of ``args``, such as ``switch_requests`` for ``--switch-requests``.
    """
    for name in names:
        value = getattr(args, name)
        if value < minimum:
            parser.error(f"--{name.replace('_', '-')} must be at least {minimum}, got {value}")


def split_list(value: str) -> list[str]:
    """Split a comma-separated option value into its stripped, non-empty items."""
    return [item.strip() for item in value.split(",") if item.strip()]


def read_split(path: Path, split: str) -> list[dict[str, Any]]:
    """Read the records of ``split`` from a JSONL prompt set, in file order.

    Exits with a message naming the fix when the file is missing or has no row of ``split``.
    """
    if not path.is_file():
        raise SystemExit(f"prompt set not found: {path}: pass the skills JSONL file with --data")
    records = []
    with path.open(encoding="utf-8") as stream:
        for number, line in enumerate(stream, start=1):
            try:
                record = json.loads(line)
                matches = record["split"] == split
            except (json.JSONDecodeError, KeyError, TypeError):
                raise SystemExit(
                    f"invalid prompt set {path}, line {number}: expected a JSON object with "
                    "'text', 'label' and 'split'; pass the skills JSONL file with --data"
                ) from None
            if matches:
                records.append(record)
    if not records:
        raise SystemExit(f"no rows with split {split!r} in {path}: check the file's 'split' values")
    return records


def load_texts(path: Path, split: str) -> list[str]:
    """Read the prompts of ``split`` from a JSONL prompt set, in a fixed shuffled order.

    The skills prompt set is stored sorted by label, so without the shuffle the first prompts of a
    split would all come from one domain. With it, any prefix is a sample of every domain.
    """
    texts = [record["text"] for record in read_split(path, split)]
    random.Random(0).shuffle(texts)
    return texts


def build_router(config):
    """Return the router the gateway builds from ``config`` (trained, or loaded from its cache)."""
    from router.router_loader import build_domain_router

    return build_domain_router(config.router, config.adapters, max_chunks=config.conversation.max_chunks)


def routing_service(config, domain_router):
    """Wrap ``domain_router`` in a ``RoutingService`` with the settings of the gateway ``config``.

    The gateway also passes its prompt-logging setting and a session store, which the benchmarks
    leave at their defaults.
    """
    from router.routing import RoutingService

    return RoutingService(
        domain_router,
        config.adapters,
        base_model=config.backend.base_model_name,
        routing_alias=config.server.routing_alias,
        conversation=config.conversation,
        sessions=config.sessions,
    )


def percentiles(
    values: Sequence[float] | np.ndarray, quantiles: Iterable[int], unit: str = "ms"
) -> dict[str, float]:
    """Return ``{"p50_ms": ..., "p99_ms": ...}``: each percentile of ``values``, keyed with ``unit``."""
    return {f"p{q}_{unit}": float(np.percentile(values, q)) for q in quantiles}


def median_over_rounds(per_round: list[dict[str, Any]]) -> dict[str, float | None]:
    """Return the median over rounds of each numeric statistic; ``None`` where no round has one.

    Statistics that are a string or a list in the first round are left out.
    """
    medians: dict[str, float | None] = {}
    for key, first in per_round[0].items():
        if isinstance(first, str | list):
            continue
        values = [stats[key] for stats in per_round if stats[key] is not None]
        medians[key] = statistics.median(values) if values else None
    return medians


def library_versions(names: Iterable[str]) -> dict[str, str | None]:
    """Return the installed version of each distribution in ``names``, ``None`` for one not installed."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def platform_info() -> dict[str, Any]:
    """Return the operating system, the Python version and the CPU count."""
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }


def machine_info(libraries: Iterable[str], **settings: Any) -> dict[str, Any]:
    """Describe the machine for a result: platform, load now, the script's ``settings``, library versions.

    The caller adds ``load_average_1m_end`` when the measurements are done.
    """
    return {
        **platform_info(),
        "load_average_1m": os.getloadavg()[0],
        **settings,
        "libraries": library_versions(libraries),
    }


def describe_load_average(start: float, end: float) -> str:
    """Return the report's phrase for the 1-minute load average at the start and end of a run."""
    return f"load average {start:.2f} at the start, {end:.2f} at the end"


def write_and_report(result: dict, out: Path, print_report: Callable[[dict], None]) -> None:
    """Write ``result`` to ``out`` as indented JSON, then print the report and the path written."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print_report(result)
    print(f"\nwrote {out}")
