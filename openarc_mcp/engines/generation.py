"""What the text-generating engines (LLM and VLM) share: options, streaming, results, limits.

Both wrap a GenAI pipeline whose ``generate`` takes a ``GenerationConfig`` and a streamer callback
and returns decoded results with ``perf_metrics``; these helpers speak that common dialect.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InvalidRequestError
from ..schema import ChatMessage, FinishReason, GenerationMetrics, GenerationOptions, TokenUsage
from .base import StopFlag, TextSink
from .options import model_positions
from .structured import SchemaChecker, check_text, prepared_schema

__all__ = [
    "GenerationOutput",
    "chat_dicts",
    "check_prompt_length",
    "checked_output",
    "context_limit",
    "fit_answer",
    "generation_config",
    "generation_output",
    "prompt_ids",
    "refuse_long_prompt",
    "streamer",
    "tokenizer_limit",
    "uses_chat_template",
]


@dataclass(frozen=True)
class GenerationOutput:
    """What one generation produced."""

    text: str
    finish_reason: FinishReason
    usage: TokenUsage
    metrics: GenerationMetrics


def chat_dicts(prompt: str | list[ChatMessage]) -> list[dict[str, str]]:
    """A chat as GenAI takes it: a plain prompt is one user message."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [{"role": message.role, "content": message.content} for message in prompt]


def uses_chat_template(tokenizer: Any, prompt: str | list[ChatMessage], apply_chat_template: bool) -> bool:
    """Whether ``prompt`` goes through the model's chat template: not when the caller asked for the
    raw prompt; a plain prompt is continued as it is when the model has no template (a base model,
    as `/v1/completions` would); a chat cannot be rendered without one and is refused."""
    if not apply_chat_template:
        return False
    if str(tokenizer.chat_template or "").strip():
        return True
    if isinstance(prompt, str):
        return False
    raise InvalidRequestError(
        "this model has no chat template, so it cannot take a chat ('messages'); send one plain "
        "'prompt' instead, which it continues as text"
    )


def tokenizer_limit(tokenizer: Any) -> int | None:
    """The length at which a GenAI tokenizer silently cuts its input, if it does (they do)."""
    probe = 200_000
    length = int(tokenizer.encode("a " * probe).input_ids.shape[1])
    return length if length < probe else None


def context_limit(tokenizer: Any, folder: Path) -> int | None:
    """The tokens a prompt and its answer may take together: the smaller of where the tokenizer
    cuts and the model's position table (past which it computes garbage), where either is known."""
    limits = [limit for limit in (tokenizer_limit(tokenizer), model_positions(folder)) if limit is not None]
    return min(limits) if limits else None


def check_prompt_length(
    tokenizer: Any, limit: int | None, chat: list[dict[str, str]] | None, raw: str = "", extra: str = ""
) -> int | None:
    """Refuse a prompt that does not fit the model's context (``context_limit``); its length in
    tokens when there is a limit to check against.

    ``chat`` is measured with the chat template applied; without one, ``raw`` is measured as is.
    """
    if limit is None:
        return None
    length = int(prompt_ids(tokenizer, chat, raw).shape[1])
    refuse_long_prompt(length, limit, chat is not None, extra)
    return length


def fit_answer(config: Any, prompt_length: int | None, limit: int | None) -> None:
    """End the answer where the context ends: ``max_new_tokens`` is cut so the prompt and answer
    fit ``limit`` (the answer then ends with finish_reason ``length``, as at ``max_tokens``)."""
    if limit is not None and prompt_length is not None and prompt_length + config.max_new_tokens > limit:
        config.max_new_tokens = max(1, limit - prompt_length)


def prompt_ids(tokenizer: Any, chat: list[dict[str, str]] | None, raw: str = "") -> Any:
    """The prompt's token ids as the pipelines build them: ``chat`` through the chat template (whose
    text carries the special tokens), else ``raw`` as is with the tokenizer's special tokens."""
    if chat is not None:
        text, special = tokenizer.apply_chat_template(chat, add_generation_prompt=True), False
    else:
        text, special = raw, True
    return tokenizer.encode(text, add_special_tokens=special).input_ids


def refuse_long_prompt(length: int, limit: int | None, templated: bool, extra: str = "") -> None:
    """Refuse a prompt of ``length`` tokens when the tokenizer cuts at ``limit`` (it reached it)."""
    if limit is not None and length >= limit:
        template = " with the chat template" if templated else ""
        raise InvalidRequestError(
            f"the prompt is too long: at least {length} tokens{template}{extra}, and this model's "
            f"context holds fewer than {limit}; shorten it or send only the relevant part"
        )


def generation_config(
    defaults: Any, options: GenerationOptions, apply_chat_template: bool, schemas: SchemaChecker
) -> Any:
    """``defaults`` (a fresh copy of the model's own settings) with the caller's options on top,
    validated; a ``json_schema`` is checked by ``schemas`` first (see ``structured.py``)."""
    config = defaults
    if options.json_schema is not None:
        config.structured_output_config = _structured_output(options, options.json_schema, schemas)
    config.max_new_tokens = options.max_tokens
    config.apply_chat_template = apply_chat_template
    _apply_sampling(config, options)
    if options.repetition_penalty is not None:
        config.repetition_penalty = options.repetition_penalty
    if options.presence_penalty is not None:
        config.presence_penalty = options.presence_penalty
    if options.frequency_penalty is not None:
        config.frequency_penalty = options.frequency_penalty
    if options.stop:
        config.stop_strings = set(options.stop)
        config.include_stop_str_in_output = False
    try:
        config.validate()
    except Exception as exc:  # GenAI raises plain RuntimeError for bad combinations
        raise InvalidRequestError(f"invalid generation options: {exc}") from exc
    return config


def _structured_output(options: GenerationOptions, schema: dict[str, Any], schemas: SchemaChecker) -> Any:
    import openvino_genai

    if options.stop:
        raise InvalidRequestError(
            "give stop strings or json_schema, not both: a stop string would cut the JSON short "
            "(the schema ends the text itself)"
        )
    text = prepared_schema(schema)
    schemas.check(text)
    return openvino_genai.StructuredOutputConfig(json_schema=text)


def checked_output(output: GenerationOutput, options: GenerationOptions) -> GenerationOutput:
    """``output``, once a text that ended by itself is known to match the caller's ``json_schema``."""
    if options.json_schema is not None and output.finish_reason == "stop":
        check_text(output.text, options.json_schema)
    return output


def streamer(genai: Any, on_text: TextSink, stop: StopFlag) -> Any:
    """A GenAI streamer callback: forwards text pieces, and cancels once ``stop`` is set."""
    running, cancel = genai.StreamingStatus.RUNNING, genai.StreamingStatus.CANCEL

    def stream(chunk: str) -> Any:
        if stop.is_set():
            return cancel
        if chunk:
            on_text(chunk)
        return running

    return stream


def generation_output(result: Any, stop: StopFlag, elapsed_ms: float) -> GenerationOutput:
    """Text, finish reason, usage and metrics of a GenAI decoded result."""
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


def _apply_sampling(config: Any, options: GenerationOptions) -> None:
    """Temperature 0 means greedy; any other sampling option given (seed too) turns sampling on.
    A sampled call without a seed gets a fresh random one, so asking again gives another answer."""
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
    elif config.do_sample:  # GenAI's seed is 0 until set: unseeded calls would all sample alike
        config.rng_seed = secrets.randbits(63)


def _finish_reason(reason: Any, stop: StopFlag) -> FinishReason:
    if stop.is_set():
        return "cancelled"
    return "length" if reason.name == "LENGTH" else "stop"
