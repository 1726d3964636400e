"""Text generation on ``openvino_genai.LLMPipeline``: OpenVINO IR folders and GGUF files.

The server runs every LLM in a process of its own: the continuously batching one
(``llm_process.py``), and the one-at-a-time ``LLMEngine`` here as ``IsolatedLLMEngine``, so that a
native crash (a malformed GGUF file, a fault in a device plugin) ends that process and fails its
requests, not the server with every model it serves.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, ClassVar

from ..errors import InvalidRequestError
from ..schema import ChatMessage, GenerationOptions, RuntimeValue
from .base import StopFlag, TextSink
from .batched_llm import SchedulerSettings
from .devices import require_device
from .generation import (
    GenerationOutput,
    chat_dicts,
    check_prompt_length,
    checked_output,
    context_limit,
    fit_answer,
    generation_config,
    generation_output,
    streamer,
    uses_chat_template,
)
from .llm_process import BatchedLLMEngine, TextGeneratorProcess
from .options import split_options
from .structured import SchemaChecker

__all__ = [
    "LLM_OPTIONS",
    "BatchedLLMEngine",
    "GenerationOutput",
    "IsolatedLLMEngine",
    "LLMEngine",
    "TextGenerator",
    "batching_by_default",
    "build_llm",
]

LLM_OPTIONS = ("batching", "max_concurrent_requests", "kv_cache_gb", "max_batched_tokens", "prefix_caching")


def build_llm(
    path: Path, device: str, runtime_config: dict[str, RuntimeValue]
) -> IsolatedLLMEngine | BatchedLLMEngine:
    """The LLM engine ``runtime_config`` asks for: continuous batching unless turned off or unsupported.

    Batching is the default for exported OpenVINO folders on CPU and GPU; GGUF files and other
    devices (NPU) run one request at a time unless ``batching`` is set to true.
    """
    options, properties = split_options(runtime_config, LLM_OPTIONS)
    if not _flag(options, "batching", batching_by_default(path, device)):
        if set(options) - {"batching"}:
            raise InvalidRequestError(
                f"runtime_config options {', '.join(sorted(set(options) - {'batching'}))} apply to "
                "continuous batching only; drop them or set 'batching' to true",
                "runtime_config",
            )
        return IsolatedLLMEngine(path, device, properties)
    defaults = SchedulerSettings()
    settings = SchedulerSettings(
        max_concurrent_requests=_whole(
            options, "max_concurrent_requests", defaults.max_concurrent_requests, 256
        ),
        kv_cache_gb=_whole(options, "kv_cache_gb", defaults.kv_cache_gb, 1024, low=0),
        max_batched_tokens=_whole(
            options, "max_batched_tokens", defaults.max_batched_tokens, 1 << 20, low=16
        ),
        prefix_caching=_flag(options, "prefix_caching", defaults.prefix_caching),
    )
    return BatchedLLMEngine(path, device, properties, settings)


def batching_by_default(path: Path, device: str) -> bool:
    """Whether a model at ``path`` on ``device`` batches unless told otherwise (IR folders on CPU/GPU)."""
    return path.is_dir() and device.upper().split(".")[0] in ("CPU", "GPU")


def _flag(options: dict[str, RuntimeValue], key: str, default: bool) -> bool:
    value = options.get(key, default)
    if not isinstance(value, bool):
        raise InvalidRequestError(
            f"runtime_config option '{key}' must be true or false, got {value!r}", "runtime_config"
        )
    return value


def _whole(options: dict[str, RuntimeValue], key: str, default: int, high: int, low: int = 1) -> int:
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidRequestError(
            f"runtime_config option '{key}' must be a whole number from {low} to {high}, got {value!r}",
            "runtime_config",
        )
    return value


class LLMEngine:
    """One ``LLMPipeline``; generates for one request at a time."""

    def __init__(self, path: Path, device: str, properties: dict[str, RuntimeValue]) -> None:
        import openvino_genai

        require_device(device)
        self._genai: Any = openvino_genai
        self._pipe: Any = openvino_genai.LLMPipeline(str(path), device, **properties)
        self._tokenizer: Any = self._pipe.get_tokenizer()
        self._schemas = SchemaChecker(self._tokenizer)
        self.token_limit = context_limit(self._tokenizer, path)
        self._warm_up()

    def _warm_up(self) -> None:
        """Generate one token so that the first caller does not pay for lazy initialisation."""
        config = self._pipe.get_generation_config()
        config.max_new_tokens = 1
        self._pipe.generate(["Hello"], config)

    def close(self) -> None:
        """Drop the pipeline so OpenVINO frees the compiled model."""
        self._pipe = None
        self._tokenizer = None
        self._schemas.close()

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
        """Generate a completion; ``prompt`` is a plain prompt or a chat (templated unless the caller asks
        for the raw prompt, or the model has no template: see ``uses_chat_template``)."""
        apply_chat_template = uses_chat_template(self._tokenizer, prompt, apply_chat_template)
        config = generation_config(
            self._pipe.get_generation_config(), options, apply_chat_template, self._schemas
        )
        if isinstance(prompt, str) and not apply_chat_template:
            length = check_prompt_length(self._tokenizer, self.token_limit, None, raw=prompt)
        else:
            chat = chat_dicts(prompt)
            length = check_prompt_length(self._tokenizer, self.token_limit, chat)
        fit_answer(config, length, self.token_limit)
        inputs = [prompt] if isinstance(prompt, str) else self._genai.ChatHistory(chat_dicts(prompt))
        started = time.perf_counter()
        result = self._pipe.generate(inputs, config, streamer(self._genai, on_text, stop))
        output = generation_output(result, stop, (time.perf_counter() - started) * 1000)
        return checked_output(output, options)


class IsolatedLLMEngine(TextGeneratorProcess):
    """An ``LLMEngine`` in a process of its own (one request at a time; the server's engine for
    GGUF files, NPUs and ``batching: false``)."""

    stop_grace: ClassVar[float] = 900.0
    """``LLMPipeline`` reads the whole prompt in one pass that no stop reaches: a long prompt on a big
    model on a CPU takes minutes, and a call stopped then is not stuck (an unload still ends the
    process within ``isolated._CLOSE_DEADLINE``)."""

    def __init__(self, path: Path, device: str, properties: dict[str, RuntimeValue]) -> None:
        super().__init__(LLMEngine, (path, device, properties), f"llm-{path.name}")
        self.token_limit = self.attributes["token_limit"]


TextGenerator = (LLMEngine, IsolatedLLMEngine, BatchedLLMEngine)
"""The engine classes that ``generate`` text (one request at a time, or continuously batched)."""
