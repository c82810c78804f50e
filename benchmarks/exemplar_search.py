"""Measure exemplar search per index structure as the number of exemplars grows.

The exemplar index (:class:`classifier.ExemplarIndex`) is searched on every routing decision, for
the nearest exemplars and the out-of-domain similarity, and by the k-NN head. This script builds
each search structure over 1,000, 10,000 and 100,000 exemplar embeddings and measures:

- build time, and the memory the structure uses (``ExemplarIndex.nbytes``);
- batch 1: one query per call, p50 and p99 in microseconds;
- batch 32: queries per second;
- recall@1 and recall@10 against exact search (a float64 matrix product over the same vectors).

The structures are ``numpy`` (exact, a matrix product), ``flat`` (exact, faiss ``IndexFlatIP``,
the baseline: every row reports its ratio to ``flat`` at the same size, from the same run) and
``hnsw`` (approximate, faiss ``IndexHNSWFlat``).

The vectors are real: the texts of the bundled exemplars (``data/skills``), the skills prompt set
and CLINC150, embedded with the project's default embedder (all-MiniLM-L6-v2 through
sentence-transformers, one thread) and cached under ``benchmarks/results/``. The queries are
held-out texts of the same sources. These sources hold about 40,000 distinct texts, so a larger
exemplar set is filled up with perturbed copies of real embeddings: Gaussian noise, then L2
normalisation, with cosine similarity ``--copy-similarity`` to the original on average.

Each statistic is computed per round and the median over rounds is reported, because other
processes on a small shared machine make single rounds noisy.

Usage::

    .venv/bin/python benchmarks/exemplar_search.py
    .venv/bin/python benchmarks/exemplar_search.py --sizes 500,2000,20000 --rounds 3
    .venv/bin/python benchmarks/exemplar_search.py --structures flat,hnsw --ef-search 64,128
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import (  # noqa: E402
    add_out_argument,
    check_at_least,
    describe_load_average,
    machine_info,
    median_over_rounds,
    percentiles,
    split_list,
    write_and_report,
)

DATASETS = REPO.parent / "shared" / "datasets"
DEFAULT_SOURCES = (
    REPO / "data" / "skills",
    DATASETS / "skills" / "skills.jsonl",
    DATASETS / "clinc150" / "clinc150_intent.jsonl",
)
DEFAULT_CACHE = REPO / "benchmarks" / "results" / "exemplar_search_embeddings.npz"
DEFAULT_OUT = REPO / "benchmarks" / "results" / "exemplar_search.json"
STRUCTURES = ("numpy", "flat", "hnsw")
BASELINE = "flat"
RECALL_AT = (1, 10)
LIBRARIES = ("faiss-cpu", "numpy", "torch", "sentence-transformers")
"""Distributions whose versions are stored with the results."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes",
        default="1000,10000,100000",
        help="comma-separated exemplar counts (default: 1000,10000,100000)",
    )
    parser.add_argument(
        "--structures",
        default=",".join(STRUCTURES),
        help=f"comma-separated search structures; {BASELINE} is always measured as the baseline "
        f"(default: {','.join(STRUCTURES)})",
    )
    parser.add_argument(
        "--ef-search",
        default="",
        help="comma-separated HNSW efSearch values to measure, each as its own row "
        "(default: the index's default only)",
    )
    parser.add_argument(
        "--queries",
        type=int,
        default=1000,
        help="held-out query texts; batch 1 runs 500 of them per round, batch 32 and recall use all "
        "(default: 1000)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="rounds of every timing; medians over rounds are reported (default: 5)",
    )
    parser.add_argument(
        "--copy-similarity",
        type=float,
        default=0.9,
        help="mean cosine similarity of a perturbed copy to its real embedding, used when a size "
        "exceeds the real texts (default: 0.9)",
    )
    parser.add_argument(
        "--sources",
        type=Path,
        nargs="+",
        default=list(DEFAULT_SOURCES),
        help="JSONL files or folders of JSONL files with a 'text' field (default: the bundled "
        "exemplars, the skills prompt set and CLINC150)",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=DEFAULT_CACHE,
        help=f"embedding cache, reused while texts and model are unchanged (default: {DEFAULT_CACHE})",
    )
    add_out_argument(parser, DEFAULT_OUT)
    args = parser.parse_args(argv)

    try:
        args.sizes = [int(size) for size in args.sizes.split(",") if size.strip()]
        args.ef_search = [int(value) for value in args.ef_search.split(",") if value.strip()]
    except ValueError as error:
        parser.error(f"--sizes and --ef-search take comma-separated integers ({error})")
    if not args.sizes or any(size < 10 for size in args.sizes):
        parser.error(f"--sizes must be integers of at least 10, got {args.sizes}")
    if any(value < 1 for value in args.ef_search):
        parser.error(f"--ef-search values must be positive, got {args.ef_search}")
    structures = split_list(args.structures)
    unknown = [name for name in structures if name not in STRUCTURES]
    if unknown:
        parser.error(f"unknown structure {unknown}: choose from {', '.join(STRUCTURES)}")
    args.structures = [BASELINE] + [name for name in STRUCTURES if name in structures and name != BASELINE]
    check_at_least(parser, args, ("queries", "rounds"))
    if not 0 < args.copy_similarity < 1:
        parser.error(f"--copy-similarity must be between 0 and 1, got {args.copy_similarity}")
    return args


