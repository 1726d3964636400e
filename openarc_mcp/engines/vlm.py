"""Image-and-text generation on ``openvino_genai.VLMPipeline`` (LLaVA, Qwen-VL, Gemma 3, ...).

Every call goes through a ``ChatHistory``: a plain string prompt makes GenAI's VLM pipeline keep
state between calls (measured on 2026.4: later prompts grew by the earlier turns), a chat does not.
Images are placed where the chat's ``<ov_genai_image_N>`` tags say, or where the model's own
template puts them when there are no tags.

The server runs the pipeline in a process of its own (``IsolatedVLMEngine``, on ``isolated.py``):
GenAI's vision and language models run native code on images a remote caller chose, and a crash
there must end that process and fail its request, not end the server with every model it serves.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ..schema import GenerationOptions, RuntimeValue
from .base import StopFlag, TextSink
from .devices import require_device
from .generation import (
    GenerationOutput,
    check_prompt_length,
    checked_output,
    context_limit,
    generation_config,
    generation_output,
    streamer,
)
from .isolated import ProcessEngine
from .options import split_options
from .structured import SchemaChecker

if TYPE_CHECKING:  # numpy is imported where it is used: the server starts without it
    import numpy as np

__all__ = ["IsolatedVLMEngine", "VLMEngine"]

_WARM_UP_SIZE = 64  # pixels per side of the grey image the warm-up generation looks at


class VLMEngine:
    """One ``VLMPipeline``; generates for one request at a time."""

    def __init__(self, path: Path, device: str, properties: dict[str, RuntimeValue]) -> None:
        import openvino
        import openvino_genai

        require_device(device)
        self._genai: Any = openvino_genai
        self._tensor: Any = openvino.Tensor
        _, ov_properties = split_options(properties, ())  # no options of its own: a lower-case key is a typo
        self._pipe: Any = openvino_genai.VLMPipeline(str(path), device, **ov_properties)
        self._tokenizer: Any = self._pipe.get_tokenizer()
        self._schemas = SchemaChecker(self._tokenizer)
        self.token_limit = context_limit(self._tokenizer, path)  # images not counted
        self._warm_up()

    def _warm_up(self) -> None:
        """One token about a small grey image: compiles and initialises both vision and language."""
        import numpy as np

        config = self._pipe.get_generation_config()
        config.max_new_tokens = 1
        grey = np.full((_WARM_UP_SIZE, _WARM_UP_SIZE, 3), 128, dtype=np.uint8)
        history = self._genai.ChatHistory([{"role": "user", "content": "Hello"}])
        self._pipe.generate(history, images=[self._tensor(grey[None])], generation_config=config)

    def close(self) -> None:
        """Drop the pipeline so OpenVINO frees the compiled models."""
        self._pipe = None
        self._tokenizer = None
        self._schemas.close()

    def describe(self) -> dict[str, object]:
        """What a model resource shows about this engine."""
        return {"prompt_token_limit": self.token_limit}

    def generate(
        self,
        chat: list[dict[str, str]],
        images: list[np.ndarray],
        options: GenerationOptions,
        on_text: TextSink,
        stop: StopFlag,
    ) -> GenerationOutput:
        """Generate the assistant's next message for a chat about ``images`` (``[H, W, 3]`` uint8)."""
        import numpy as np

        config = generation_config(
            self._pipe.get_generation_config(), options, apply_chat_template=True, schemas=self._schemas
        )
        check_prompt_length(self._tokenizer, self.token_limit, chat, extra=" (images not counted)")
        tensors = [self._tensor(np.ascontiguousarray(image[None])) for image in images]
        history = self._genai.ChatHistory(chat)
        started = time.perf_counter()
        result = self._pipe.generate(
            history, images=tensors, generation_config=config, streamer=streamer(self._genai, on_text, stop)
        )
        output = generation_output(result, stop, (time.perf_counter() - started) * 1000)
        return checked_output(output, options)


class IsolatedVLMEngine(ProcessEngine):
    """A ``VLMEngine`` in a process of its own: a native crash on an image ends that process and
    fails its request (the model is loaded again on its next use), not the server."""

    exported: ClassVar[tuple[str, ...]] = ("token_limit",)
    stop_grace: ClassVar[float] = 900.0
    """A VLM encodes its images and reads its prompt in passes that no stop reaches (minutes for a
    big model on a CPU), as ``IsolatedLLMEngine``."""

    def __init__(self, path: Path, device: str, properties: dict[str, RuntimeValue]) -> None:
        super().__init__(VLMEngine, (path, device, properties), f"vlm-{path.name}")
        self.token_limit: int | None = self.attributes["token_limit"]

    def generate(
        self,
        chat: list[dict[str, str]],
        images: list[np.ndarray],
        options: GenerationOptions,
        on_text: TextSink,
        stop: StopFlag,
    ) -> GenerationOutput:
        """``VLMEngine.generate`` in the model's process (the images cross the pipe)."""
        output: GenerationOutput = self.call("generate", chat, images, options, stop=stop, on_text=on_text)
        return output
