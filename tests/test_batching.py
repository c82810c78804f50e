"""Micro-batching of routing embeddings: concurrent calls share batches and get their own rows.

The batching tests wrap the real embedding model in ``GatedEmbedder``, which holds the first
batch until the test releases it. Without that hold, which calls end up in one batch would depend
on thread timing, and the tests could not check how batches form. Most of them allow one batch at
a time, so that the calls queued behind the held batch stay queued.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from classifier import BatchingEmbedder, SentenceEmbedder
from classifier.embedding import Chunking
from router.config import RouterSettings
from router.router_loader import make_embedder

TEXTS = [
    "Solve for x: 3x + 5 = 20",
    "Write a Python function that reverses a linked list",
    "What are the side effects of ibuprofen?",
    "Draft a non-disclosure agreement clause about trade secrets",
    "SELECT the ten customers with the highest total order value",
    "How should I rebalance a retirement portfolio?",
    "What is the derivative of sin(x) * x^2?",
    "hi, how are you today?",
]


class GatedEmbedder:
    """The real embedder, recording each batch; the first batch waits until ``release`` is set."""

    def __init__(self, embedder: SentenceEmbedder, *, fail: bool = False) -> None:
        self.embedder = embedder
        self.name = embedder.name
        self.dimension = embedder.dimension
        self.batches: list[list[str]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.fail = fail

    def encode(self, texts: Sequence[str], *, show_progress: bool = False) -> np.ndarray:
        return self.encode_chunked(texts)[0]

    def encode_chunked(
        self, texts: Sequence[str], *, show_progress: bool = False
    ) -> tuple[np.ndarray, list[Chunking]]:
        self.batches.append(list(texts))
        if len(self.batches) == 1:
            self.entered.set()
            assert self.release.wait(30), "the test never released the first batch"
        if self.fail:
            raise RuntimeError("model failure injected by the test")
        return self.embedder.encode_chunked(texts)


def run_held(batching: BatchingEmbedder, gated: GatedEmbedder, calls: list[list[str]]) -> list:
    """Start one call, queue ``calls`` behind it while it is held, release it; return all results."""
    with ThreadPoolExecutor(max_workers=len(calls) + 1) as pool:
        first = pool.submit(batching.encode_chunked, ["first call, embedded alone"])
        assert gated.entered.wait(30)
        futures = [pool.submit(batching.encode_chunked, texts) for texts in calls]
        _wait_until(lambda: len(batching._queue) == len(calls))
        gated.release.set()
        return [first, *futures]


def _wait_until(condition, timeout: float = 30.0) -> None:
    event = threading.Event()
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        event.wait(0.01)
    raise AssertionError("condition not reached in time")


def test_batching_returns_each_callers_rows(embedder):
    batching = BatchingEmbedder(embedder)
    expected = embedder.encode(TEXTS)

    with ThreadPoolExecutor(max_workers=len(TEXTS)) as pool:
        rows = list(pool.map(lambda text: batching.encode([text])[0], TEXTS * 3))

    np.testing.assert_allclose(np.stack(rows), np.concatenate([expected] * 3), atol=1e-5)
    stats = batching.stats
    assert stats.calls == len(TEXTS) * 3
    assert stats.texts == len(TEXTS) * 3
    assert 1 <= stats.batches <= stats.calls


def test_batch_takes_queued_calls(embedder):
    gated = GatedEmbedder(embedder)
    batching = BatchingEmbedder(gated, max_texts=32, max_concurrent_batches=1)

    futures = run_held(batching, gated, [[text] for text in TEXTS])

    results = [future.result(timeout=30) for future in futures]
    assert len(gated.batches) == 2
    assert sorted(gated.batches[1]) == sorted(TEXTS)
    for text, (embeddings, chunking) in zip(TEXTS, results[1:], strict=True):
        np.testing.assert_allclose(embeddings, embedder.encode([text]), atol=1e-5)
        assert chunking == [Chunking(1, 1)]
    assert batching.stats.batches == 2


def test_batch_keeps_multi_text_calls(embedder):
    gated = GatedEmbedder(embedder)
    batching = BatchingEmbedder(gated, max_concurrent_batches=1)

    futures = run_held(batching, gated, [TEXTS[:3], TEXTS[3:4], TEXTS[4:8]])

    embeddings = [future.result(timeout=30)[0] for future in futures[1:]]
    assert [len(rows) for rows in embeddings] == [3, 1, 4]
    np.testing.assert_allclose(np.concatenate(embeddings), embedder.encode(TEXTS), atol=1e-5)


def test_batches_respect_the_text_bound(embedder):
    gated = GatedEmbedder(embedder)
    batching = BatchingEmbedder(gated, max_texts=3, max_concurrent_batches=1)

    futures = run_held(batching, gated, [[text] for text in TEXTS])

    for future in futures:
        future.result(timeout=30)
    assert [len(batch) for batch in gated.batches[1:]] == [3, 3, 2]


def test_batches_respect_the_word_piece_bound(embedder):
    gated = GatedEmbedder(embedder)
    long_text = "a long clinical vignette " * 40  # about 250 word pieces by the estimate
    batching = BatchingEmbedder(gated, max_word_pieces=300, max_concurrent_batches=1)

    futures = run_held(batching, gated, [[long_text], [long_text], ["short"], ["short"]])

    for future in futures:
        future.result(timeout=30)
    assert [len(batch) for batch in gated.batches[1:]] == [1, 3]


def test_second_batch_runs_beside_a_held_one(embedder):
    gated = GatedEmbedder(embedder)
    batching = BatchingEmbedder(gated, max_concurrent_batches=2)

    with ThreadPoolExecutor(max_workers=2) as pool:
        first_call = pool.submit(batching.encode, ["held in the first batch"])
        assert gated.entered.wait(30)
        second = batching.encode([TEXTS[0]])  # returns while the first batch is still held
        gated.release.set()
        first_call.result(timeout=30)

    np.testing.assert_allclose(second, embedder.encode([TEXTS[0]]), atol=1e-5)
    assert gated.batches == [["held in the first batch"], [TEXTS[0]]]


def test_large_calls_bypass_the_queue(embedder):
    gated = GatedEmbedder(embedder)
    gated.release.set()
    batching = BatchingEmbedder(gated, max_texts=4)

    embeddings = batching.encode(TEXTS)

    assert gated.batches == [TEXTS]
    assert batching.stats.calls == 0
    assert embeddings.shape == (len(TEXTS), embedder.dimension)


def test_batch_failure_reaches_each_call(embedder):
    gated = GatedEmbedder(embedder, fail=True)
    batching = BatchingEmbedder(gated, max_concurrent_batches=1)

    futures = run_held(batching, gated, [[text] for text in TEXTS[:4]])

    for future in futures:
        with pytest.raises(RuntimeError, match="injected"):
            future.result(timeout=30)
    gated.fail = False
    assert batching.encode(["after the failure"]).shape == (1, embedder.dimension)


def test_wait_lets_a_batch_fill(embedder):
    batching = BatchingEmbedder(embedder, max_texts=4, max_wait_ms=5000)

    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(batching.encode, [text]) for text in TEXTS[:4]]
        for future in futures:
            future.result(timeout=30)

    # The first call waits up to 5 s for the batch to fill; the other three arrive well before.
    assert batching.stats.batches == 1


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_texts": 0}, "max_texts"),
        ({"max_word_pieces": 0}, "max_word_pieces"),
        ({"max_wait_ms": -1}, "max_wait_ms"),
        ({"max_concurrent_batches": 0}, "max_concurrent_batches"),
    ],
)
def test_batching_rejects_bad_bounds(embedder, options, message):
    with pytest.raises(ValueError, match=message):
        BatchingEmbedder(embedder, **options)


def test_config_switches_batching(tmp_path):
    batched = make_embedder(RouterSettings(exemplars=str(tmp_path), batching={"max_texts": 7}))
    plain = make_embedder(RouterSettings(exemplars=str(tmp_path), batching={"enabled": False}))

    assert isinstance(batched, BatchingEmbedder)
    assert batched.max_texts == 7
    assert isinstance(plain, SentenceEmbedder)
    assert batched.max_tokens == plain.max_tokens  # model attributes read through the wrapper


def test_gateway_concurrent_decisions_match(upstream_gateway):
    url = f"{upstream_gateway.url}/v1/route"
    prompts = TEXTS * 4
    with httpx.Client(timeout=60) as client:
        alone = {text: client.post(url, json={"text": text}).json()["model"] for text in TEXTS}

    with ThreadPoolExecutor(max_workers=len(prompts)) as pool, httpx.Client(timeout=60) as client:
        responses = list(pool.map(lambda text: client.post(url, json={"text": text}), prompts))

    assert all(response.status_code == 200 for response in responses)
    assert [response.json()["model"] for response in responses] == [alone[text] for text in prompts]


def test_mixed_lengths_embed_like_single_texts(embedder):
    texts = [TEXTS[0], "a long clinical vignette about a patient with chest pain " * 20, TEXTS[7], TEXTS[2]]

    together = embedder.encode(texts)

    np.testing.assert_allclose(together, np.concatenate([embedder.encode([t]) for t in texts]), atol=1e-5)
