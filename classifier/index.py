"""Inner-product search over exemplar embeddings, with the search structure chosen by size.

With L2-normalised vectors the scores are cosine similarities. Three structures are available:

``numpy``
    Exact. The vectors live in a numpy array. A batch of queries goes through one matrix
    product and ``argpartition``. A single query goes through faiss's brute-force scan
    (``faiss.knn``) over the same array.
``flat``
    Exact: a faiss ``IndexFlatIP``. ``to_faiss`` writes ``numpy`` indexes in this form too.
``hnsw``
    Approximate: a faiss ``IndexHNSWFlat`` graph with inner product. A search follows graph
    edges instead of scanning every vector, so a query may miss some of the true nearest
    exemplars. A larger ``ef_search`` misses fewer and takes longer.

``kind="auto"`` picks ``hnsw`` when there are at least ``HNSW_MIN_EXEMPLARS`` vectors and
``numpy`` below. ``flat`` has no range of its own. In ``benchmarks/exemplar_search.py`` (figures
in ``docs/benchmarks.md``), ``numpy`` took 0.76 to 1.03 times the time of ``flat`` for one query,
because it runs the same faiss scan. It searched batches of 32 queries 1.5 to 5.9 times faster,
from 100 to 100,000 exemplars.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import numpy as np

logger = logging.getLogger(__name__)

IndexKind = Literal["auto", "numpy", "flat", "hnsw"]
KINDS: tuple[str, ...] = ("auto", "numpy", "flat", "hnsw")

HNSW_MIN_EXEMPLARS = 20_000
"""Smallest exemplar count that ``auto`` searches with an HNSW graph.

Measured with ``benchmarks/exemplar_search.py`` on one thread: at 20,000 exemplars the graph
searched one query in 0.2 ms against 1.1 ms for the exact scan, and batches of 32 faster too,
with recall@10 0.999. At 10,000 the exact scan (0.6 ms) still searched batches of 32 faster, and
its results are exact.
"""

# HNSW settings, measured at 100,000 exemplars of 384 dimensions (docs/benchmarks.md): recall@10
# against exact search 0.996 at 0.3 ms per query. M=32 with efConstruction=80 needed
# efSearch=256, at 0.4 ms per query, for about the same recall.
HNSW_NEIGHBORS = 24
"""Graph edges per vector and layer (faiss ``M``); the bottom layer has twice as many."""

HNSW_EF_CONSTRUCTION = 160
"""Candidate list length while the graph is built (faiss ``efConstruction``)."""

HNSW_EF_SEARCH = 128
"""Candidate list length per query (faiss ``efSearch``); larger is slower and misses less."""


class ExemplarIndex:
    """Top-k inner-product search over exemplar embeddings.

    Parameters
    ----------
    vectors : array-like of shape (n_exemplars, dimension)
        L2-normalised exemplar embeddings; the scores are then cosine similarities.
    kind : {"auto", "numpy", "flat", "hnsw"}
        Search structure; ``"auto"`` chooses by ``n_exemplars`` as the module docstring describes.
    ef_search : int
        HNSW only: candidate list length per query.
    ef_construction : int
        HNSW only: candidate list length while building.
    hnsw_neighbors : int
        HNSW only: graph edges per vector and layer.

    Attributes
    ----------
    kind : str
        The structure in use, ``"numpy"``, ``"flat"`` or ``"hnsw"``, with ``"auto"`` resolved.

    Equal inputs give equal results: the HNSW graph is built on one faiss thread, because a
    parallel build inserts vectors in a scheduling-dependent order.

    Examples
    --------
    >>> index = ExemplarIndex(np.eye(3, dtype=np.float32))
    >>> index.kind
    'numpy'
    >>> index.search(np.array([[0.0, 1.0, 0.0]], dtype=np.float32), 1)
    (array([[1.]], dtype=float32), array([[1]]))
    """

    def __init__(
        self,
        vectors: np.ndarray,
        *,
        kind: IndexKind = "auto",
        ef_search: int = HNSW_EF_SEARCH,
        ef_construction: int = HNSW_EF_CONSTRUCTION,
        hnsw_neighbors: int = HNSW_NEIGHBORS,
    ) -> None:
        original = vectors
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] == 0 or vectors.shape[1] == 0:
            raise ValueError(f"need a non-empty 2-D array of exemplar vectors, got shape {vectors.shape}")
        if not np.isfinite(vectors).all():
            raise ValueError("exemplar vectors contain NaN or infinite values")
        for name, value in (
            ("ef_search", ef_search),
            ("ef_construction", ef_construction),
            ("hnsw_neighbors", hnsw_neighbors),
        ):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")

        self.kind = choose_kind(kind, len(vectors))
        self._vectors: np.ndarray | None = None
        self._faiss: Any = None
        started = time.perf_counter()
        if self.kind == "numpy":
            # A copy, so that later changes to the caller's array cannot change the index.
            self._vectors = vectors.copy() if vectors is original else vectors
        elif self.kind == "flat":
            self._faiss = _flat_index(vectors)
        else:
            self._faiss = _hnsw_index(vectors, hnsw_neighbors, ef_construction, ef_search)
        logger.info(
            "built %s exemplar index over %d vectors in %.2f s",
            self.kind,
            len(vectors),
            time.perf_counter() - started,
        )

    @classmethod
    def from_faiss(cls, index: Any, *, kind: IndexKind = "auto") -> ExemplarIndex:
        """Wrap a faiss inner-product index, as ``faiss.read_index`` returns it.

        An HNSW graph is reused as it is when ``kind`` resolves to ``"hnsw"``. Otherwise the
        vectors are read back from ``index``, and the structure for ``kind`` is built from them.
        """
        import faiss

        if index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise ValueError(f"exemplar index must use inner product, got faiss metric {index.metric_type}")
        if index.ntotal == 0:
            raise ValueError("exemplar index is empty")
        if choose_kind(kind, index.ntotal) == "hnsw" and isinstance(index, faiss.IndexHNSWFlat):
            wrapped = cls.__new__(cls)
            wrapped.kind = "hnsw"
            wrapped._vectors = None
            wrapped._faiss = index
            return wrapped
        return cls(index.reconstruct_n(0, index.ntotal), kind=kind)

    def to_faiss(self) -> Any:
        """Return a faiss index over the vectors, for ``faiss.write_index``.

        ``flat`` and ``hnsw`` return their own index, and ``numpy`` a new ``IndexFlatIP``.
        """
        if self._vectors is not None:
            return _flat_index(self._vectors)
        return self._faiss

    def __len__(self) -> int:
        if self._vectors is not None:
            return len(self._vectors)
        return int(self._faiss.ntotal)

    @property
    def dimension(self) -> int:
        """Length of each vector."""
        if self._vectors is not None:
            return int(self._vectors.shape[1])
        return int(self._faiss.d)

    @property
    def ef_search(self) -> int | None:
        """HNSW candidate list length per query, or ``None`` for an exact structure.

        Setting it changes the speed and recall of later searches without rebuilding the graph.
        """
        if self.kind != "hnsw":
            return None
        return int(self._faiss.hnsw.efSearch)

    @ef_search.setter
    def ef_search(self, value: int) -> None:
        if self.kind != "hnsw":
            raise ValueError(f"ef_search applies to hnsw indexes only, this index is {self.kind}")
        if value < 1:
            raise ValueError(f"ef_search must be at least 1, got {value}")
        self._faiss.hnsw.efSearch = int(value)

    @property
    def nbytes(self) -> int:
        """Memory held by the vectors and, for HNSW, the graph's edge lists, in bytes."""
        vector_bytes = len(self) * self.dimension * 4
        if self.kind != "hnsw":
            return vector_bytes
        graph = self._faiss.hnsw
        return vector_bytes + graph.neighbors.size() * 4 + graph.offsets.size() * 8 + graph.levels.size() * 4

    def get_params(self) -> dict[str, Any]:
        """Return the structure and its settings, for the router artifact's manifest."""
        params: dict[str, Any] = {"kind": self.kind}
        if self.kind == "hnsw":
            graph = self._faiss.hnsw
            params["ef_search"] = int(graph.efSearch)
            params["ef_construction"] = int(graph.efConstruction)
        return params

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Find the ``k`` exemplars with the largest inner product with each query.

        Parameters
        ----------
        queries : array-like of shape (n_queries, dimension)
        k : int
            Neighbours per query, at least 1; more than ``len(self)`` returns ``len(self)``.

        Returns
        -------
        similarities : ndarray of shape (n_queries, min(k, n_exemplars)), float32
            Best first.
        ids : ndarray of shape (n_queries, min(k, n_exemplars)), int64
            Exemplar rows; ``hnsw`` pads with -1 where its graph search found fewer than ``k``.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dimension:
            raise ValueError(f"queries must have shape (n, {self.dimension}), got {queries.shape}")
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")

        k = min(int(k), len(self))
        if self._vectors is not None:
            return _numpy_top_k(self._vectors, queries, k)
        return self._faiss.search(queries, k)

    def vectors(self) -> np.ndarray:
        """Return the indexed vectors, shape (n_exemplars, dimension), in exemplar order."""
        if self._vectors is not None:
            return self._vectors.copy()
        return self._faiss.reconstruct_n(0, len(self))


