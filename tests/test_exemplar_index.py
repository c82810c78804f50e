"""Exemplar search structures, the size rule that picks one, and their router artifacts.

All vectors here are synthetic and L2-normalised: the index stores only vectors, so no embedding
model is needed.
"""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest

from classifier import DomainRouter, Exemplar, ExemplarIndex, KnnHead, Thresholds, load_router, save_router
from classifier.index import HNSW_EF_SEARCH, HNSW_MIN_EXEMPLARS, choose_kind

KINDS = ("numpy", "flat", "hnsw")


def clustered_vectors(n: int, dimension: int, seed: int, clusters: int = 200) -> np.ndarray:
    """Unit vectors around ``clusters`` random centres, shaped like sentence embeddings of topics."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dimension))
    vectors = centres[rng.integers(0, clusters, n)] + 0.5 * rng.standard_normal((n, dimension))
    return normalised(vectors)


def near_copies(vectors: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Queries: noisy copies of random rows of ``vectors``, so each has close exemplars."""
    rng = np.random.default_rng(seed)
    rows = vectors[rng.integers(0, len(vectors), n)]
    return normalised(rows + 0.1 * rng.standard_normal(rows.shape))


def normalised(vectors: np.ndarray) -> np.ndarray:
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def exact_top_k(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference search in float64: similarities and ids of the ``k`` best rows per query."""
    scores = queries.astype(np.float64) @ vectors.astype(np.float64).T
    ids = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, ids, axis=1), ids


def recall_at(ids: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean share of each query's true top ``k`` found in its returned top ``k``."""
    found = [
        len(set(row[:k].tolist()) & set(true[:k].tolist())) for row, true in zip(ids, truth, strict=True)
    ]
    return float(np.mean(found)) / k


@pytest.fixture(scope="module")
def large_set() -> tuple[np.ndarray, np.ndarray]:
    """Exemplar vectors just above the HNSW threshold, and queries near them (dimension 64)."""
    vectors = clustered_vectors(HNSW_MIN_EXEMPLARS + 500, 64, seed=0)
    return vectors, near_copies(vectors, 300, seed=1)


@pytest.mark.parametrize("kind", KINDS)
def test_small_set_top_k_is_exact(kind):
    vectors = clustered_vectors(800, 48, seed=3, clusters=20)
    queries = near_copies(vectors, 50, seed=4)
    true_similarities, true_ids = exact_top_k(vectors, queries, 7)

    index = ExemplarIndex(vectors, kind=kind)
    similarities, ids = index.search(queries, 7)

    assert index.kind == kind
    assert similarities.shape == (50, 7)
    assert similarities.dtype == np.float32
    assert ids.dtype == np.int64
    np.testing.assert_array_equal(ids, true_ids)
    np.testing.assert_allclose(similarities, true_similarities, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_single_query_matches_batch(kind):
    vectors = clustered_vectors(300, 32, seed=5, clusters=10)
    queries = near_copies(vectors, 8, seed=6)
    index = ExemplarIndex(vectors, kind=kind)

    batch_similarities, batch_ids = index.search(queries, 5)
    for row in range(len(queries)):
        similarities, ids = index.search(queries[row : row + 1], 5)
        np.testing.assert_array_equal(ids[0], batch_ids[row])
        np.testing.assert_allclose(similarities[0], batch_similarities[row], atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_k_above_count_returns_all(kind):
    vectors = clustered_vectors(12, 16, seed=7, clusters=3)
    index = ExemplarIndex(vectors, kind=kind)

    similarities, ids = index.search(vectors[:2], 50)
    _, single_ids = index.search(vectors[1:2], 50)

    assert ids.shape == (2, 12)
    assert single_ids.shape == (1, 12)
    np.testing.assert_array_equal(single_ids[0], ids[1])
    assert sorted(ids[0].tolist()) == list(range(12))
    assert ids[0, 0] == 0
    assert ids[1, 0] == 1
    assert np.all(np.diff(similarities, axis=1) <= 1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_vectors_round_trip_in_exemplar_order(kind):
    vectors = clustered_vectors(200, 24, seed=8, clusters=5)
    index = ExemplarIndex(vectors, kind=kind)

    assert len(index) == 200
    assert index.dimension == 24
    np.testing.assert_array_equal(index.vectors(), vectors)
    assert index.nbytes >= vectors.nbytes


def test_hnsw_recall_on_20k_clustered_set(large_set):
    vectors, queries = large_set
    _, true_ids = exact_top_k(vectors, queries, 10)

    index = ExemplarIndex(vectors, kind="hnsw")
    _, ids = index.search(queries, 10)

    assert len(vectors) >= 20_000
    assert recall_at(ids, true_ids, 1) >= 0.99
    assert recall_at(ids, true_ids, 10) >= 0.99


def test_hnsw_build_is_deterministic():
    vectors = clustered_vectors(3000, 32, seed=9, clusters=30)
    queries = near_copies(vectors, 100, seed=10)

    first = ExemplarIndex(vectors, kind="hnsw").search(queries, 10)
    second = ExemplarIndex(vectors, kind="hnsw").search(queries, 10)

    np.testing.assert_array_equal(first[1], second[1])
    np.testing.assert_array_equal(first[0], second[0])


def test_tiny_ef_search_lowers_recall(large_set):
    # Shows that ef_search reaches the faiss graph search: with a candidate list of 1 the
    # search stops at a local optimum far more often.
    vectors, queries = large_set

    index = ExemplarIndex(vectors[:4000], kind="hnsw", ef_search=1)
    _, ids = index.search(queries, 10)
    _, true_ids = exact_top_k(vectors[:4000], queries, 10)

    assert index.ef_search == 1
    assert recall_at(ids, true_ids, 10) < 0.9


@pytest.mark.parametrize(
    ("n_exemplars", "expected"),
    [
        (1, "numpy"),
        (HNSW_MIN_EXEMPLARS - 1, "numpy"),
        (HNSW_MIN_EXEMPLARS, "hnsw"),
        (1_000_000, "hnsw"),
    ],
)
def test_auto_kind_follows_size_threshold(n_exemplars, expected):
    assert choose_kind("auto", n_exemplars) == expected


def test_explicit_kind_overrides_size_rule():
    small = clustered_vectors(50, 8, seed=11)

    assert choose_kind("flat", 5) == "flat"
    assert choose_kind("numpy", 10 * HNSW_MIN_EXEMPLARS) == "numpy"
    assert ExemplarIndex(small).kind == "numpy"
    assert ExemplarIndex(small, kind="flat").kind == "flat"
    assert ExemplarIndex(small, kind="hnsw").kind == "hnsw"


@pytest.mark.parametrize(
    "vectors",
    [
        np.zeros((0, 8), dtype=np.float32),
        np.zeros(8, dtype=np.float32),
        np.zeros((4, 0), dtype=np.float32),
        np.zeros((2, 3, 4), dtype=np.float32),
        np.array([[1.0, np.nan], [0.0, 1.0]], dtype=np.float32),
    ],
    ids=["empty", "one-dimensional", "zero-width", "three-dimensional", "nan"],
)
def test_invalid_exemplar_vectors_are_rejected(vectors):
    with pytest.raises(ValueError, match="exemplar vectors"):
        ExemplarIndex(vectors)


def test_unknown_kind_is_rejected():
    with pytest.raises(
        ValueError, match="unknown exemplar index kind 'ivf': use one of auto, numpy, flat, hnsw"
    ):
        ExemplarIndex(clustered_vectors(10, 8, seed=12), kind="ivf")


def test_invalid_hnsw_setting_is_rejected():
    with pytest.raises(ValueError, match="ef_search must be at least 1, got 0"):
        ExemplarIndex(clustered_vectors(10, 8, seed=12), kind="hnsw", ef_search=0)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "queries",
    [
        np.zeros(8, dtype=np.float32),
        np.zeros((2, 7), dtype=np.float32),
        np.zeros((1, 2, 8), dtype=np.float32),
    ],
    ids=["one-dimensional", "wrong-width", "three-dimensional"],
)
def test_invalid_query_shape_is_rejected(kind, queries):
    index = ExemplarIndex(clustered_vectors(30, 8, seed=13), kind=kind)

    with pytest.raises(ValueError, match=r"queries must have shape \(n, 8\)"):
        index.search(queries, 3)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("k", [0, -1, 2.5, True, "3"])
def test_invalid_k_is_rejected(kind, k):
    vectors = clustered_vectors(30, 8, seed=14)
    index = ExemplarIndex(vectors, kind=kind)

    with pytest.raises(ValueError, match="k must be a positive integer"):
        index.search(vectors[:1], k)


@pytest.mark.parametrize("kind", KINDS)
def test_no_queries_give_empty_results(kind):
    index = ExemplarIndex(clustered_vectors(30, 8, seed=15), kind=kind)

    similarities, ids = index.search(np.zeros((0, 8), dtype=np.float32), 3)

    assert similarities.shape == (0, 3)
    assert ids.shape == (0, 3)


def test_faiss_index_with_other_metric_is_rejected():
    index = faiss.IndexFlatL2(8)
    index.add(clustered_vectors(10, 8, seed=20))

    with pytest.raises(ValueError, match="exemplar index must use inner product"):
        ExemplarIndex.from_faiss(index)


class VectorOnlyEmbedder:
    """Stand-in for the embedding model, which these tests do not need.

    The router is only asked to classify precomputed vectors (``predict_embeddings``), and
    ``load_router`` reads only the model's name and dimension.
    """

    name = "synthetic-vectors"

    def __init__(self, dimension: int) -> None:
        self.dimension = dimension

    def encode(self, texts, *, show_progress=False):
        raise AssertionError("the embedding model is not used in these tests")


def synthetic_router(
    vectors: np.ndarray, index_kind: str = "auto", ef_search: int = HNSW_EF_SEARCH
) -> DomainRouter:
    """A k-NN router over ``vectors``: labels ``topic-0`` to ``topic-4`` in 2 domains."""
    labels = [f"topic-{row % 5}" for row in range(len(vectors))]
    exemplars = [
        Exemplar(text=f"exemplar {row}", label=label, domain="even" if int(label[-1]) % 2 == 0 else "odd")
        for row, label in enumerate(labels)
    ]
    return DomainRouter(
        embedder=VectorOnlyEmbedder(vectors.shape[1]),
        head=KnnHead(k=10).fit(vectors, labels),
        exemplars=exemplars,
        index=ExemplarIndex(vectors, kind=index_kind, ef_search=ef_search),
        thresholds=Thresholds(confidence=0.2),
    )


def assert_same_predictions(before, after):
    for old, new in zip(before, after, strict=True):
        assert new.domain == old.domain
        assert new.scores == pytest.approx(old.scores, abs=1e-6)
        assert new.similarity == pytest.approx(old.similarity, abs=1e-6)
        assert [n.text for n in new.nearest] == [n.text for n in old.nearest]


def test_hnsw_artifact_round_trip(large_set, tmp_path):
    vectors, queries = large_set
    # A non-default ef_search shows that loading reuses the saved graph: a rebuilt one would
    # get the default.
    router = synthetic_router(vectors, ef_search=77)
    assert router.index.kind == "hnsw"
    assert router.head.index_.kind == "hnsw"

    save_router(router, tmp_path / "router")
    loaded = load_router(tmp_path / "router", VectorOnlyEmbedder(vectors.shape[1]))

    manifest = json.loads((tmp_path / "router" / "router.json").read_text())
    assert manifest["index"]["kind"] == "hnsw"
    assert manifest["index"]["ef_search"] == 77
    assert isinstance(faiss.read_index(str(tmp_path / "router" / "exemplars.faiss")), faiss.IndexHNSWFlat)
    assert loaded.index.kind == "hnsw"
    assert loaded.index.ef_search == 77
    assert loaded.head.index_ is loaded.index
    np.testing.assert_array_equal(loaded.index.search(queries, 10)[1], router.index.search(queries, 10)[1])
    assert_same_predictions(router.predict_embeddings(queries), loaded.predict_embeddings(queries))


def test_hnsw_artifact_readable_as_flat_vectors(large_set, tmp_path):
    # Versions that only knew flat indexes load exemplars.faiss with read_index and reconstruct_n.
    vectors, _ = large_set
    save_router(synthetic_router(vectors[:2000], index_kind="hnsw"), tmp_path / "router")

    stored = faiss.read_index(str(tmp_path / "router" / "exemplars.faiss"))

    np.testing.assert_array_equal(stored.reconstruct_n(0, 2000), vectors[:2000])


def test_legacy_artifact_loads_with_auto(large_set, tmp_path):
    # An artifact written before the structure was chosen by size: a flat file, no "index" entry.
    vectors, queries = large_set
    router = synthetic_router(vectors, index_kind="flat")
    save_router(router, tmp_path / "router")
    manifest_path = tmp_path / "router" / "router.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["index"]
    manifest_path.write_text(json.dumps(manifest))

    loaded = load_router(tmp_path / "router", VectorOnlyEmbedder(vectors.shape[1]))

    _, true_ids = exact_top_k(vectors, queries, 10)
    assert loaded.index.kind == "hnsw"
    assert recall_at(loaded.index.search(queries, 10)[1], true_ids, 10) >= 0.99


@pytest.mark.parametrize("kind", ["numpy", "flat"])
def test_exact_artifact_round_trip_keeps_kind(kind, tmp_path):
    vectors = clustered_vectors(500, 16, seed=16, clusters=8)
    queries = near_copies(vectors, 20, seed=17)
    router = synthetic_router(vectors, index_kind=kind)

    save_router(router, tmp_path / "router")
    loaded = load_router(tmp_path / "router", VectorOnlyEmbedder(16))

    assert loaded.index.kind == kind
    assert isinstance(faiss.read_index(str(tmp_path / "router" / "exemplars.faiss")), faiss.IndexFlatIP)
    assert_same_predictions(router.predict_embeddings(queries), loaded.predict_embeddings(queries))


def test_wrong_vector_count_is_rejected(tmp_path):
    from classifier import ArtifactError

    vectors = clustered_vectors(100, 16, seed=18, clusters=4)
    save_router(synthetic_router(vectors), tmp_path / "router")
    faiss.write_index(
        ExemplarIndex(vectors[:90], kind="flat").to_faiss(), str(tmp_path / "router" / "exemplars.faiss")
    )

    with pytest.raises(
        ArtifactError, match=r"exemplars\.faiss contains 90 vectors of dimension 16, expected 100"
    ):
        load_router(tmp_path / "router", VectorOnlyEmbedder(16))


def test_knn_head_shares_identical_index():
    vectors = clustered_vectors(100, 16, seed=19, clusters=4)
    head = KnnHead(k=5).fit(vectors, [f"topic-{row % 3}" for row in range(100)])
    arrays = head.to_arrays()

    same = ExemplarIndex(vectors)
    other = ExemplarIndex(vectors[::-1])

    shared = KnnHead.from_arrays(head.get_params(), head.classes_, arrays, index=same)
    rebuilt = KnnHead.from_arrays(head.get_params(), head.classes_, arrays, index=other)

    assert shared.index_ is same
    assert rebuilt.index_ is not other
    np.testing.assert_array_equal(rebuilt.index_.vectors(), vectors)
    np.testing.assert_allclose(
        rebuilt.predict_proba(vectors[:10]), head.predict_proba(vectors[:10]), atol=1e-6
    )
