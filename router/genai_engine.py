"""The onnxruntime-genai engine: one exported model, its LoRA adapters, and token generation.

One ``og.Model`` and one ``og.Adapters`` serve every request. Each generation gets its own
``og.Generator`` with the request's adapter made active (none for the base model). Methods
block, so the servers call them from worker threads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime_genai as og

from router.config import ConfigError
from router.routing_text import message_text
from router.stop_sequences import StopSequenceFilter

logger = logging.getLogger(__name__)

# og 0.18 accepts random_seed only as a signed 32-bit integer, and -1 means "seed from the clock",
# so OpenAI's 64-bit seeds are folded into [0, 2**31 - 1).
_MAX_SEED = 2**31 - 1


class ModelLoadError(ConfigError):
    """The model or one of its adapters cannot be loaded or fails its dry run."""


class PromptTooLongError(ValueError):
    """The prompt leaves no room for a completion token in the model's context."""


class GenerationFailedError(RuntimeError):
    """onnxruntime-genai failed while generating."""


class AdapterError(GenerationFailedError):
    """A loaded adapter cannot be used: its file was removed or changed since it was loaded, or
    activating it failed.

    ``reason`` completes "adapter '<adapter>' cannot be used: ..." and names the fix.
    """

    def __init__(self, adapter: str, reason: str) -> None:
        super().__init__(f"adapter '{adapter}' cannot be used: {reason}")
        self.adapter = adapter
        self.reason = reason


@dataclass(frozen=True)
class SamplingOptions:
    """Sampling settings of one completion.

    ``temperature`` 0 or ``top_p`` 0 select greedy decoding. ``max_tokens`` counts generated
    tokens; generation also stops at the model's context length.
    """

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    @property
    def greedy(self) -> bool:
        """Whether the most likely token is always taken."""
        return self.temperature == 0 or self.top_p == 0


@dataclass(frozen=True)
class _FileIdentity:
    """A file's device, inode, size and modification time, which change when its bytes are replaced."""

    device: int
    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> _FileIdentity:
        status = path.stat()
        return cls(status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)


@dataclass
class _AdapterFile:
    """An adapter's file as it was loaded, and the last identities its check accepted and rejected."""

    path: Path
    sha256: str
    accepted: _FileIdentity
    rejected: tuple[_FileIdentity, str] | None = None


@dataclass(frozen=True)
class GeneratedText:
    """A piece of generated text; the last piece of a generation has ``finish_reason`` set.

    ``finish_reason`` is ``"stop"`` (end-of-sequence token or stop sequence) or ``"length"``
    (``max_tokens`` or the context length reached). The token counts are set on the last
    piece only.
    """

    text: str
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


