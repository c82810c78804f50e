"""Static embeddings distilled locally from the packaged all-MiniLM-L6-v2."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pytest

from classifier import EmbeddingModelError
from classifier.static_embedding import StaticEmbedder

TEXTS = [
    "Solve for x: 3x + 5 = 20",
    "Write a Python function that merges two sorted lists",
    "What are the side effects of ibuprofen?",
    "hi!",
    "",
    "🙂",
]


def test_embeddings_have_unit_norm(static_embedder: StaticEmbedder) -> None:
    vectors = static_embedder.encode(TEXTS)

    assert vectors.shape == (len(TEXTS), 256)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_similar_texts_closer_than_unrelated(static_embedder: StaticEmbedder) -> None:
    math_a, math_b, medical, code = static_embedder.encode(
        [
            "Solve the equation 2x + 7 = 15 for x",
            "Find x if 3x - 4 = 11",
            "What is the recommended dose of amoxicillin for a child?",
            "Write a JavaScript function that reverses a string",
        ]
    )

    assert math_a @ math_b > math_a @ medical
    assert math_a @ math_b > math_a @ code
    assert math_a @ math_b > 0.5


def test_same_text_same_embedding(static_embedder: StaticEmbedder) -> None:
    first = static_embedder.encode(["Summarise this contract clause"])
    batched = static_embedder.encode(["Summarise this contract clause", "another text"])

    np.testing.assert_array_equal(first[0], batched[0])


def test_long_text_embedded_whole(static_embedder: StaticEmbedder) -> None:
    long_text = " ".join(f"paragraph {i} about contract law and liability clauses." for i in range(3000))

    vectors, chunking = static_embedder.encode_chunked([long_text, "short"])

    assert [(c.chunks, c.total_chunks) for c in chunking] == [(1, 1), (1, 1)]
    assert not chunking[0].truncated
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # A text repeated many times has the same mean, so the same embedding.
    repeated = static_embedder.encode(["contract law. " * 5000, "contract law."])
    assert repeated[0] @ repeated[1] > 0.999


def test_empty_input_returns_empty_array(static_embedder: StaticEmbedder) -> None:
    vectors, chunking = static_embedder.encode_chunked([])

    assert vectors.shape == (0, 256)
    assert chunking == []


def test_cached_table_reused(
    static_embedder: StaticEmbedder, router_cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    modified = static_embedder.table_path.stat().st_mtime_ns

    with caplog.at_level(logging.INFO, logger="classifier.static_embedding"):
        again = StaticEmbedder(cache_dir=str(router_cache / "static"))

    assert again.table_path == static_embedder.table_path
    assert again.table_path.stat().st_mtime_ns == modified
    assert "distilling" not in caplog.text
    assert "loading static embeddings" in caplog.text
    np.testing.assert_array_equal(again.encode(TEXTS), static_embedder.encode(TEXTS))


def test_table_is_keyed_by_model_and_settings(static_embedder: StaticEmbedder, router_cache: Path) -> None:
    assert static_embedder.table_path.parent.parent == router_cache / "static"
    assert static_embedder.table_path.suffix == ".npy"
    assert static_embedder.table_path.name == "pca256-sif0.0001-vocab30522.npy"


def test_vocabulary_prefix_distils_small_table(tmp_path: Path) -> None:
    small = StaticEmbedder(cache_dir=str(tmp_path), pca_dims=32, vocabulary_size=4000)

    table = np.load(small.table_path)

    assert table.shape == (4001, 32)
    assert small.table_path.name == "pca32-sif0.0001-vocab4000.npy"
    # "the" (id 1996) is in the prefix. Every piece of "photosynthesis" has a larger id, so the
    # word has no tokens left and gets the empty text's row.
    vectors = small.encode(["the", "photosynthesis", ""])
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(vectors[1], vectors[2])
    assert not np.array_equal(vectors[0], vectors[2])


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"pca_dims": 0}, "pca_dims must be at least 1, got 0"),
        ({"sif_coefficient": 0.0}, "sif_coefficient must be positive, got 0.0"),
        ({"pca_dims": 64, "vocabulary_size": 100}, "vocabulary_size must be at least 2 * pca_dims = 128"),
    ],
)
def test_invalid_settings_raise(tmp_path: Path, settings: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        StaticEmbedder(cache_dir=str(tmp_path), **settings)


def test_pca_dims_above_hidden_size_raise(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at most the model's hidden size 384, got 500"):
        StaticEmbedder(cache_dir=str(tmp_path), pca_dims=500, vocabulary_size=1000)


def test_folder_without_fast_tokenizer_raises(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()

    with pytest.raises(EmbeddingModelError, match=r"has no tokenizer\.json"):
        StaticEmbedder(str(model), cache_dir=str(tmp_path / "cache"))


def test_unwritable_cache_keeps_table_in_memory(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    not_a_folder = tmp_path / "cache"
    not_a_folder.write_text("a file where the cache folder should be")

    with caplog.at_level(logging.WARNING, logger="classifier.static_embedding"):
        embedder = StaticEmbedder(cache_dir=str(not_a_folder), pca_dims=32, vocabulary_size=2048)

    assert "cannot cache static embeddings" in caplog.text
    assert not embedder.table_path.exists()
    np.testing.assert_allclose(np.linalg.norm(embedder.encode(["the cat"]), axis=1), 1.0, atol=1e-5)
