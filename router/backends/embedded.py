"""The embedded backend: generation with onnxruntime-genai in the serving process.

Each request gets its own generator on a worker thread, so the event loop keeps serving while
tokens are generated. A stream's tokens reach the event loop through a queue.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, TypeVar

from router.backends.base import BackendCall, BackendResult, JSONResult, StreamResult
from router.config import EmbeddedBackendSettings
from router.errors import (
    AdapterFailedError,
    AdapterUnavailableError,
    GatewayError,
    GenerationError,
    InvalidRequestError,
)
from router.genai_engine import (
    AdapterError,
    GenaiEngine,
    GeneratedText,
    GenerationFailedError,
    PromptTooLongError,
    SamplingOptions,
)
from router.log_throttle import LogThrottle
from router.protocol import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionChunkChoice,
    ChatCompletionRequest,
    ChatDelta,
    Completion,
    CompletionChoice,
    CompletionRequest,
    Usage,
)
from router.sse import SSE_DONE, sse_error, sse_event

logger = logging.getLogger(__name__)

ADAPTER_UNAVAILABLE_LOG_SECONDS = 60.0
"""Minimum time between two log lines about the same unusable adapter, in seconds."""

Result = TypeVar("Result")
_END = object()


class EmbeddedBackend:
    """Serve completions from a :class:`GenaiEngine` on a pool of worker threads.

    Supported request fields: ``max_tokens`` / ``max_completion_tokens`` (capped at
    ``max_tokens_limit``), ``temperature``, ``top_p``, ``stop``, ``seed``, ``stream`` and
    ``stream_options.include_usage``; ``tools`` reach the chat template. ``presence_penalty``
    and ``frequency_penalty`` are ignored, because onnxruntime-genai has no equivalent. Fields
    the engine cannot honour (``n`` above 1, ``logprobs``, ``echo``, ``suffix``, a
    ``response_format`` other than text, a forced ``tool_choice``) get HTTP 400.

    An adapter is served only while its file contains the bytes that were loaded
    (:meth:`GenaiEngine.check_adapter`). When it does not, or activating the adapter fails, the
    request raises :class:`AdapterUnavailableError` for the gateway to serve it on the base
    model (``adapter_unavailable="fallback"``), or gets HTTP 503 ``adapter_unavailable``
    (``"error"``).
    """

    def __init__(
        self,
        engine: GenaiEngine,
        *,
        max_tokens: int = 64,
        max_tokens_limit: int = 1024,
        workers: int = 2,
        adapter_unavailable: Literal["fallback", "error"] = "fallback",
    ) -> None:
        self.engine = engine
        self.max_tokens = max_tokens
        self.max_tokens_limit = max_tokens_limit
        self.workers = workers
        self.adapter_unavailable = adapter_unavailable
        self._executor: ThreadPoolExecutor | None = None
        self._active: set[threading.Event] = set()
        self._unavailable_log = LogThrottle(ADAPTER_UNAVAILABLE_LOG_SECONDS)

    @classmethod
    def from_settings(cls, settings: EmbeddedBackendSettings, adapters: Iterable[str]) -> EmbeddedBackend:
        """Load the configured model with ``adapters``, each from its configured or default file."""
        files = {
            name: Path(
                settings.adapter_files.get(name) or Path(settings.model) / "adapters" / f"{name}.onnx_adapter"
            )
            for name in adapters
        }
        engine = GenaiEngine(settings.model, files)
        return cls(
            engine,
            max_tokens=settings.max_tokens,
            max_tokens_limit=settings.max_tokens_limit,
            workers=settings.workers,
            adapter_unavailable=settings.adapter_unavailable,
        )

    async def start(self) -> None:
        """Start the worker threads."""
        # NOTE: the onnxruntime-genai Python binding holds the GIL while it computes, so with a
        # real-sized model these threads stall the event loop during each prefill and decode
        # step, and they do not run in parallel. A responsive server for such models needs
        # generation in worker processes.
        self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="generation")
        logger.info("embedded backend started with %d generation threads", self.workers)

    async def readiness(self, expected: list[str]) -> list[str]:
        """Return why the backend cannot serve ``expected`` now: empty when started and every
        adapter among them passes its file check.

        Every adapter passed a one-token dry run when the model was loaded, so only a file
        removed or changed since then makes one unusable.
        """
        if self._executor is None:
            return ["the embedded backend is not started"]
        adapters = [name for name in expected if name in self.engine.adapter_names]
        return await self._run(self._adapter_problems, adapters)

    async def close(self) -> None:
        """Cancel running generations and stop the worker threads."""
        for cancelled in list(self._active):
            cancelled.set()
        if self._executor is not None:
            await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)
            self._executor = None
        logger.info("embedded backend stopped")

    async def chat_completions(self, call: BackendCall[ChatCompletionRequest]) -> BackendResult:
        """Generate the assistant's reply to a conversation."""
        params = call.params
        _check_chat_supported(params)
        await self._run(self._check_adapter, call)
        options = self._sampling(params, params.requested_max_tokens)
        messages = [message.model_dump(exclude_none=True) for message in params.messages]
        prompt_ids = await self._run(self._chat_prompt_ids, messages, params.tools)
        self._check_prompt_length(prompt_ids, "messages")

        if params.stream:
            return StreamResult(self._chat_events(call, prompt_ids, options))
        pieces = await self._generate_all(prompt_ids, call, options)
        last = pieces[-1]
        completion = ChatCompletion(
            id=_completion_id("chatcmpl"),
            model=call.model,
            choices=[
                ChatCompletionChoice(
                    index=0,
                    message=AssistantMessage(content="".join(piece.text for piece in pieces)),
                    finish_reason=last.finish_reason,
                )
            ],
            usage=Usage.of(last.prompt_tokens, last.completion_tokens),
        )
        return JSONResult(completion.model_dump(mode="json"))

    async def completions(self, call: BackendCall[CompletionRequest]) -> BackendResult:
        """Complete each prompt of a text completion request; one choice per prompt."""
        params = call.params
        _check_completion_supported(params)
        await self._run(self._check_adapter, call)
        options = self._sampling(params, params.max_tokens)
        prompts = [
            prompt if isinstance(prompt, list) else await self._run(self.engine.encode, prompt)
            for prompt in params.prompts
        ]
        for prompt_ids in prompts:
            self._check_token_ids(prompt_ids)
            self._check_prompt_length(prompt_ids, "prompt")

        if params.stream:
            return StreamResult(self._completion_events(call, prompts, options))
        choices, prompt_tokens, completion_tokens = [], 0, 0
        for index, prompt_ids in enumerate(prompts):
            pieces = await self._generate_all(prompt_ids, call, options)
            choices.append(
                CompletionChoice(
                    index=index,
                    text="".join(piece.text for piece in pieces),
                    finish_reason=pieces[-1].finish_reason,
                )
            )
            prompt_tokens += pieces[-1].prompt_tokens
            completion_tokens += pieces[-1].completion_tokens
        completion = Completion(
            id=_completion_id("cmpl"),
            model=call.model,
            choices=choices,
            usage=Usage.of(prompt_tokens, completion_tokens),
        )
        return JSONResult(completion.model_dump(mode="json"))

    # Request checks

    def _sampling(
        self, params: ChatCompletionRequest | CompletionRequest, max_tokens: int | None
    ) -> SamplingOptions:
        return SamplingOptions(
            max_tokens=min(max_tokens or self.max_tokens, self.max_tokens_limit),
            temperature=1.0 if params.temperature is None else params.temperature,
            top_p=1.0 if params.top_p is None else params.top_p,
            seed=params.seed,
            stop=params.stop_sequences,
        )

    def _check_token_ids(self, prompt_ids: Sequence[int]) -> None:
        unknown = [token for token in prompt_ids if not 0 <= token < self.engine.vocab_size]
        if unknown:
            raise InvalidRequestError(
                f"The prompt has token id {unknown[0]}, but the model's token ids run from 0 to "
                f"{self.engine.vocab_size - 1}: send token ids of this model's tokenizer.",
                param="prompt",
            )

    def _check_prompt_length(self, prompt_ids: Sequence[int], param: str) -> None:
        if not prompt_ids:
            # The engine adds no BOS token, and generation needs at least one input token.
            raise InvalidRequestError(
                f"The {param} is empty after tokenization: send at least one token of text.", param=param
            )
        if len(prompt_ids) >= self.engine.context_length:
            raise InvalidRequestError(
                f"The prompt is {len(prompt_ids)} tokens, but the model's context length is "
                f"{self.engine.context_length} tokens: shorten the {param}.",
                param=param,
                code="context_length_exceeded",
            )

    # Generation on the worker threads

    def _chat_prompt_ids(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
    ) -> list[int]:
        try:
            prompt = self.engine.chat_prompt(messages, tools)
        except ValueError as error:
            raise InvalidRequestError(f"{error}.", param="messages") from None
        except RuntimeError as error:
            raise InvalidRequestError(
                f"The model's chat template cannot render this conversation: {error}.", param="messages"
            ) from None
        return self.engine.encode(prompt)

    def _check_adapter(self, call: BackendCall[Any]) -> None:
        if call.adapter is None:
            return
        try:
            self.engine.check_adapter(call.adapter)
        except AdapterError as error:
            raise self._adapter_error(error, call.request_id) from None

    def _adapter_problems(self, adapters: list[str]) -> list[str]:
        problems = []
        for name in adapters:
            try:
                self.engine.check_adapter(name)
            except AdapterError as error:
                problems.append(str(error))
        return problems

    def _adapter_error(self, error: AdapterError, request_id: str) -> GatewayError:
        """Return the error for an unusable adapter: the gateway's fallback signal, or HTTP 503."""
        if self.adapter_unavailable == "fallback":
            return AdapterUnavailableError(error.adapter, f"The {error}.")

        skipped = self._unavailable_log.skipped_if_due(error.adapter)
        if skipped is not None:
            logger.error(
                "request %s: %s (HTTP 503 adapter_unavailable; %d more such requests since the last "
                "line about %s)",
                request_id,
                error,
                skipped,
                error.adapter,
            )
        # The reason names server paths, so the client gets the request id to look it up instead.
        return AdapterFailedError(
            f"The adapter {error.adapter} is unavailable on this server. The server log has the "
            f"details under request id {request_id}."
        )

    async def _generate_all(
        self, prompt_ids: list[int], call: BackendCall[Any], options: SamplingOptions
    ) -> list[GeneratedText]:
        """Generate a whole completion on a worker thread.

        When the awaiting request is cancelled (its client went away, or it timed out), the
        generation stops before its next token instead of running to its end.
        """
        cancelled = threading.Event()
        try:
            return await self._run(self._generate_pieces, prompt_ids, call, options, cancelled)
        finally:
            cancelled.set()

    def _generate_pieces(
        self,
        prompt_ids: list[int],
        call: BackendCall[Any],
        options: SamplingOptions,
        cancelled: threading.Event,
    ) -> list[GeneratedText]:
        try:
            pieces = list(
                self.engine.generate(prompt_ids, adapter=call.adapter, options=options, cancelled=cancelled)
            )
        except AdapterError as error:
            raise self._adapter_error(error, call.request_id) from None
        except (PromptTooLongError, GenerationFailedError) as error:
            raise _gateway_error(error, call.request_id) from None
        if cancelled.is_set():
            logger.info("request %s: generation stopped because the request was cancelled", call.request_id)
            return pieces
        _log_generation(call, pieces[-1])
        return pieces

    async def _run(self, function: Any, *args: Any) -> Any:
        if self._executor is None:
            raise RuntimeError("the embedded backend is not started: call start() first")
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    async def _stream(
        self, prompt_ids: list[int], call: BackendCall[Any], options: SamplingOptions
    ) -> AsyncIterator[GeneratedText]:
        """Yield the pieces of a generation running on a worker thread as they are decoded.

        Closing this iterator (the client went away) stops the generation before its next token.
        """
        # NOTE: this runs after the stream's first event was sent, so an adapter whose activation
        # fails here ends the stream with an error event. Only the file check, which runs before
        # the stream starts, can still send the request to the base model.
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        cancelled = threading.Event()

        def put(item: Any) -> None:
            # The loop is closed only when the server stopped while this generation ran.
            if not loop.is_closed():
                loop.call_soon_threadsafe(queue.put_nowait, item)

        def produce() -> None:
            try:
                for piece in self.engine.generate(
                    prompt_ids, adapter=call.adapter, options=options, cancelled=cancelled
                ):
                    put(piece)
            except Exception as error:  # handed to the consumer, which reports it to the client
                put(error)
            finally:
                put(_END)

        if self._executor is None:
            raise RuntimeError("the embedded backend is not started: call start() first")
        self._active.add(cancelled)
        loop.run_in_executor(self._executor, produce)
        try:
            while (item := await queue.get()) is not _END:
                if isinstance(item, Exception):
                    raise _gateway_error(item, call.request_id)
                if item.finish_reason is not None:
                    _log_generation(call, item)
                yield item
        finally:
            cancelled.set()
            self._active.discard(cancelled)

    # Streams

    async def _chat_events(
        self, call: BackendCall[ChatCompletionRequest], prompt_ids: list[int], options: SamplingOptions
    ) -> AsyncIterator[bytes]:
        completion_id, created = _completion_id("chatcmpl"), int(time.time())

        def chunk(delta: ChatDelta, finish_reason: Any = None) -> bytes:
            choice = ChatCompletionChunkChoice(index=0, delta=delta, finish_reason=finish_reason)
            return sse_event(
                ChatCompletionChunk(id=completion_id, created=created, model=call.model, choices=[choice])
            )

        yield chunk(ChatDelta(role="assistant", content=""))
        last = None
        try:
            async for piece in self._stream(prompt_ids, call, options):
                if piece.text:
                    yield chunk(ChatDelta(content=piece.text))
                last = piece
        except GatewayError as error:
            yield sse_error(error)
            return
        if last is None:
            return

        yield chunk(ChatDelta(), last.finish_reason)
        if call.params.include_usage:
            usage = Usage.of(last.prompt_tokens, last.completion_tokens)
            yield sse_event(
                ChatCompletionChunk(
                    id=completion_id, created=created, model=call.model, choices=[], usage=usage
                )
            )
        yield SSE_DONE

    async def _completion_events(
        self, call: BackendCall[CompletionRequest], prompts: list[list[int]], options: SamplingOptions
    ) -> AsyncIterator[bytes]:
        completion_id, created = _completion_id("cmpl"), int(time.time())

        def chunk(index: int, text: str, finish_reason: Any = None) -> bytes:
            choice = CompletionChoice(index=index, text=text, finish_reason=finish_reason)
            return sse_event(
                Completion(id=completion_id, created=created, model=call.model, choices=[choice])
            )

        prompt_tokens = completion_tokens = 0
        for index, prompt_ids in enumerate(prompts):
            last = None
            try:
                async for piece in self._stream(prompt_ids, call, options):
                    if piece.text:
                        yield chunk(index, piece.text)
                    last = piece
            except GatewayError as error:
                yield sse_error(error)
                return
            if last is None:
                return
            yield chunk(index, "", last.finish_reason)
            prompt_tokens += last.prompt_tokens
            completion_tokens += last.completion_tokens

        if call.params.include_usage:
            usage = Usage.of(prompt_tokens, completion_tokens)
            yield sse_event(
                Completion(id=completion_id, created=created, model=call.model, choices=[], usage=usage)
            )
        yield SSE_DONE


