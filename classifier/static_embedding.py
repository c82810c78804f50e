"""Static sentence embeddings: one vector per vocabulary token, distilled from a transformer.

The approach follows model2vec (Minish Lab): every token of the model's vocabulary is run through
the transformer once, alone between the tokenizer's special tokens, and its mean-pooled output
becomes that token's vector. PCA then centres the table and keeps its main components, and each
token is scaled by a SIF weight ``a / (a + p)``, where ``p`` is the token's probability under
Zipf's law by vocabulary rank. A text is embedded as the L2-normalised mean of its tokens' rows,
so encoding needs only the tokenizer and a table lookup, with no forward pass.

The table is distilled locally (PyTorch, once per model and setting) and cached as ``.npy``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from classifier.embedding import Chunking, EmbeddingModelError, resolve_model_path

logger = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = "~/.cache/adapter-router/static"
DEFAULT_PCA_DIMS = 256
DEFAULT_SIF_COEFFICIENT = 1e-4
"""The ``a`` of the SIF weight ``a / (a + p)``; model2vec's default."""

# Token ids summed per step when a long text is embedded, so memory stays bounded (block x dims floats).
_SUM_BLOCK = 8192


class StaticEmbedder:
    """An :class:`~classifier.embedding.Embedder` that averages distilled per-token vectors.

    Embedding is a tokenizer call and a table lookup: about 0.03 ms for a short prompt on one
    core of a 2-vCPU VM, against 8.5 ms for the transformer on PyTorch. It is less accurate,
    because word order and context are lost. It has no window, so a long text is embedded whole
    and ``encode_chunked`` reports one chunk per text.

    Parameters
    ----------
    model : str or None
        ``None``/``"default"`` for the packaged all-MiniLM-L6-v2, or a local sentence-transformers
        folder with a fast tokenizer (``tokenizer.json``).
    cache_dir : str
        Where distilled tables are kept, one folder per source model.
    pca_dims : int
        Dimension of the embeddings: principal components kept, at most the model's hidden size.
    sif_coefficient : float
        The ``a`` of the SIF weight ``a / (a + p)``; smaller values weigh frequent tokens down more.
    vocabulary_size : int or None
        Distil only the first ``vocabulary_size`` token ids, the most frequent ones, and leave the
        others out of every text. ``None`` distils the whole vocabulary; a prefix is for quick
        experiments and tests.
    batch_size : int
        Tokens per forward pass while distilling.

    Examples
    --------
    >>> embedder = StaticEmbedder()
    >>> embedder.encode(["Solve 3x + 5 = 20"]).shape
    (1, 256)
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        cache_dir: str = DEFAULT_CACHE_DIR,
        pca_dims: int = DEFAULT_PCA_DIMS,
        sif_coefficient: float = DEFAULT_SIF_COEFFICIENT,
        vocabulary_size: int | None = None,
        batch_size: int = 1024,
    ) -> None:
        if pca_dims < 1:
            raise ValueError(f"pca_dims must be at least 1, got {pca_dims}")
        if sif_coefficient <= 0:
            raise ValueError(f"sif_coefficient must be positive, got {sif_coefficient}")
        if vocabulary_size is not None and vocabulary_size < 2 * pca_dims:
            raise ValueError(
                f"vocabulary_size must be at least 2 * pca_dims = {2 * pca_dims}, got {vocabulary_size}"
            )
        model_name, self.path = resolve_model_path(model)
        self.name = f"static:{model_name}"
        self.dimension = pca_dims
        self.sif_coefficient = sif_coefficient

        folder = Path(self.path)
        tokenizer_file = folder / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise EmbeddingModelError(
                f"cannot distil static embeddings from {folder}: it has no tokenizer.json "
                "(a fast tokenizer is needed); use a model folder saved with a fast tokenizer"
            )
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        full_size = self._tokenizer.get_vocab_size()
        self.vocabulary_size = full_size if vocabulary_size is None else min(vocabulary_size, full_size)

        self.table_path = distilled_table_path(
            folder,
            Path(cache_dir).expanduser(),
            pca_dims=pca_dims,
            sif_coefficient=sif_coefficient,
            vocabulary_size=self.vocabulary_size,
        )
        # Rows 0 .. vocabulary_size - 1 are the tokens; the last row is the empty text.
        if self.table_path.is_file():
            logger.info("loading static embeddings %s", self.table_path)
            self._table = np.load(self.table_path)
        else:
            self._table = distil_table(
                folder,
                self._tokenizer,
                vocabulary_size=self.vocabulary_size,
                pca_dims=pca_dims,
                sif_coefficient=sif_coefficient,
                batch_size=batch_size,
            )
            try:
                _save_atomically(self._table, self.table_path)
            except OSError as error:
                logger.warning(
                    "cannot cache static embeddings at %s (%s): they will be distilled again at next start",
                    self.table_path,
                    error,
                )

        if self._table.shape != (self.vocabulary_size + 1, pca_dims):
            raise EmbeddingModelError(
                f"static embedding table {self.table_path} has shape {self._table.shape}, "
                f"expected {(self.vocabulary_size + 1, pca_dims)}: delete the file to distil it again"
            )

    def encode(self, texts: Sequence[str], *, show_progress: bool = False) -> np.ndarray:
        """Embed ``texts`` into an array of shape (len(texts), dimension) with rows of norm 1.

        ``show_progress`` is accepted for the protocol and ignored.
        """
        return self.encode_chunked(texts, show_progress=show_progress)[0]

    def encode_chunked(
        self, texts: Sequence[str], *, show_progress: bool = False
    ) -> tuple[np.ndarray, list[Chunking]]:
        """Embed ``texts``; every text is embedded whole, so each :class:`Chunking` is one of one.

        Returns
        -------
        embeddings : ndarray of shape (len(texts), dimension)
        chunking : list of Chunking, one per text
        """
        vectors = np.empty((len(texts), self.dimension), dtype=np.float32)
        for row, text in enumerate(texts):
            vectors[row] = self._embed(text)
        return vectors, [Chunking(chunks=1, total_chunks=1) for _ in texts]

    def _embed(self, text: str) -> np.ndarray:
        ids = np.asarray(self._tokenizer.encode(text, add_special_tokens=False).ids, dtype=np.int64)
        ids = ids[ids < self.vocabulary_size]
        if len(ids) == 0:
            return self._table[-1]

        total = np.zeros(self.dimension, dtype=np.float32)
        for start in range(0, len(ids), _SUM_BLOCK):
            total += self._table[ids[start : start + _SUM_BLOCK]].sum(axis=0)
        # The mean's scale is lost in the normalisation, so the sum is normalised directly.
        return total / max(float(np.linalg.norm(total)), 1e-12)


def distilled_table_path(
    folder: Path, cache_dir: Path, *, pca_dims: int, sif_coefficient: float, vocabulary_size: int
) -> Path:
    """Return where the table for ``folder`` and these settings is cached.

    The folder name is a hash of the model's weights, configuration and tokenizer, so a changed
    model is distilled again.
    """
    digest = hashlib.sha256()
    for name in ("config.json", "tokenizer.json", "model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            digest.update((folder / name).read_bytes())
    settings = f"pca{pca_dims}-sif{sif_coefficient:g}-vocab{vocabulary_size}"
    return cache_dir / digest.hexdigest()[:16] / f"{settings}.npy"


def distil_table(
    folder: Path,
    tokenizer,
    *,
    vocabulary_size: int,
    pca_dims: int,
    sif_coefficient: float,
    batch_size: int = 1024,
) -> np.ndarray:
    """Distil the static table of a transformer: one row per token, then the empty text's row.

    Parameters
    ----------
    folder : Path
        Local transformers model folder.
    tokenizer : tokenizers.Tokenizer
        The model's fast tokenizer; its special tokens wrap each token as in a one-token text.
    vocabulary_size : int
        Token ids ``0 .. vocabulary_size - 1`` are distilled.
    pca_dims : int
        Principal components kept, at most the model's hidden size.
    sif_coefficient : float
        The ``a`` of the SIF weight ``a / (a + p)``.

    Returns
    -------
    ndarray of shape (vocabulary_size + 1, pca_dims), float32
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from sklearn.decomposition import PCA
    from transformers import AutoModel

    started = time.perf_counter()
    logger.info(
        "distilling static embeddings from %s: %d tokens through the transformer (%d torch threads)",
        folder,
        vocabulary_size,
        torch.get_num_threads(),
    )
    try:
        model = AutoModel.from_pretrained(str(folder)).eval()
    except (OSError, ValueError) as error:
        raise EmbeddingModelError(f"cannot load {folder} to distil static embeddings: {error}") from error
    hidden_size = int(model.config.hidden_size)
    if pca_dims > hidden_size:
        raise ValueError(f"pca_dims must be at most the model's hidden size {hidden_size}, got {pca_dims}")

    prefix, suffix = _special_wrapping(tokenizer)
    token_ids = torch.arange(vocabulary_size, dtype=torch.int64)[:, None]
    outputs = []
    with torch.inference_mode():
        for start in range(0, vocabulary_size, batch_size):
            batch = token_ids[start : start + batch_size]
            outputs.append(_mean_pooled(model, batch, prefix, suffix))
        empty = _mean_pooled(model, token_ids[:1, :0], prefix, suffix)
    vectors = torch.cat(outputs).numpy()

    pca = PCA(n_components=pca_dims, svd_solver="full").fit(vectors)
    table = np.vstack([pca.transform(vectors), pca.transform(empty.numpy())]).astype(np.float32)

    # Zipf's law by vocabulary rank: the probability of the token of rank r is proportional to
    # 1 / r. WordPiece vocabularies list frequent tokens first, so the token id is used as the rank.
    inverse_rank = 1.0 / np.arange(2, vocabulary_size + 2, dtype=np.float64)
    probability = inverse_rank / inverse_rank.sum()
    table[:vocabulary_size] *= (sif_coefficient / (sif_coefficient + probability))[:, None].astype(np.float32)
    # The empty text's row is returned as it is, so it is stored with norm 1.
    table[-1] /= max(float(np.linalg.norm(table[-1])), 1e-12)

    logger.info(
        "distilled static embeddings from %s in %.1f s: %d tokens, %d dims, PCA kept %.3f of the variance",
        folder,
        time.perf_counter() - started,
        vocabulary_size,
        pca_dims,
        float(pca.explained_variance_ratio_.sum()),
    )
    return table