def load_texts(sources: Sequence[Path]) -> list[str]:
    """Read the ``text`` field of every JSONL row in ``sources``; distinct texts, in file order."""
    files: list[Path] = []
    for source in sources:
        if source.is_dir():
            files.extend(sorted(source.glob("*.jsonl")))
        elif source.is_file():
            files.append(source)
        else:
            raise SystemExit(f"text source not found: {source}: pass JSONL files or folders with --sources")

    texts: dict[str, None] = {}
    for path in files:
        with path.open(encoding="utf-8") as stream:
            for line in stream:
                if line.strip():
                    texts.setdefault(json.loads(line)["text"], None)
    return list(texts)


def embed_texts(texts: Sequence[str], cache: Path) -> np.ndarray:
    """Embed ``texts`` with the default embedder, or read them from ``cache`` if it matches."""
    from classifier import DEFAULT_EMBEDDING_MODEL

    digest = hashlib.sha256(DEFAULT_EMBEDDING_MODEL.encode())
    for text in texts:
        digest.update(text.encode("utf-8") + b"\0")
    key = digest.hexdigest()

    if cache.is_file():
        with np.load(cache, allow_pickle=False) as stored:
            if str(stored["key"]) == key:
                return stored["embeddings"]
        logging.warning("embedding cache %s is for other texts; embedding again", cache)

    from classifier import SentenceEmbedder

    started = time.perf_counter()
    embeddings = SentenceEmbedder(batch_size=64).encode(texts, show_progress=True)
    logging.warning("embedded %d texts in %.0f s", len(texts), time.perf_counter() - started)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, key=np.array(key), embeddings=embeddings)
    return embeddings


def perturbed_copies(vectors: np.ndarray, count: int, similarity: float, seed: int) -> np.ndarray:
    """Return ``count`` noisy, re-normalised copies of rows of ``vectors``, cycling through them.

    The noise is isotropic Gaussian with expected norm ``tan(arccos(similarity))``, so a copy's
    cosine similarity to its original is about ``similarity`` for unit rows.
    """
    rng = np.random.default_rng(seed)
    sources = vectors[np.arange(count) % len(vectors)]
    scale = np.tan(np.arccos(similarity)) / np.sqrt(vectors.shape[1])
    copies = sources + rng.standard_normal(sources.shape, dtype=np.float32) * np.float32(scale)
    copies /= np.linalg.norm(copies, axis=1, keepdims=True)
    return copies.astype(np.float32)


