"""Exact inner-product search over exemplar embeddings with faiss."""

from __future__ import annotations

import numpy as np


class ExemplarIndex:
    """A flat faiss inner-product index; with normalised vectors the scores are cosine similarities.

    Parameters
    ----------
    vectors : ndarray of shape (n_exemplars, dimension)
        L2-normalised exemplar embeddings.
    """

    def __init__(self, vectors: np.ndarray) -> None:
        import faiss

        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] == 0:
            raise ValueError(f"need a non-empty 2-D array of exemplar vectors, got shape {vectors.shape}")
        self._index = faiss.IndexFlatIP(vectors.shape[1])
        self._index.add(vectors)

    def __len__(self) -> int:
        return int(self._index.ntotal)

    @property
    def dimension(self) -> int:
        """Length of each vector."""
        return int(self._index.d)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(similarities, ids)``, each of shape (n_queries, min(k, n_exemplars)), best first."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dimension:
            raise ValueError(f"queries must have shape (n, {self.dimension}), got {queries.shape}")
        return self._index.search(queries, min(k, len(self)))

    def vectors(self) -> np.ndarray:
        """Return the indexed vectors, shape (n_exemplars, dimension)."""
        return self._index.reconstruct_n(0, len(self))
