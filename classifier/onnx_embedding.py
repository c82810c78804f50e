"""Sentence embeddings through ONNX Runtime: the same model as ``SentenceEmbedder``, without PyTorch.

The sentence-transformers model folder is exported once to ONNX (``torch.onnx``, so PyTorch is
needed for that step only), optionally quantized to int8 weights, and cached. Serving then needs
only ``onnxruntime``, ``tokenizers`` and numpy. The tokenizer is the folder's ``tokenizer.json``.
Pooling and L2 normalisation are done in numpy, because the exported graph stops at the token
embeddings; the mean over tokens is what ``1_Pooling/config.json`` of all-MiniLM-L6-v2 sets.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from classifier.embedding import Chunking, EmbeddingModelError, length_batches, resolve_model_path

logger = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = "~/.cache/adapter-router/onnx"
OPSET = 17

# Word pieces kept free in each window, as in ``SentenceEmbedder``, so both backends split a
# long text into the same number of windows.
_WINDOW_MARGIN = 8


class OnnxEmbedder:
    """An :class:`~classifier.embedding.Embedder` that runs the model with ONNX Runtime on the CPU.

    Parameters
    ----------
    model : str or None
        ``None``/``"default"`` for the packaged all-MiniLM-L6-v2, or a local sentence-transformers
        folder whose pooling is mean over tokens.
    quantize : bool
        Use int8 weights, quantized per output channel by ``onnxruntime.quantization.quantize_dynamic``.
        This is faster, and the embeddings are slightly further from the PyTorch ones.
    cache_dir : str
        Where exported models are kept, one folder per source model and setting.
    threads : int
        ONNX Runtime intra-op threads.
    batch_size : int
        Max windows per forward pass.
    max_batch_tokens : int
        Max padded tokens (windows times the longest window's length) per forward pass.
    max_chunks : int
        Most windows embedded per long text; a longer text is sampled evenly from start to end.

    Examples
    --------
    >>> embedder = OnnxEmbedder(quantize=True)
    >>> embedder.encode(["Solve 3x + 5 = 20"]).shape
    (1, 384)
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        quantize: bool = False,
        cache_dir: str = DEFAULT_CACHE_DIR,
        threads: int = 1,
        batch_size: int = 32,
        max_batch_tokens: int = 512,
        max_chunks: int = 8,
    ) -> None:
        if max_chunks < 1:
            raise ValueError(f"max_chunks must be at least 1, got {max_chunks}")
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        self.name, self.path = resolve_model_path(model)
        self.quantize = quantize
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.max_chunks = max_chunks

        folder = Path(self.path)
        check_mean_pooling(folder)
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        settings = json.loads((folder / "sentence_bert_config.json").read_text())
        self.max_tokens = int(settings["max_seq_length"])
        self._cls_id = self._tokenizer.token_to_id("[CLS]")
        self._sep_id = self._tokenizer.token_to_id("[SEP]")

        onnx_path = exported_model_path(folder, Path(cache_dir).expanduser(), quantize=quantize)
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self._session = onnxruntime.InferenceSession(
            str(onnx_path), options, providers=["CPUExecutionProvider"]
        )
        self._input_names = {node.name for node in self._session.get_inputs()}
        self.dimension = int(self._session.get_outputs()[0].shape[-1])

    def encode(self, texts: Sequence[str], *, show_progress: bool = False) -> np.ndarray:
        """Embed ``texts`` into an array of shape (len(texts), dimension) with rows of norm 1.

        A text longer than the model's window is split into windows whose embeddings are
        averaged (see :meth:`encode_chunked`). ``show_progress`` is accepted for the protocol
        and ignored.
        """
        return self.encode_chunked(texts, show_progress=show_progress)[0]

    def encode_chunked(
        self, texts: Sequence[str], *, show_progress: bool = False
    ) -> tuple[np.ndarray, list[Chunking]]:
        """Embed ``texts`` and report how each was split, like ``SentenceEmbedder.encode_chunked``.

        Returns
        -------
        embeddings : ndarray of shape (len(texts), dimension)
        chunking : list of Chunking, one per text
        """
        if len(texts) == 0:
            return np.zeros((0, self.dimension), dtype=np.float32), []

        windows: list[list[int]] = []
        owners: list[int] = []
        chunking: list[Chunking] = []
        for position, text in enumerate(texts):
            text_windows, total = self._windows(text)
            windows.extend(text_windows)
            owners.extend([position] * len(text_windows))
            chunking.append(Chunking(chunks=len(text_windows), total_chunks=total))

        vectors = np.empty((len(windows), self.dimension), dtype=np.float32)
        for batch in length_batches(
            [len(window) for window in windows], self.batch_size, self.max_batch_tokens
        ):
            vectors[batch] = self._embed_batch([windows[i] for i in batch])

        if len(windows) == len(texts):
            return vectors, chunking
        pooled = np.zeros((len(texts), self.dimension), dtype=np.float32)
        np.add.at(pooled, np.asarray(owners), vectors)
        pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
        return pooled, chunking

    def _windows(self, text: str) -> tuple[list[list[int]], int]:
        """Split ``text`` into windows of word-piece ids, each wrapped in [CLS] ... [SEP]."""
        ids = self._tokenizer.encode(text, add_special_tokens=False).ids
        window = self.max_tokens - _WINDOW_MARGIN
        # An empty text still gets one window, [CLS] [SEP], as sentence-transformers embeds it.
        starts = list(range(0, max(len(ids), 1), window))
        total = len(starts)
        if total > self.max_chunks:
            picks = np.linspace(0, len(starts) - 1, self.max_chunks).round().astype(int)
            starts = [starts[i] for i in sorted(set(picks.tolist()))]
        windows = [[self._cls_id, *ids[start : start + window], self._sep_id] for start in starts]
        return windows, total

    def _embed_batch(self, windows: list[list[int]]) -> np.ndarray:
        """Run the model on windows of ids; return mean-pooled, L2-normalised embeddings."""
        length = max(len(ids) for ids in windows)
        input_ids = np.zeros((len(windows), length), dtype=np.int64)
        attention_mask = np.zeros((len(windows), length), dtype=np.int64)
        for row, ids in enumerate(windows):
            input_ids[row, : len(ids)] = ids
            attention_mask[row, : len(ids)] = 1

        feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "token_type_ids" in self._input_names:
            feeds["token_type_ids"] = np.zeros_like(input_ids)
        hidden = self._session.run(None, feeds)[0]

        mask = attention_mask[:, :, None].astype(np.float32)
        pooled = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
        return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


