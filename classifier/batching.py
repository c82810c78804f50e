"""Micro-batching: the texts of concurrent callers are embedded together in one model call.

A gateway under load routes many requests at once, each on its own worker thread. Embedding them
one call at a time pays the model's fixed cost per call and lets the calls compete for the same
cores. :class:`BatchingEmbedder` queues the calls instead: a few worker threads each take the
oldest queued calls, up to a number of texts and an estimate of word pieces, embed them in one
call, and hand each caller its rows. Calls that arrive meanwhile form the next batch, so batches
grow with load by themselves and a lone call is embedded at once.

The model runs only on the worker threads. Run on every caller's thread, its large and varied
temporary buffers made the C allocator keep memory per thread, and a gateway's memory grew by
hundreds of MiB under load.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from classifier.embedding import Chunking, Embedder

logger = logging.getLogger(__name__)

CHARS_PER_WORD_PIECE = 4
"""Rough length of a word piece in characters of English text, to estimate a batch's work."""


IDLE_WORKER_SECONDS = 30.0
"""How long a worker thread waits for calls before it exits; a later call starts a new one."""


@dataclass
class _Call:
    texts: Sequence[str]
    word_pieces: int
    done: threading.Event = field(default_factory=threading.Event)
    embeddings: np.ndarray | None = None
    chunking: list[Chunking] = field(default_factory=list)
    error: BaseException | None = None


@dataclass(frozen=True)
class BatchStats:
    """Counts since the embedder was created: calls received, batches run, texts embedded."""

    calls: int
    batches: int
    texts: int

    @property
    def mean_batch_calls(self) -> float:
        """Average number of calls served by one batch."""
        return self.calls / self.batches if self.batches else 0.0


