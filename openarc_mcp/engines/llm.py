"""Text generation on ``openvino_genai.LLMPipeline``: OpenVINO IR folders and GGUF files."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InvalidRequestError
from ..schema import ChatMessage, FinishReason, GenerationMetrics, GenerationOptions, RuntimeValue, TokenUsage
from .base import StopFlag, TextSink

__all__ = ["GenerationOutput", "LLMEngine"]


@dataclass(frozen=True)
class GenerationOutput:
    """What one generation produced."""

    text: str
    finish_reason: FinishReason
    usage: TokenUsage
    metrics: GenerationMetrics


class LLMEngine:
    """One ``LLMPipeline``; generates for one request at a time."""

    def __init__(self, path: Path, device: str, properties: dict[str, RuntimeValue]) -> None:
        import openvino_genai

        self._genai: Any = openvino_genai
        self._pipe: Any = openvino_genai.LLMPipeline(str(path), device, **properties)
        self._tokenizer: Any = self._pipe.get_tokenizer()
        self.token_limit = self._tokenizer_limit()
        self._warm_up()

    def _tokenizer_limit(self) -> int | None:
        """The length at which the tokenizer silently cuts its input, if it does (GenAI's do)."""
        probe = 200_000
        length = int(self._tokenizer.encode("a " * probe).input_ids.shape[1])
        return length if length < probe else None

    def _warm_up(self) -> None:
        """Generate one token so that the first caller does not pay for lazy initialisation."""
        config = self._pipe.get_generation_config()
        config.max_new_tokens = 1
        self._pipe.generate(["Hello"], config)

    def close(self) -> None:
        """Drop the pipeline so OpenVINO frees the compiled model."""
        self._pipe = None
        self._tokenizer = None

    def describe(self) -> dict[str, object]:
        """What a model resource shows about this engine."""
        return {"prompt_token_limit": self.token_limit}

    def generate(
        self,
        prompt: str | list[ChatMessage],
        options: GenerationOptions,
        on_text: TextSink,
        stop: StopFlag,
        *,
        apply_chat_template: bool = True,
    ) -> GenerationOutput:
        """Generate a completion; ``prompt`` is a plain prompt or a chat (always templated)."""
        config = self._generation_config(options, apply_chat_template)
        streamer = self._streamer(on_text, stop)
        self._check_length(prompt, apply_chat_template)
        inputs = self._inputs(prompt)
        started = time.perf_counter()
        result = self._pipe.generate(inputs, config, streamer)
        elapsed_ms = (time.perf_counter() - started) * 1000
        return self._output(result, stop, elapsed_ms)

    def _check_length(self, prompt: str | list[ChatMessage], templated: bool) -> None:
        """Refuse a prompt the tokenizer would cut: the model would answer a truncated text."""
        if self.token_limit is None:
            return
        if isinstance(prompt, str) and not templated:
            text, special = prompt, True
        else:
            chat = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else _dicts(prompt)
            text, special = self._tokenizer.apply_chat_template(chat, add_generation_prompt=True), False
        length = int(self._tokenizer.encode(text, add_special_tokens=special).input_ids.shape[1])
        if length >= self.token_limit:
            raise InvalidRequestError(
                f"the prompt is too long: at least {length} tokens with the chat template, and this model "
                f"takes fewer than {self.token_limit}; shorten it or send only the relevant part"
            )

    def _inputs(self, prompt: str | list[ChatMessage]) -> Any:
        if isinstance(prompt, str):
            return [prompt]
        return self._genai.ChatHistory(_dicts(prompt))

    def _streamer(self, on_text: TextSink, stop: StopFlag) -> Any:
        running, cancel = self._genai.StreamingStatus.RUNNING, self._genai.StreamingStatus.CANCEL

        def stream(chunk: str) -> Any:
            if stop.is_set():
                return cancel
            if chunk:
                on_text(chunk)
            return running

        return stream

    def _generation_config(self, options: GenerationOptions, apply_chat_template: bool) -> Any:
        config = self._pipe.get_generation_config()  # a fresh copy of the model's own defaults
        config.max_new_tokens = options.max_tokens
        config.apply_chat_template = apply_chat_template
        _apply_sampling(config, options)
        if options.repetition_penalty is not None:
            config.repetition_penalty = options.repetition_penalty
        if options.stop:
            config.stop_strings = set(options.stop)
            config.include_stop_str_in_output = False
        try:
            config.validate()
        except Exception as exc:  # GenAI raises plain RuntimeError for bad combinations
            raise InvalidRequestError(f"invalid generation options: {exc}") from exc
        return config

    def _output(self, result: Any, stop: StopFlag, elapsed_ms: float) -> GenerationOutput:
        metrics = result.perf_metrics
        generated = int(metrics.get_num_generated_tokens())
        return GenerationOutput(
            text=str(result.texts[0]),
            finish_reason=_finish_reason(result.finish_reasons[0], stop),
            usage=TokenUsage(prompt_tokens=int(metrics.get_num_input_tokens()), completion_tokens=generated),
            metrics=GenerationMetrics(
                ttft_ms=round(float(metrics.get_ttft().mean), 3),
                tokens_per_second=round(float(metrics.get_throughput().mean), 3) if generated > 1 else 0.0,
                total_ms=round(elapsed_ms, 3),
            ),
        )


def _dicts(messages: list[ChatMessage]) -> list[dict[str, str]]:
    return [{"role": message.role, "content": message.content} for message in messages]


def _apply_sampling(config: Any, options: GenerationOptions) -> None:
    """Temperature 0 means greedy; any other sampling option given (seed too) turns sampling on."""
    if options.temperature == 0:
        config.do_sample = False
        return
    sampling = (options.temperature, options.top_p, options.top_k, options.seed)
    if any(value is not None for value in sampling):
        config.do_sample = True
    if options.temperature is not None:
        config.temperature = options.temperature
    if options.top_p is not None:
        config.top_p = options.top_p
    if options.top_k is not None:
        config.top_k = options.top_k
    if options.seed is not None:
        config.rng_seed = options.seed


def _finish_reason(reason: Any, stop: StopFlag) -> FinishReason:
    if stop.is_set():
        return "cancelled"
    return "length" if reason.name == "LENGTH" else "stop"