def _mean_pooled(model, token_ids, prefix: list[int], suffix: list[int]):
    """Run (n, k) token ids wrapped in the special tokens; return (n, hidden) means over positions."""
    import torch

    rows = len(token_ids)
    input_ids = torch.cat(
        [
            torch.tensor(prefix, dtype=torch.int64).expand(rows, -1),
            token_ids,
            torch.tensor(suffix, dtype=torch.int64).expand(rows, -1),
        ],
        dim=1,
    )
    hidden = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids)).last_hidden_state
    return hidden.mean(dim=1)


def _special_wrapping(tokenizer) -> tuple[list[int], list[int]]:
    """Return the special token ids the tokenizer puts before and after a text ([CLS] and [SEP] for BERT)."""
    bare = tokenizer.encode("a", add_special_tokens=False).ids
    wrapped = tokenizer.encode("a", add_special_tokens=True).ids
    for start in range(len(wrapped) - len(bare) + 1):
        if wrapped[start : start + len(bare)] == bare:
            return wrapped[:start], wrapped[start + len(bare) :]
    raise EmbeddingModelError("cannot find where the tokenizer places its special tokens around a text")


def _save_atomically(table: np.ndarray, path: Path) -> None:
    """Write ``table`` under a temporary name and rename it, so a crash leaves no partial table."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".partial-{os.getpid()}")
    with partial.open("wb") as stream:
        np.save(stream, table)
    os.replace(partial, path)
    logger.info("cached static embeddings at %s", path)


__all__ = ["StaticEmbedder"]