def _check_chat_supported(params: ChatCompletionRequest) -> None:
    _check_n(params.n)
    if params.logprobs or params.top_logprobs:
        raise _unsupported("logprobs" if params.logprobs else "top_logprobs")
    if params.response_format and params.response_format.get("type") not in (None, "text"):
        raise _unsupported("response_format", "only the 'text' format is supported")
    if params.tool_choice not in (None, "auto", "none"):
        raise _unsupported("tool_choice", "the model cannot be made to call a tool")


def _check_completion_supported(params: CompletionRequest) -> None:
    _check_n(params.n)
    if params.best_of not in (None, 1):
        raise _unsupported("best_of")
    if params.logprobs is not None:
        raise _unsupported("logprobs")
    if params.echo:
        raise _unsupported("echo")
    if params.suffix:
        raise _unsupported("suffix")


def _check_n(n: int | None) -> None:
    if n not in (None, 1):
        raise _unsupported("n", "only one choice per prompt (n=1) is generated")


def _unsupported(param: str, detail: str = "") -> InvalidRequestError:
    return InvalidRequestError(
        f"The embedded backend does not support '{param}'{': ' + detail if detail else ''}. "
        "Remove it, or serve the model with an upstream such as vLLM.",
        param=param,
        code="unsupported_parameter",
    )


def _gateway_error(error: Exception, request_id: str) -> GatewayError:
    if isinstance(error, PromptTooLongError):
        return InvalidRequestError(f"{error}.", code="context_length_exceeded")
    if isinstance(error, GenerationFailedError):
        logger.error("request %s: %s", request_id, error)
        return GenerationError(f"{error}.")
    logger.error("request %s: generation failed unexpectedly", request_id, exc_info=error)
    return GenerationError(
        f"Generation failed unexpectedly ({type(error).__name__}). The server log has the details "
        f"under request id {request_id}."
    )


def _log_generation(call: BackendCall[Any], last: GeneratedText) -> None:
    logger.info(
        "request %s generated %d tokens with %s (finish_reason=%s)",
        call.request_id,
        last.completion_tokens,
        call.model,
        last.finish_reason,
    )


def _completion_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"
