"""Text generation on ``openvino_genai.LLMPipeline``: OpenVINO IR folders and GGUF files."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ..schema import ChatMessage, GenerationOptions, RuntimeValue
from .base import StopFlag, TextSink
from .generation import (
    GenerationOutput,
    check_prompt_length,
    generation_config,
    generation_output,
    streamer,
    tokenizer_limit,
)

__all__ = ["GenerationOutput", "LLMEngine"]


class LLMEngine:
    """One ``LLMPipeline``; generates for one request at a time."""

    def __init__(self, path: Path, device: str, properties: dict[str, RuntimeValue]) -> None:
        import openvino_genai

        self._genai: Any = openvino_genai
        self._pipe: Any = openvino_genai.LLMPipeline(str(path), device, **properties)
        self._tokenizer: Any = self._pipe.get_tokenizer()
        self.token_limit = tokenizer_limit(self._tokenizer)
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
        config = generation_config(self._pipe, options, apply_chat_template)
        if isinstance(prompt, str) and not apply_chat_template:
            check_prompt_length(self._tokenizer, self.token_limit, None, raw=prompt)
        else:
            chat = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else _dicts(prompt)
            check_prompt_length(self._tokenizer, self.token_limit, chat)
        inputs = [prompt] if isinstance(prompt, str) else self._genai.ChatHistory(_dicts(prompt))
        started = time.perf_counter()
        result = self._pipe.generate(inputs, config, streamer(self._genai, on_text, stop))
        return generation_output(result, stop, (time.perf_counter() - started) * 1000)


def _dicts(messages: list[ChatMessage]) -> list[dict[str, str]]:
    return [{"role": message.role, "content": message.content} for message in messages]