def exact_top_k(database: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Return the ids of the ``k`` largest inner products per query, ranked in float64.

    The best ``4 * k`` candidates of a float32 product are rescored in float64, so that float32
    rounding does not decide the order of near-equal exemplars.
    """
    candidates_per_query = min(4 * k, len(database))
    truth = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), 100):
        chunk = queries[start : start + 100]
        scores = chunk @ database.T
        candidates = np.argpartition(-scores, candidates_per_query - 1, axis=1)[:, :candidates_per_query]
        exact = np.einsum("qd,qcd->qc", chunk.astype(np.float64), database[candidates].astype(np.float64))
        order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
        truth[start : start + len(chunk)] = np.take_along_axis(candidates, order, axis=1)
    return truth


def recall_at(ids: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean share of each query's true top ``k`` that the search returned in its top ``k``."""
    hits = sum(
        len(set(row[:k].tolist()) & set(true[:k].tolist())) for row, true in zip(ids, truth, strict=True)
    )
    return hits / (k * len(truth))


def time_batch_1_us(index, queries: np.ndarray, k: int) -> dict[str, float]:
    """Search one query per call; return p50 and p99 in microseconds."""
    timings = np.empty(len(queries))
    for row in range(len(queries)):
        query = queries[row : row + 1]
        started = time.perf_counter()
        index.search(query, k)
        timings[row] = (time.perf_counter() - started) * 1e6
    return percentiles(timings, (50, 99), unit="us")


def time_batch_32_qps(index, queries: np.ndarray, k: int) -> float:
    """Search ``queries`` in batches of 32; return queries per second."""
    started = time.perf_counter()
    for start in range(0, len(queries), 32):
        index.search(queries[start : start + 32], k)
    return len(queries) / (time.perf_counter() - started)


def measure_size(
    database: np.ndarray,
    queries: np.ndarray,
    structures: Sequence[str],
    ef_values: Sequence[int],
    rounds: int,
) -> dict[str, dict]:
    """Build each structure over ``database`` and measure it; rounds alternate between rows.

    An HNSW graph is built once and measured once per value in ``ef_values`` (its default
    ``efSearch`` when empty), each as its own row.
    """
    from classifier import ExemplarIndex

    k = max(RECALL_AT)
    truth = exact_top_k(database, queries, k)
    batch_1_queries = queries[:500]

    rows: dict[str, tuple[ExemplarIndex, int | None]] = {}
    results: dict[str, dict] = {}
    for kind in structures:
        started = time.perf_counter()
        index = ExemplarIndex(database, kind=kind)
        build_s = time.perf_counter() - started
        for ef_search in (ef_values or [index.ef_search]) if kind == "hnsw" else [None]:
            name = kind if ef_search is None or not ef_values else f"{kind} ef={ef_search}"
            rows[name] = (index, ef_search)
            results[name] = {"kind": kind, "ef_search": ef_search, "build_s": build_s, "bytes": index.nbytes}

    per_round: dict[str, list[dict[str, float]]] = {name: [] for name in rows}
    for _ in range(rounds):
        for name, (index, ef_search) in rows.items():
            if ef_search is not None:
                index.ef_search = ef_search
            index.search(batch_1_queries[:20], k)  # warm-up: the first calls allocate buffers
            stats = time_batch_1_us(index, batch_1_queries, k)
            stats["batch_32_qps"] = time_batch_32_qps(index, queries, k)
            per_round[name].append(stats)

    for name, (index, ef_search) in rows.items():
        if ef_search is not None:
            index.ef_search = ef_search
        ids = index.search(queries, k)[1]
        measured = per_round[name]
        results[name].update(median_over_rounds(measured))
        results[name].update({f"recall_at_{at}": recall_at(ids, truth, at) for at in RECALL_AT})
        results[name]["rounds"] = measured

    baseline = results[BASELINE]
    for stats in results.values():
        stats["p50_ratio"] = stats["p50_us"] / baseline["p50_us"]
        stats["qps_ratio"] = stats["batch_32_qps"] / baseline["batch_32_qps"]
    return results


def exemplar_vectors(pool: np.ndarray, size: int, copy_similarity: float) -> tuple[np.ndarray, int]:
    """Return ``size`` exemplar vectors: real ones first, then perturbed copies; and the real count."""
    real = min(size, len(pool))
    if real == size:
        return pool[:size], real
    copies = perturbed_copies(pool, size - real, copy_similarity, seed=size)
    return np.concatenate([pool, copies]), real


def print_report(result: dict) -> None:
    machine = result["machine"]
    print(
        f"{result['queries']} held-out queries (batch 1: the first 500), k = {max(RECALL_AT)}, "
        f"{result['rounds_count']} rounds, 1 thread, {machine['cpus']} CPUs, "
        f"{describe_load_average(machine['load_average_1m'], machine['load_average_1m_end'])}"
    )
    print()
    header = (
        f"{'exemplars':>10} {'real':>7}  {'structure':<14}{'build s':>9}{'MiB':>8}{'p50 us':>9}{'p99 us':>9}"
        f"{'p50 ratio':>10}{'b32 q/s':>10}{'q/s ratio':>10}{'recall@1':>10}{'recall@10':>10}"
    )
    print(header)
    for size, entry in result["sizes"].items():
        for name, stats in entry["structures"].items():
            print(
                f"{size:>10} {entry['real']:>7}  {name:<14}"
                f"{stats['build_s']:>9.2f}{stats['bytes'] / 2**20:>8.1f}"
                f"{stats['p50_us']:>9.1f}{stats['p99_us']:>9.1f}{stats['p50_ratio']:>10.2f}"
                f"{stats['batch_32_qps']:>10.0f}{stats['qps_ratio']:>10.2f}"
                f"{stats['recall_at_1']:>10.4f}{stats['recall_at_10']:>10.4f}"
            )
    print(f"(ratios are against {BASELINE} at the same size, measured in the same run)")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import faiss
    import threadpoolctl
    import torch

    # One thread everywhere, like the other benchmarks: on a 2-vCPU VM more threads make
    # timings erratic. faiss searches a single query on one thread anyway.
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    threadpoolctl.threadpool_limits(1)

    texts = load_texts(args.sources)
    if len(texts) <= args.queries:
        raise SystemExit(f"only {len(texts)} texts in --sources, need more than --queries {args.queries}")
    embeddings = embed_texts(texts, args.cache)
    order = np.random.default_rng(0).permutation(len(texts))
    queries = np.ascontiguousarray(embeddings[order[: args.queries]])
    pool = np.ascontiguousarray(embeddings[order[args.queries :]])

    result = {
        "sources": [str(source) for source in args.sources],
        "texts": len(texts),
        "queries": len(queries),
        "copy_similarity": args.copy_similarity,
        "rounds_count": args.rounds,
        "machine": machine_info(LIBRARIES, threads=1),
        "sizes": {},
    }
    for size in args.sizes:
        database, real = exemplar_vectors(pool, size, args.copy_similarity)
        structures = measure_size(database, queries, args.structures, args.ef_search, args.rounds)
        result["sizes"][str(size)] = {"real": real, "structures": structures}
    result["machine"]["load_average_1m_end"] = os.getloadavg()[0]

    write_and_report(result, args.out, print_report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
