"""Text generation with continuous batching: several requests decode together on one model.

``openvino_genai.ContinuousBatchingPipeline`` keeps a paged KV cache and advances every admitted
request by one token per ``step()``; the cost of a step grows far slower than the number of
requests in it, which is how concurrent callers turn into throughput. A ``ContinuousBatcher`` owns
one pipeline and one stepping thread; requests are submitted (tokenized and checked on the caller's
thread) and each finishes by setting its event. Text is streamed per request through GenAI's
``TextStreamer`` (the same incremental detokenizer ``LLMPipeline`` uses), stop strings are handled
by the pipeline per request, and a stopped request is cancelled at the next step. On close every
request still in the pipeline is cancelled and stepped out before the pipeline is dropped (GenAI
complains of leaked KV blocks otherwise).

``step()`` holds Python's GIL for its whole duration (GenAI's binding does not release it), so the
batcher runs in a process of its own (``llm_process.py``, ``isolated.py``), never in the server's.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import EngineFault, InvalidRequestError
from ..schema import ChatMessage, FinishReason, GenerationMetrics, GenerationOptions, RuntimeValue, TokenUsage
from .base import StopFlag, TextSink
from .devices import require_device
from .generation import (
    GenerationOutput,
    chat_dicts,
    checked_output,
    context_limit,
    fit_answer,
    generation_config,
    prompt_ids,
    refuse_long_prompt,
    uses_chat_template,
)
from .structured import SchemaChecker

__all__ = ["ContinuousBatcher", "SchedulerSettings"]

logger = logging.getLogger(__name__)
_WAIT_SLICE = 1.0  # seconds a caller waits before checking that the stepping thread still lives
_RELOAD = "the model is loaded again on its next use (with auto-load), or load it again"


@dataclass(frozen=True)
class SchedulerSettings:
    """How the continuous-batching scheduler is sized (``runtime_config`` options of an LLM)."""

    max_concurrent_requests: int = 8
    """Requests decoding together; more wait in the model's queue."""
    kv_cache_gb: int = 0
    """KV cache size in whole GB; 0 lets GenAI grow it as needed (CPU)."""
    max_batched_tokens: int = 2048
    """Prompt tokens (and decode tokens) processed in one step; a longer prompt is split."""
    prefix_caching: bool = True
    """Keep KV blocks of finished requests so a repeated prompt prefix is not computed again
    (``LLMPipeline``'s own default: a chat resends its history every turn)."""


@dataclass(eq=False)
class _Request:
    """One generate call while it is in the stepping thread's hands."""

    input_ids: Any
    config: Any
    on_text: TextSink
    stop: StopFlag
    submitted: float
    done: threading.Event = field(default_factory=threading.Event)
    handle: Any = None
    streamer: Any = None
    ids: list[int] = field(default_factory=list)
    admitted: float = 0.0  # when the stepping thread added it to the pipeline
    length_reached: bool = False
    cancelled: bool = False
    output: GenerationOutput | None = None
    error: BaseException | None = None

    def complete(self) -> None:
        """Mark the request finished (output or error set) and wake whoever waits."""
        self.done.set()