def check_mean_pooling(folder: Path) -> None:
    """Raise :class:`EmbeddingModelError` unless the model folder pools by mean over tokens."""
    config_path = folder / "1_Pooling" / "config.json"
    if not config_path.is_file() or not (folder / "tokenizer.json").is_file():
        raise EmbeddingModelError(
            f"cannot run {folder} with ONNX Runtime: it needs 1_Pooling/config.json and tokenizer.json "
            "(a sentence-transformers folder with a fast tokenizer); use the PyTorch backend instead"
        )
    pooling = json.loads(config_path.read_text())
    if not pooling.get("pooling_mode_mean_tokens"):
        raise EmbeddingModelError(
            f"cannot run {folder} with ONNX Runtime: only mean pooling is supported, got {pooling}"
        )


def exported_model_path(folder: Path, cache_dir: Path, *, quantize: bool) -> Path:
    """Return the cached ONNX export of ``folder``, exporting (and quantizing) it first if missing."""
    digest = hashlib.sha256()
    for name in ("config.json", "model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            digest.update((folder / name).read_bytes())
    target = cache_dir / digest.hexdigest()[:16]
    fp32_path = target / "model.onnx"
    int8_path = target / "model.int8-per-channel.onnx"

    if not fp32_path.is_file():
        export_to_onnx(folder, fp32_path)
    if quantize and not int8_path.is_file():
        from onnxruntime.quantization import QuantType, quantize_dynamic

        logger.info("quantizing %s to int8 weights", fp32_path)
        partial = int8_path.with_suffix(".partial")
        # The quantizer logs about 40 lines and a hint through the root logger. They are hidden
        # for the few seconds it runs, once per model, so they do not flood the gateway's log.
        with _root_logging_at(logging.ERROR):
            quantize_dynamic(str(fp32_path), str(partial), weight_type=QuantType.QInt8, per_channel=True)
        os.replace(partial, int8_path)
    return int8_path if quantize else fp32_path


def export_to_onnx(folder: Path, path: Path) -> None:
    """Export the transformer of a sentence-transformers folder to ONNX (needs PyTorch)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModel

    logger.info("exporting embedding model %s to ONNX at %s", folder, path)

    class HiddenStates(torch.nn.Module):
        # Positional inputs, one tensor out: the TorchScript exporter passes inputs by position.
        def __init__(self) -> None:
            super().__init__()
            self.model = AutoModel.from_pretrained(str(folder)).eval()

        def forward(self, input_ids, attention_mask, token_type_ids):
            output = self.model(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            )
            return output.last_hidden_state

    sample = {
        "input_ids": torch.ones((2, 8), dtype=torch.int64),
        "attention_mask": torch.ones((2, 8), dtype=torch.int64),
        "token_type_ids": torch.zeros((2, 8), dtype=torch.int64),
    }
    axes = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"}}
    axes["token_type_ids"] = {0: "batch", 1: "tokens"}
    axes["last_hidden_state"] = {0: "batch", 1: "tokens"}

    path.parent.mkdir(parents=True, exist_ok=True)
    # NOTE: this is the TorchScript exporter (dynamo=False), deprecated since PyTorch 2.9; the
    # torch.export-based one needs the onnxscript package, which is not a dependency yet.
    # Written under another name and renamed, so a crash never leaves a half-written model behind.
    partial = path.with_suffix(".partial")
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer warns about Python conditions in the attention code. They are constant for
        # this model's inputs, and the tests check the export against PyTorch.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", UserWarning)
        torch.onnx.export(
            HiddenStates(),
            tuple(sample.values()),
            str(partial),
            input_names=list(sample),
            output_names=["last_hidden_state"],
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )
    os.replace(partial, path)


@contextlib.contextmanager
def _root_logging_at(level: int) -> Iterator[None]:
    root = logging.getLogger()
    previous = root.level
    root.setLevel(max(level, previous))
    try:
        yield
    finally:
        root.setLevel(previous)


__all__ = ["OnnxEmbedder"]
