"""ONNX Runtime embedding backend: the exported model against sentence-transformers on PyTorch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from classifier import SentenceEmbedder
from classifier.embedding import length_batches
from classifier.onnx_embedding import OnnxEmbedder

TEXTS = [
    "Solve for x: 3x + 5 = 20",
    "Write a Python function that merges two sorted lists",
    "What are the side effects of ibuprofen?",
    "hi!",
    "",
]


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder for the module's exports, so the model is exported once."""
    return tmp_path_factory.mktemp("onnx-embedding")


def test_onnx_embeddings_match_pytorch(embedder: SentenceEmbedder, onnx_cache: Path) -> None:
    onnx = OnnxEmbedder(cache_dir=str(onnx_cache))

    expected = embedder.encode(TEXTS)
    actual = onnx.encode(TEXTS)

    assert actual.shape == (len(TEXTS), 384)
    assert actual.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(actual, axis=1), 1.0, atol=1e-5)
    cosines = (actual * expected).sum(axis=1)
    assert cosines.min() > 0.999, cosines


def test_int8_embeddings_stay_close(embedder: SentenceEmbedder, onnx_cache: Path) -> None:
    onnx = OnnxEmbedder(quantize=True, cache_dir=str(onnx_cache))

    cosines = (onnx.encode(TEXTS) * embedder.encode(TEXTS)).sum(axis=1)

    # Per-channel int8 weights kept test prompts within cosine 0.99; the shortest texts here
    # ("hi!" and the empty text) drift most, to about 0.978 with onnxruntime 1.32.
    assert cosines.min() > 0.97, cosines


def test_long_text_chunked_like_pytorch(embedder: SentenceEmbedder, onnx_cache: Path) -> None:
    onnx = OnnxEmbedder(cache_dir=str(onnx_cache), max_chunks=2)
    long_text = " ".join(f"paragraph {i} about contract law and liability clauses." for i in range(200))

    onnx_vectors, onnx_chunking = onnx.encode_chunked([long_text, "short"])
    _, torch_chunking = SentenceEmbedder(max_chunks=2).encode_chunked([long_text, "short"])

    assert [c.chunks for c in onnx_chunking] == [2, 1]
    assert onnx_chunking[0].total_chunks == torch_chunking[0].total_chunks
    assert onnx_chunking[0].truncated
    np.testing.assert_allclose(np.linalg.norm(onnx_vectors, axis=1), 1.0, atol=1e-5)


def test_empty_input_returns_empty_array(onnx_cache: Path) -> None:
    onnx = OnnxEmbedder(cache_dir=str(onnx_cache))

    vectors, chunking = onnx.encode_chunked([])

    assert vectors.shape == (0, 384)
    assert chunking == []


def test_length_batches_respect_token_cap() -> None:
    lengths = [30, 5, 6, 5, 7, 5]

    batches = length_batches(lengths, batch_size=3, max_batch_tokens=40)

    assert batches == [[1, 3, 5], [2, 4], [0]]
    for batch in batches:
        assert len(batch) <= 3
        assert len(batch) * max(lengths[i] for i in batch) <= 40


def test_config_selects_onnx_backend(onnx_cache: Path, tmp_path: Path) -> None:
    from router.config import RouterSettings
    from router.router_loader import build_domain_router

    exemplars = tmp_path / "exemplars.jsonl"
    records = [
        ("Solve for x: 2x + 3 = 11", "algebra"),
        ("Factor x^2 - 5x + 6", "algebra"),
        ("Write a Python function that reverses a list", "code"),
        ("Fix this JavaScript TypeError in my loop", "code"),
    ]
    exemplars.write_text("".join(json.dumps({"text": t, "label": label}) + "\n" for t, label in records))
    settings = RouterSettings(
        exemplars=str(exemplars), embedding_backend="onnx-int8", cache_dir=str(onnx_cache)
    )

    router = build_domain_router(settings, {})

    assert isinstance(router.embedder.embedder, OnnxEmbedder)  # inside the micro-batching wrapper
    assert router.embedder.quantize is True
    assert (onnx_cache / "onnx").is_dir()
    assert router.predict(["Solve for x: 7x - 2 = 19"])[0].domain == "algebra"


def test_eval_compares_onnx_backend(
    onnx_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from router.cli import main

    # The eval command exports to ~/.cache/adapter-router/onnx: point it at this module's exports.
    (tmp_path / ".cache" / "adapter-router").mkdir(parents=True)
    (tmp_path / ".cache" / "adapter-router" / "onnx").symlink_to(onnx_cache)
    monkeypatch.setenv("HOME", str(tmp_path))
    fixtures = Path(__file__).with_name("fixtures")

    status = main(
        [
            "eval",
            str(fixtures / "eval_small.jsonl"),
            "--split",
            "test",
            "--train-split",
            "train",
            "--label-map",
            str(fixtures / "eval_label_map.json"),
            "--fallback-label",
            "general",
            "--latency-samples",
            "4",
            "--compare",
            "embedding_backend=onnx-int8",
            "--json",
        ]
    )

    routers = json.loads(capsys.readouterr().out)["routers"]
    assert status == 0
    assert [router["name"] for router in routers] == [
        "trained on train",
        "trained on train, embedding_backend=onnx-int8",
    ]
    assert routers[1]["metrics"]["records"] == routers[0]["metrics"]["records"]
    assert abs(routers[1]["metrics"]["accuracy"] - routers[0]["metrics"]["accuracy"]) <= 0.2


def test_eval_rejects_unknown_backend(capsys: pytest.CaptureFixture[str]) -> None:
    from router.cli import main

    data = Path(__file__).with_name("fixtures") / "eval_small.jsonl"
    status = main(
        ["eval", str(data), "--split", "test", "--train-split", "train", "--compare", "embedding_backend=tpu"]
    )

    error = capsys.readouterr().err
    assert status == 2
    assert "invalid embedding_backend 'tpu'" in error
    assert len(error.strip().splitlines()) == 1