class ContinuousBatcher:
    """One ``ContinuousBatchingPipeline`` and its stepping thread; up to ``concurrency`` requests at once."""

    def __init__(
        self, path: Path, device: str, properties: dict[str, RuntimeValue], settings: SchedulerSettings
    ) -> None:
        import openvino_genai

        require_device(device)
        self._genai: Any = openvino_genai
        self.settings = settings
        self._pipe: Any = openvino_genai.ContinuousBatchingPipeline(  # properties: a mapping, not kwargs
            str(path), _scheduler_config(openvino_genai, settings), device, dict(properties)
        )
        self._tokenizer: Any = self._pipe.get_tokenizer()
        self._schemas = SchemaChecker(self._tokenizer)
        self.token_limit = context_limit(self._tokenizer, path)
        self._lock = threading.Condition()
        self._inbox: list[_Request] = []
        self._active: list[_Request] = []
        self._closing = False
        self._next_id = 0
        self.steps = 0
        """Pipeline steps run so far; each advances every running request by up to one token."""
        self.broken: str | None = None
        """Why the stepping loop failed, once it has: the model then serves no request again."""
        self._thread = threading.Thread(target=self._run, name=f"openarc-cb-{path.name}", daemon=True)
        self._thread.start()
        self._warm_up()

    def _warm_up(self) -> None:
        """Generate one token so that the first caller does not pay for lazy initialisation."""
        self.generate("Hello", GenerationOptions(max_tokens=1), lambda _: None, StopFlag())

    def close(self) -> None:
        """Cancel what still runs, end the stepping thread, drop the pipeline."""
        with self._lock:
            self._closing = True
            self._lock.notify()
        self._thread.join()
        self._pipe = None
        self._tokenizer = None
        self._schemas.close()

    def generate(
        self,
        prompt: str | list[ChatMessage],
        options: GenerationOptions,
        on_text: TextSink,
        stop: StopFlag,
        *,
        apply_chat_template: bool = True,
    ) -> GenerationOutput:
        """Generate a completion; blocks the calling thread while the stepping thread decodes."""
        request = self.submit(prompt, options, on_text, stop, apply_chat_template)
        while not request.done.wait(_WAIT_SLICE):
            if not self._thread.is_alive():
                raise EngineFault("the model's generation thread ended")
        if request.error is not None:
            raise request.error
        assert request.output is not None
        return checked_output(request.output, options)

    def submit(
        self,
        prompt: str | list[ChatMessage],
        options: GenerationOptions,
        on_text: TextSink,
        stop: StopFlag,
        apply_chat_template: bool,
    ) -> _Request:
        """Tokenize and check the prompt here, then hand the request to the stepping thread.

        Bad options or a prompt too long raise here; afterwards the request's ``done`` is set (on
        the stepping thread) once it has its output or error.
        """
        apply_chat_template = uses_chat_template(self._tokenizer, prompt, apply_chat_template)
        config = generation_config(self._pipe.get_config(), options, apply_chat_template, self._schemas)
        input_ids = self._encode(prompt, apply_chat_template)
        fit_answer(config, int(input_ids.shape[1]), self.token_limit)
        request = _Request(input_ids, config, on_text, stop, submitted=time.perf_counter())
        with self._lock:
            if self._closing:
                raise EngineFault(f"{self.broken}; {_RELOAD}" if self.broken else "the model is closing")
            self._inbox.append(request)
            self._lock.notify()
        return request

    def _encode(self, prompt: str | list[ChatMessage], apply_chat_template: bool) -> Any:
        """Token ids of the prompt as ``LLMPipeline`` would build them, checked against the limit
        (templated and encoded once: the ids checked are the ids generated from)."""
        raw = isinstance(prompt, str) and not apply_chat_template
        chat = None if raw else chat_dicts(prompt)
        input_ids = prompt_ids(self._tokenizer, chat, prompt if isinstance(prompt, str) else "")
        refuse_long_prompt(int(input_ids.shape[1]), self.token_limit, chat is not None)
        return input_ids

    # ---- the stepping thread ------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while self._next_round():
                pass
        except BaseException as exc:
            logger.exception("continuous-batching loop failed")
            self.broken = f"the model's generation loop failed ({type(exc).__name__})"
            self._fail_all(exc)

    def _next_round(self) -> bool:
        """Admit new requests, advance every request by one step, hand out text; False at the end."""
        with self._lock:
            while not self._inbox and not self._active and not self._closing:
                self._lock.wait()
            arrivals, self._inbox = self._inbox, []
            closing = self._closing
        for request in arrivals:
            self._admit(request, closing)
        for request in self._active:
            if closing or request.stop.is_set():
                self._cancel(request)
        if not self._active:
            return not closing
        # A step that raises leaves GenAI's pipeline unusable (the next add_request fails "already in
        # scheduling phase"): the exception ends the loop, every request is answered, and the model
        # is marked broken, so that its next use loads it again.
        self._pipe.step()
        self.steps += 1
        for request in list(self._active):
            self._collect(request)
        if self._active and not self._pipe.has_non_finished_requests():
            for request in self._active:  # the pipeline is done with them whatever their status says
                self._finish(request)
            self._active = []
        return True

    def _admit(self, request: _Request, closing: bool) -> None:
        if closing or request.stop.is_set():
            request.cancelled = True
            self._finish(request)
            return
        try:
            request.handle = self._pipe.add_request(self._next_id, request.input_ids, request.config)
        except Exception as exc:
            request.error = InvalidRequestError(f"the model refused the request: {exc}")
            request.complete()
            return
        self._next_id += 1
        request.admitted = time.perf_counter()
        request.streamer = self._genai.TextStreamer(self._tokenizer, _forward_to(request))
        self._active.append(request)

    def _cancel(self, request: _Request) -> None:
        if not request.cancelled:
            request.cancelled = True
            request.handle.cancel()

    def _collect(self, request: _Request) -> None:
        """Take the tokens a step produced for ``request``; finish it once the pipeline has."""
        handle = request.handle
        if handle.can_read():
            for output in handle.read().values():
                self._take_tokens(request, list(output.generated_ids))
                if output.finish_reason.name == "LENGTH":
                    request.length_reached = True
        status = handle.get_status().name
        if status != "RUNNING":
            self._active.remove(request)
            if status == "IGNORED" and not request.cancelled:  # did not fit: its output is cut short
                # (GenAI reports a request it was told to cancel as ignored too: that one is a cancel)
                request.error = InvalidRequestError(
                    f"the request did not fit the model's KV cache (kv_cache_gb="
                    f"{self.settings.kv_cache_gb}); shorten the prompt or max_tokens, or load the model "
                    "with a larger kv_cache_gb (0 lets it grow on CPU)"
                )
                request.complete()
                return
            self._finish(request)

    def _take_tokens(self, request: _Request, ids: list[int]) -> None:
        if not ids:
            return
        request.ids.extend(ids)
        if not request.cancelled:
            request.streamer.write(ids)

    def _finish(self, request: _Request) -> None:
        try:
            if request.streamer is not None and not request.cancelled:
                request.streamer.end()
            request.output = self._output(request)
        except Exception as exc:
            request.error = exc
        request.complete()

    def _output(self, request: _Request) -> GenerationOutput:
        perf = request.handle.get_perf_metrics() if request.handle is not None else None
        # tokens held back from the output by a stop string count: the model generated them
        generated = max(len(request.ids), int(perf.get_num_generated_tokens()) if perf is not None else 0)
        reason: FinishReason = "length" if request.length_reached else "stop"
        return GenerationOutput(
            text=str(self._tokenizer.decode(request.ids)) if request.ids else "",
            finish_reason="cancelled" if request.cancelled else reason,
            usage=TokenUsage(prompt_tokens=int(request.input_ids.shape[1]), completion_tokens=generated),
            metrics=_metrics(request, perf, generated),
        )

    def _fail_all(self, exc: BaseException) -> None:
        with self._lock:
            waiting, self._inbox = self._inbox, []
            self._closing = True
        for request in waiting + self._active:
            request.error = EngineFault(f"the generation loop failed: {type(exc).__name__}; {_RELOAD}")
            request.complete()
        self._active = []


