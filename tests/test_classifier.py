"""Classifier: heads, decisions, training and artifacts, with the real embedding model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from classifier import (
    ArtifactError,
    ConfidenceMode,
    Exemplar,
    ExemplarError,
    FallbackReason,
    KnnHead,
    LogisticHead,
    Thresholds,
    load_exemplars,
    load_router,
    save_router,
    train_router,
)
from classifier.decision import decide
from classifier.heads import NotFittedError

EXEMPLARS = [
    Exemplar("Solve for x: 2x + 3 = 11", "algebra", "math"),
    Exemplar("What is the derivative of x^3 + 2x?", "calculus", "math"),
    Exemplar("Integrate sin(x) from 0 to pi", "calculus", "math"),
    Exemplar("Factor the polynomial x^2 - 5x + 6", "algebra", "math"),
    Exemplar("A train travels 120 km in 2 hours. What is its average speed?", "word_problem", "math"),
    Exemplar("Write a Python function that reverses a linked list", "write_function", "code"),
    Exemplar("Why does my JavaScript loop print undefined?", "debug", "code"),
    Exemplar("Implement binary search in Rust", "write_function", "code"),
    Exemplar("Fix this TypeError: 'NoneType' object is not subscriptable", "debug", "code"),
    Exemplar("Refactor this Java class to use dependency injection", "refactor", "code"),
    Exemplar("hi there, how is your day going?", "greeting", "general"),
    Exemplar("Write a short poem about autumn leaves", "creative", "general"),
    Exemplar("Tell me a fun fact about octopuses", "trivia", "general"),
    Exemplar("good morning!", "greeting", "general"),
]


@pytest.fixture(scope="module")
def trained(embedder):
    return train_router(
        EXEMPLARS,
        embedder,
        thresholds=Thresholds(confidence=0.4, out_of_domain=0.1),
        fallback_domains=["general"],
        adapters={"math": "math-lora", "code": "code-lora"},
    )


def test_logistic_head_matches_sklearn_probabilities():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 8)).astype(np.float32)
    y = np.array(["a", "b", "c"] * 20)

    head = LogisticHead(C=1.0).fit(X, y)
    reference = LogisticRegression(C=1.0, max_iter=2000).fit(X, y)

    assert list(head.classes_) == ["a", "b", "c"]
    np.testing.assert_allclose(head.predict_proba(X), reference.predict_proba(X), atol=1e-5)


def test_logistic_head_two_classes_matches_sklearn():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(1)
    X = rng.normal(size=(40, 4)).astype(np.float32)
    y = np.array(["yes", "no"] * 20)

    head = LogisticHead(C=1.0).fit(X, y)
    reference = LogisticRegression(C=1.0, max_iter=2000).fit(X, y)

    np.testing.assert_allclose(head.predict_proba(X), reference.predict_proba(X), atol=1e-5)


def test_knn_head_votes_for_nearest_label():
    X = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], dtype=np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    head = KnnHead(k=2, temperature=0.05).fit(X, ["left", "left", "right", "right"])

    proba = head.predict_proba(np.array([[1, 0], [0, 1]], dtype=np.float32))

    assert list(head.classes_) == ["left", "right"]
    assert proba[0, 0] == pytest.approx(1.0)
    assert proba[1, 1] == pytest.approx(1.0)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)


def test_head_rejects_single_label():
    with pytest.raises(ValueError, match="got 1 class"):
        LogisticHead().fit(np.zeros((3, 2), dtype=np.float32), ["a", "a", "a"])


def test_unfitted_head_raises():
    with pytest.raises(NotFittedError):
        LogisticHead().predict_proba(np.zeros((1, 2), dtype=np.float32))
    with pytest.raises(NotFittedError):
        KnnHead().predict_proba(np.zeros((1, 2), dtype=np.float32))


@pytest.mark.parametrize(
    ("scores", "similarity", "expected_reason"),
    [
        ({"math": 0.9, "code": 0.1}, 0.8, None),
        ({"math": 0.55, "code": 0.45}, 0.8, FallbackReason.LOW_CONFIDENCE),
        ({"math": 0.9, "code": 0.1}, 0.1, FallbackReason.OUT_OF_DOMAIN),
        ({"general": 0.9, "math": 0.1}, 0.9, FallbackReason.FALLBACK_DOMAIN),
        ({"legal": 0.65, "math": 0.35}, 0.8, FallbackReason.LOW_CONFIDENCE),
    ],
)
def test_decide_applies_thresholds_in_order(scores, similarity, expected_reason):
    thresholds = Thresholds(confidence=0.6, domains={"legal": 0.7}, out_of_domain=0.3)

    domain, confidence, reason = decide(scores, similarity, thresholds, frozenset({"general"}))

    assert domain == max(scores, key=scores.__getitem__)
    assert confidence == max(scores.values())
    assert reason == expected_reason


def test_score_x_similarity_lowers_confidence_far_from_exemplars():
    thresholds = Thresholds(confidence=0.6)
    scores = {"math": 0.9, "code": 0.1}

    near = decide(scores, 0.9, thresholds, frozenset(), ConfidenceMode.SCORE_X_SIMILARITY)
    far = decide(scores, 0.5, thresholds, frozenset(), ConfidenceMode.SCORE_X_SIMILARITY)

    assert near == ("math", pytest.approx(0.81), None)
    assert far == ("math", pytest.approx(0.45), FallbackReason.LOW_CONFIDENCE)


def test_thresholds_reject_out_of_range_values():
    with pytest.raises(ValueError, match=r"confidence must be between 0 and 1, got 1\.5"):
        Thresholds(confidence=1.5)
    with pytest.raises(ValueError, match=r"domains\.math"):
        Thresholds(domains={"math": -0.1})


def test_router_sums_label_scores_per_domain(trained):
    prediction = trained.predict(["Find the integral of x squared"])[0]

    assert trained.domains == ["code", "general", "math"]
    assert prediction.domain == "math"
    assert prediction.fallback_reason is None
    assert sum(prediction.scores.values()) == pytest.approx(1.0, abs=1e-5)
    assert next(iter(prediction.scores)) == "math"
    assert prediction.nearest[0].domain == "math"
    assert prediction.similarity == pytest.approx(prediction.nearest[0].similarity)


def test_router_falls_back_on_general_prompt(trained):
    prediction = trained.predict(["hello, how are you doing today?"])[0]

    assert prediction.domain == "general"
    assert prediction.fallback_reason == FallbackReason.FALLBACK_DOMAIN


def test_router_out_of_domain_threshold_applies(trained):
    strict = trained.with_thresholds(Thresholds(confidence=0.0, out_of_domain=0.99))

    prediction = strict.predict(["Solve for x: 5x - 1 = 9"])[0]

    assert prediction.domain == "math"
    assert prediction.fallback_reason == FallbackReason.OUT_OF_DOMAIN
    assert trained.predict(["Solve for x: 5x - 1 = 9"])[0].fallback_reason is None


def test_artifact_round_trip_gives_same_scores(trained, embedder, tmp_path):
    texts = ["Debug this segfault in my C program", "what is 17 times 23?", "nice weather today"]

    save_router(trained, tmp_path / "router")
    loaded = load_router(tmp_path / "router", embedder)

    manifest = json.loads((tmp_path / "router" / "router.json").read_text())
    assert manifest["embedding_model"] == {"name": "all-MiniLM-L6-v2", "dimension": 384}
    assert manifest["adapters"] == {"math": "math-lora", "code": "code-lora"}
    assert manifest["thresholds"]["out_of_domain"] == 0.1
    assert manifest["training"]["exemplars"] == len(EXEMPLARS)
    assert not list((tmp_path / "router").glob("*.pkl"))
    for before, after in zip(trained.predict(texts), loaded.predict(texts), strict=True):
        assert after.domain == before.domain
        assert after.fallback_reason == before.fallback_reason
        assert after.scores == pytest.approx(before.scores, abs=1e-6)


def test_knn_artifact_round_trip(embedder, tmp_path):
    router = train_router(EXEMPLARS, embedder, head="knn", fallback_domains=["general"])

    save_router(router, tmp_path / "knn")
    loaded = load_router(tmp_path / "knn", embedder)

    text = ["Implement quicksort in Go"]
    assert loaded.predict(text)[0].domain == "code"
    assert loaded.predict(text)[0].scores == pytest.approx(router.predict(text)[0].scores, abs=1e-6)


def test_mismatched_embedding_model_names_both(trained, tmp_path):
    save_router(trained, tmp_path / "router")
    manifest_path = tmp_path / "router" / "router.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["embedding_model"]["name"] = "/models/e5-large"
    manifest["embedding_model"]["dimension"] = 1024
    manifest_path.write_text(json.dumps(manifest))

    with pytest.raises(ArtifactError) as error:
        load_router(tmp_path / "router", trained.embedder)

    assert "/models/e5-large" in str(error.value)
    assert "all-MiniLM-L6-v2" in str(error.value)


def test_missing_artifact_says_how_to_train(embedder, tmp_path):
    with pytest.raises(ArtifactError, match="adapter-router train"):
        load_router(tmp_path / "nothing", embedder)


def test_load_exemplars_reports_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok", "label": "a"}\n{"text": "", "label": "b"}\n')

    with pytest.raises(ExemplarError, match=r"bad\.jsonl:2: missing or empty 'text'"):
        load_exemplars(path)


def test_load_exemplars_rejects_invalid_json(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text("{not json}\n")

    with pytest.raises(ExemplarError, match=r"broken\.jsonl:1: invalid JSON"):
        load_exemplars(path)


def test_load_exemplars_domain_defaults_to_label(tmp_path):
    path = tmp_path / "plain.jsonl"
    path.write_text('{"text": "hello", "label": "greeting"}\n')

    assert load_exemplars(path) == [Exemplar("hello", "greeting", "greeting")]


def test_label_in_two_domains_is_rejected(embedder):
    exemplars = [*EXEMPLARS, Exemplar("What is a tort?", "algebra", "legal")]

    with pytest.raises(ValueError, match="label 'algebra' appears in domains"):
        train_router(exemplars, embedder)


def test_unknown_fallback_domain_is_rejected(embedder):
    with pytest.raises(ExemplarError, match=r"fallback domains \['chitchat'\] have no exemplars"):
        train_router(EXEMPLARS, embedder, fallback_domains=["chitchat"])


def test_bundled_exemplars_cover_default_domains():
    exemplars = load_exemplars(Path(__file__).parents[1] / "data" / "skills")
    per_domain: dict[str, int] = {}
    for exemplar in exemplars:
        per_domain[exemplar.domain] = per_domain.get(exemplar.domain, 0) + 1

    for domain in ("math", "code", "medical", "legal", "finance", "sql", "general"):
        assert per_domain.get(domain, 0) >= 40, f"{domain} has {per_domain.get(domain, 0)} exemplars"