def choose_kind(kind: str, n_exemplars: int) -> str:
    """Return the structure ``kind`` means for ``n_exemplars`` vectors: ``auto`` resolved by size."""
    if kind not in KINDS:
        raise ValueError(f"unknown exemplar index kind {kind!r}: use one of {', '.join(KINDS)}")
    if kind != "auto":
        return kind
    return "hnsw" if n_exemplars >= HNSW_MIN_EXEMPLARS else "numpy"


def _numpy_top_k(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    if len(queries) == 1:
        # faiss's brute-force scan keeps a running top k while it reads the vectors once. A
        # matrix-vector product followed by argpartition was up to 27% slower per query.
        import faiss

        return faiss.knn(queries, vectors, k, metric=faiss.METRIC_INNER_PRODUCT)

    scores = queries @ vectors.T
    n = vectors.shape[0]
    if k < n:
        candidates = np.argpartition(scores, n - k, axis=1)[:, n - k :]
    else:
        candidates = np.broadcast_to(np.arange(n), scores.shape)
    candidate_scores = np.take_along_axis(scores, candidates, axis=1)
    order = np.argsort(-candidate_scores, axis=1, kind="stable")
    ids = np.take_along_axis(candidates, order, axis=1).astype(np.int64)
    return np.take_along_axis(candidate_scores, order, axis=1), ids


def _flat_index(vectors: np.ndarray) -> Any:
    import faiss

    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    return index


def _hnsw_index(vectors: np.ndarray, neighbors: int, ef_construction: int, ef_search: int) -> Any:
    import faiss

    index = faiss.IndexHNSWFlat(vectors.shape[1], neighbors, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_construction
    index.hnsw.efSearch = ef_search
    with _one_faiss_thread():
        index.add(vectors)
    return index


@contextmanager
def _one_faiss_thread() -> Iterator[None]:
    # NOTE: the OpenMP thread count is process-wide, so a faiss search running in another
    # thread meanwhile also runs on one thread until the build ends.
    import faiss

    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)