def _metrics(request: _Request, perf: Any, generated: int) -> GenerationMetrics:
    """GenAI's timing of the request from its admission (its first token when the model made it, not
    when stop strings let its text out), plus the wait to be admitted."""
    waited_ms = (request.admitted - request.submitted) * 1000 if request.admitted else 0.0
    ttft = float(perf.get_ttft().mean) if perf is not None and generated else -1.0
    throughput = float(perf.get_throughput().mean) if perf is not None and generated > 1 else -1.0
    return GenerationMetrics(
        ttft_ms=round(waited_ms + ttft, 3) if ttft >= 0 else 0.0,
        tokens_per_second=round(throughput, 3) if throughput > 0 else 0.0,
        total_ms=round((time.perf_counter() - request.submitted) * 1000, 3),
    )


def _forward_to(request: _Request) -> Any:
    """A ``TextStreamer`` callback that forwards text unless the request was stopped."""

    def forward(text: str) -> None:
        if text and not request.stop.is_set():
            request.on_text(text)

    return forward


def _scheduler_config(genai: Any, settings: SchedulerSettings) -> Any:
    config = genai.SchedulerConfig()
    config.max_num_seqs = settings.max_concurrent_requests
    config.max_num_batched_tokens = settings.max_batched_tokens
    config.cache_size = settings.kv_cache_gb
    config.enable_prefix_caching = settings.prefix_caching
    config.dynamic_split_fuse = True
    return config