class BatchingEmbedder:
    """An :class:`~classifier.embedding.Embedder` that embeds concurrent calls in shared batches.

    Thread-safe: call :meth:`encode_chunked` from any number of threads. Calls are served in
    arrival order by up to ``max_concurrent_batches`` worker threads, started as needed and
    stopped after ``IDLE_WORKER_SECONDS`` without calls.

    Parameters
    ----------
    embedder : Embedder
        The model that embeds each batch.
    max_texts : int
        Maximum number of texts in one batch.
    max_word_pieces : int
        Maximum number of word pieces in one batch, estimated from the texts' lengths at
        ``CHARS_PER_WORD_PIECE`` characters each. A long text thus shares its batch with fewer
        others, and short requests do not queue behind a long one for long. A single call larger
        than either bound is embedded alone.
    max_wait_ms : float
        How long the thread that runs a batch waits for more calls while the batch is not full.
        ``0`` takes only the calls already queued, which adds no latency to a lone call.
    max_concurrent_batches : int, optional
        Maximum number of batches embedded at the same time, which is the number of worker
        threads; the number of CPUs by default. The wrapped model must be safe to call from
        several threads, as sentence-transformers and ONNX Runtime models are. With one model
        thread per call, one batch at a time would leave the other cores idle.

    Examples
    --------
    >>> embedder = BatchingEmbedder(SentenceEmbedder(), max_texts=32)
    >>> embedder.encode(["Solve 3x + 5 = 20"]).shape
    (1, 384)
    """

    def __init__(
        self,
        embedder: Embedder,
        *,
        max_texts: int = 32,
        max_word_pieces: int = 8192,
        max_wait_ms: float = 0.0,
        max_concurrent_batches: int | None = None,
    ) -> None:
        if max_texts < 1:
            raise ValueError(f"max_texts must be at least 1, got {max_texts}")
        if max_word_pieces < 1:
            raise ValueError(f"max_word_pieces must be at least 1, got {max_word_pieces}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must not be negative, got {max_wait_ms}")
        if max_concurrent_batches is None:
            max_concurrent_batches = os.cpu_count() or 1
        if max_concurrent_batches < 1:
            raise ValueError(f"max_concurrent_batches must be at least 1, got {max_concurrent_batches}")
        self.embedder = embedder
        self.name = embedder.name
        self.dimension = embedder.dimension
        self.max_texts = max_texts
        self.max_word_pieces = max_word_pieces
        self.max_wait_seconds = max_wait_ms / 1000
        self.max_concurrent_batches = max_concurrent_batches
        self._queue: deque[_Call] = deque()
        self._changed = threading.Condition()
        self._workers = 0
        self._idle_workers = 0
        self._calls = self._batches = self._texts = 0

    def __getattr__(self, name: str) -> Any:
        # Attributes particular to the wrapped model (``path``, ``max_tokens``...) read through.
        return getattr(self.__dict__["embedder"], name)

    @property
    def stats(self) -> BatchStats:
        """Calls, batches and texts so far."""
        with self._changed:
            return BatchStats(self._calls, self._batches, self._texts)

    def encode(self, texts: Sequence[str], *, show_progress: bool = False) -> np.ndarray:
        """Embed ``texts``; returns an array of shape (len(texts), dimension), rows of norm 1."""
        return self.encode_chunked(texts, show_progress=show_progress)[0]

    def encode_chunked(
        self, texts: Sequence[str], *, show_progress: bool = False
    ) -> tuple[np.ndarray, list[Chunking]]:
        """Embed ``texts`` in a batch shared with concurrent calls; blocks until they are embedded.

        A call with a progress bar or with more than ``max_texts`` texts (training, evaluation)
        goes straight to the wrapped model.
        """
        if show_progress or len(texts) == 0 or len(texts) > self.max_texts:
            return self.embedder.encode_chunked(texts, show_progress=show_progress)

        call = _Call(texts, sum(_word_pieces(text) for text in texts))
        with self._changed:
            self._queue.append(call)
            self._calls += 1
            if self._idle_workers == 0 and self._workers < self.max_concurrent_batches:
                self._workers += 1
                threading.Thread(target=self._work, name="embedding-batches", daemon=True).start()
            self._changed.notify()
        call.done.wait()

        if call.error is not None:
            raise call.error
        assert call.embeddings is not None
        return call.embeddings, call.chunking

    def _work(self) -> None:
        """Embed batches of queued calls until none arrives for ``IDLE_WORKER_SECONDS``."""
        with self._changed:
            while True:
                self._idle_workers += 1
                arrived = self._changed.wait_for(lambda: self._queue, timeout=IDLE_WORKER_SECONDS)
                self._idle_workers -= 1
                if not arrived:
                    self._workers -= 1
                    return
                batch = self._take_batch()
                if not batch:
                    continue
                self._changed.release()
                try:
                    self._run(batch)
                finally:
                    self._changed.acquire()
                    self._batches += 1
                    self._texts += sum(len(call.texts) for call in batch)
                    for call in batch:
                        call.done.set()

    def _take_batch(self) -> list[_Call]:
        """Remove and return the oldest queued calls that fit one batch. The caller holds the lock."""
        deadline = time.monotonic() + self.max_wait_seconds
        while self.max_wait_seconds > 0 and not self._full():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._changed.wait(remaining)

        if not self._queue:
            return []  # another thread took the queued calls while this one waited
        batch = [self._queue.popleft()]
        texts, word_pieces = len(batch[0].texts), batch[0].word_pieces
        while self._queue:
            following = self._queue[0]
            texts += len(following.texts)
            word_pieces += following.word_pieces
            if texts > self.max_texts or word_pieces > self.max_word_pieces:
                break
            batch.append(self._queue.popleft())
        return batch

    def _full(self) -> bool:
        texts = sum(len(call.texts) for call in self._queue)
        word_pieces = sum(call.word_pieces for call in self._queue)
        return texts >= self.max_texts or word_pieces >= self.max_word_pieces

    def _run(self, batch: list[_Call]) -> None:
        """Embed the texts of ``batch`` in one call and give each call its rows, without the lock."""
        texts = [text for call in batch for text in call.texts]
        try:
            embeddings, chunking = self.embedder.encode_chunked(texts)
        except Exception as error:
            # Every caller of the batch gets the error. The calls are not retried one by one,
            # because a model that fails on a batch most likely fails on its parts too.
            logger.warning("embedding a batch of %d texts failed: %s", len(texts), error)
            for call in batch:
                call.error = error
            return

        start = 0
        for call in batch:
            end = start + len(call.texts)
            call.embeddings = embeddings[start:end]
            call.chunking = chunking[start:end]
            start = end


def _word_pieces(text: str) -> int:
    return max(1, math.ceil(len(text) / CHARS_PER_WORD_PIECE))
