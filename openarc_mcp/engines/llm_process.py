"""A continuously batching LLM in a process of its own (see ``isolated.py`` for the why and how).

GenAI's ``ContinuousBatchingPipeline.step()`` holds Python's GIL while it computes (~10 ms per step
for SmolLM2, far more for bigger models), which would stall the server's event loop — every other
request, progress notification and ping — for as long as anything decodes. So the pipeline and its
stepping thread (``ContinuousBatcher``) live in a child process, each request waiting on a thread of
its own there, and the server keeps ``BatchedLLMEngine``: a proxy with the same ``generate`` as
every text engine.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from ..schema import ChatMessage, GenerationOptions, RuntimeValue
from .base import StopFlag, TextSink
from .batched_llm import ContinuousBatcher, SchedulerSettings
from .generation import GenerationOutput
from .isolated import ProcessEngine

__all__ = ["BatchedLLMEngine", "TextGeneratorProcess"]


class TextGeneratorProcess(ProcessEngine):
    """The server's side of an LLM engine in a child process: ``generate`` as every text engine has
    it, answered there (the child's engine sets ``token_limit``)."""

    exported: ClassVar[tuple[str, ...]] = ("token_limit",)
    token_limit: int | None

    def generate(
        self,
        prompt: str | list[ChatMessage],
        options: GenerationOptions,
        on_text: TextSink,
        stop: StopFlag,
        *,
        apply_chat_template: bool = True,
    ) -> GenerationOutput:
        """Generate a completion; blocks the calling thread while the model's process decodes."""
        output: GenerationOutput = self.call(
            "generate", prompt, options, stop=stop, on_text=on_text, apply_chat_template=apply_chat_template
        )
        return output


class BatchedLLMEngine(TextGeneratorProcess):
    """Continuous batching of ``generate`` calls on one LLM, computed in a child process."""

    live: ClassVar[tuple[str, ...]] = ("steps", "broken")

    def __init__(
        self, path: Path, device: str, properties: dict[str, RuntimeValue], settings: SchedulerSettings
    ) -> None:
        self.settings = settings
        self.concurrency = settings.max_concurrent_requests
        self.steps = 0
        """Pipeline steps run so far (as of the last answered request); each advances every running
        request by up to one token."""
        self.broken: str | None = None
        """Why the stepping loop in the child failed, once an answered call said so."""
        super().__init__(ContinuousBatcher, (path, device, properties, settings), f"llm-{path.name}")
        self.token_limit = self.attributes["token_limit"]

    def describe(self) -> dict[str, object]:
        """What a model resource shows about this engine."""
        return {
            "prompt_token_limit": self.token_limit,
            "batching": "continuous",
            "max_concurrent_requests": self.concurrency,
            "kv_cache_gb": self.settings.kv_cache_gb or "grows as needed",
            "max_batched_tokens": self.settings.max_batched_tokens,
            "prefix_caching": self.settings.prefix_caching,
            "process_id": self.process_id,
        }

    @property
    def ended(self) -> str | None:
        """Why the model can serve no more: its process ended, or its generation loop failed (the
        app then marks it failed, closes it, and loads it again on its next use)."""
        return super().ended or self.broken

    def _absorb(self, live: Mapping[str, Any]) -> None:
        self.steps = max(self.steps, int(live["steps"]))  # answers may arrive out of step order
        self.broken = self.broken or live["broken"]