class GenaiEngine:
    """An exported onnxruntime-genai model with its LoRA adapters loaded and verified.

    Parameters
    ----------
    model_dir : str or Path
        Folder with ``genai_config.json``, the ONNX model and the tokenizer files.
    adapter_files : mapping of str to str or Path
        Adapter name to ``.onnx_adapter`` file. Every adapter gets a one-token dry run here,
        because an adapter made for another model loads without error and fails only at its
        first generation.

    Raises
    ------
    ModelLoadError
        If the model or an adapter file is missing, cannot be loaded, or fails its dry run.
    """

    def __init__(self, model_dir: str | Path, adapter_files: Mapping[str, str | Path]) -> None:
        self.model_dir = Path(model_dir)
        config_file = self.model_dir / "genai_config.json"
        if not config_file.is_file():
            raise ModelLoadError(
                f"no genai_config.json in {self.model_dir}: point the model setting at a folder "
                "exported by the onnxruntime-genai model builder"
            )
        model_config = json.loads(config_file.read_text(encoding="utf-8"))["model"]
        self.context_length = int(model_config["context_length"])
        self.vocab_size = int(model_config["vocab_size"])
        """Token ids run from 0 to ``vocab_size - 1``. Other ids fail in the model's embedding lookup."""

        logger.info("loading onnxruntime-genai model %s", self.model_dir)
        try:
            self._model = og.Model(str(self.model_dir))
            self._tokenizer = og.Tokenizer(self._model)
        except RuntimeError as error:
            raise ModelLoadError(f"cannot load the model in {self.model_dir}: {error}") from None
        self._eos_token_ids = frozenset(int(token) for token in self._tokenizer.eos_token_ids)
        self.has_chat_template = _has_chat_template(self.model_dir)
        if not self.has_chat_template:
            logger.warning(
                "model %s has no chat template: chat requests will be rejected, text completions work",
                self.model_dir,
            )

        self._adapters = og.Adapters(self._model)
        self.adapter_names: tuple[str, ...] = tuple(sorted(adapter_files))
        self._adapter_files: dict[str, _AdapterFile] = {}
        self._adapter_files_lock = threading.Lock()
        self._verify(None)
        for name in self.adapter_names:
            self._load_adapter(name, Path(adapter_files[name]))

    def chat_prompt(self, messages: Sequence[Mapping[str, Any]], tools: Sequence[Any] | None = None) -> str:
        """Render a conversation with the model's chat template, ending with the assistant's turn.

        Content parts are joined into their text; non-text parts (images, audio) are dropped,
        because the engine serves text-only models.
        """
        if not self.has_chat_template:
            raise ValueError(f"the model {self.model_dir} has no chat template: use /v1/completions")
        plain = [_plain_message(message) for message in messages]
        return self._tokenizer.apply_chat_template(
            json.dumps(plain),
            tools=json.dumps(list(tools)) if tools else None,
            add_generation_prompt=True,
        )

    def check_adapter(self, name: str) -> None:
        """Check that adapter ``name``'s file still contains the bytes that were loaded from it.

        The loaded adapter keeps working from memory when its file is removed or replaced, but
        its file is what operators and reloads see, so an adapter whose file is gone or has other
        bytes is not served. Each call stats the file; the file is hashed again only when its
        device, inode, size or modification time changed. Safe to call from several threads.

        Raises
        ------
        AdapterError
            If ``name`` is not loaded, or its file is missing, unreadable, or has another sha256.
        """
        loaded = self._adapter_files.get(name)
        if loaded is None:
            raise AdapterError(name, f"it is not loaded: use one of {', '.join(self.adapter_names)}")
        try:
            identity = _FileIdentity.of(loaded.path)
        except OSError as error:
            raise AdapterError(
                name, f"its file {loaded.path} is gone ({error.strerror}): restore the file"
            ) from None
        with self._adapter_files_lock:
            if identity == loaded.accepted:
                return
            if loaded.rejected is not None and loaded.rejected[0] == identity:
                raise AdapterError(name, loaded.rejected[1])

        try:
            digest = _file_sha256(loaded.path)
        except OSError as error:
            raise AdapterError(
                name, f"its file {loaded.path} cannot be read ({error.strerror}): restore the file"
            ) from None
        with self._adapter_files_lock:
            if digest == loaded.sha256:
                loaded.accepted = identity
                return
            reason = (
                f"its file {loaded.path} changed after it was loaded (sha256 {digest}, loaded "
                f"{loaded.sha256}): restart or reload the gateway to load the new file, or restore "
                "the loaded one"
            )
            loaded.rejected = (identity, reason)
        raise AdapterError(name, reason)

    def encode(self, text: str) -> list[int]:
        """Return the token ids of ``text`` (no BOS token is added)."""
        return [int(token) for token in self._tokenizer.encode(text)]

    def generate(
        self,
        prompt_ids: Sequence[int],
        *,
        adapter: str | None,
        options: SamplingOptions,
        cancelled: threading.Event | None = None,
    ) -> Iterator[GeneratedText]:
        """Generate a completion of ``prompt_ids``, yielding text as it is decoded.

        ``adapter`` ``None`` generates with the base model. Setting ``cancelled`` stops the
        generation before its next token; the iterator then ends without a final piece.

        Raises
        ------
        PromptTooLongError
            If the prompt leaves no room for a generated token.
        AdapterError
            If activating ``adapter`` fails.
        GenerationFailedError
            If onnxruntime-genai fails otherwise.
        """
        if len(prompt_ids) >= self.context_length:
            raise PromptTooLongError(
                f"the prompt is {len(prompt_ids)} tokens but the model's context length is "
                f"{self.context_length}: shorten the prompt"
            )
        try:
            generator = self._generator(prompt_ids, adapter, options)
        except AdapterError:
            raise
        except RuntimeError as error:
            raise GenerationFailedError(
                f"generation with {adapter or 'the base model'} failed: {error}"
            ) from None

        stream = self._tokenizer.create_stream()
        stop_filter = StopSequenceFilter(options.stop)
        completion_tokens = 0
        finish_reason = "length"
        try:
            while not generator.is_done():
                if cancelled is not None and cancelled.is_set():
                    return
                generator.generate_next_token()
                token = int(generator.get_next_tokens()[0])
                completion_tokens += 1
                if token in self._eos_token_ids:
                    finish_reason = "stop"
                    break
                text = stop_filter.feed(stream.decode(token))
                if text:
                    yield GeneratedText(text)
                if stop_filter.stopped:
                    finish_reason = "stop"
                    break
        except RuntimeError as error:
            raise GenerationFailedError(
                f"generation with {adapter or 'the base model'} failed: {error}"
            ) from None
        finally:
            del generator

        rest = stop_filter.flush()
        if rest:
            yield GeneratedText(rest)
        yield GeneratedText(
            "",
            finish_reason=finish_reason,
            prompt_tokens=len(prompt_ids),
            completion_tokens=completion_tokens,
        )

    def _generator(
        self, prompt_ids: Sequence[int], adapter: str | None, options: SamplingOptions
    ) -> og.Generator:
        params = og.GeneratorParams(self._model)
        search: dict[str, Any] = {
            "max_length": min(self.context_length, len(prompt_ids) + options.max_tokens),
            "do_sample": not options.greedy,
        }
        if not options.greedy:
            # top_k 0 turns og's top-k filter off (its default is 50), so that sampling follows
            # OpenAI's semantics: temperature and top_p only.
            search.update(temperature=options.temperature, top_p=options.top_p, top_k=0)
        if options.seed is not None:
            search["random_seed"] = options.seed % _MAX_SEED
        params.set_search_options(**search)

        generator = og.Generator(self._model, params)
        if adapter is not None:
            try:
                generator.set_active_adapter(self._adapters, adapter)
            except RuntimeError as error:
                raise AdapterError(
                    adapter, f"activating it failed: {str(error).strip().rstrip('.')}"
                ) from None
        generator.append_tokens(np.asarray(prompt_ids, dtype=np.int32))
        return generator

    def _load_adapter(self, name: str, path: Path) -> None:
        if not path.is_file():
            raise ModelLoadError(
                f"adapter file for '{name}' not found: {path}: export the adapter there or set its path "
                "under backend.adapter_files"
            )
        identity = _FileIdentity.of(path)
        digest = _file_sha256(path)
        try:
            self._adapters.load(str(path), name)
        except RuntimeError as error:
            raise ModelLoadError(f"cannot load adapter '{name}' from {path}: {error}") from None
        self._verify(name, path)
        self._adapter_files[name] = _AdapterFile(path, digest, identity)
        logger.info("loaded adapter %s from %s (one-token dry run passed)", name, path)

    def _verify(self, adapter: str | None, path: Path | None = None) -> None:
        prompt_ids = self.encode("Hello") or [min(self._eos_token_ids, default=0)]
        try:
            generator = self._generator(prompt_ids, adapter, SamplingOptions(max_tokens=1, temperature=0))
            generator.generate_next_token()
            del generator
        except RuntimeError as error:
            if adapter is None:
                raise ModelLoadError(f"the model in {self.model_dir} fails to generate: {error}") from None
            raise ModelLoadError(
                f"adapter '{adapter}' ({path}) does not fit the model in {self.model_dir}: its dry run "
                f"failed: {str(error).strip().rstrip('.')}. Export the adapter for this model."
            ) from None


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _plain_message(message: Mapping[str, Any]) -> dict[str, Any]:
    plain = {key: value for key, value in message.items() if value is not None}
    plain["content"] = message_text(message.get("content"))
    return plain


def _has_chat_template(model_dir: Path) -> bool:
    if (model_dir / "chat_template.jinja").is_file():
        return True
    config_file = model_dir / "tokenizer_config.json"
    if not config_file.is_file():
        return False
    return bool(json.loads(config_file.read_text(encoding="utf-8")).get("chat_template"))
