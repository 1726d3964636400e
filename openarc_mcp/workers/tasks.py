"""The work each tool queues on a model worker: plain functions that call one engine.

Each runs in a worker thread as ``work(engine, stop_flag, text_sink)`` (or, for coalesced
embedding batches, ``run(engine, parts, stop_flag)``) and checks that the model's engine can do it.
The engines' modules are imported by the works that use them (by then a model has loaded, so they
are imported already): the server answers its first requests without importing any engine.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

from ..audio_out import SpeechEncoding, encode_audio
from ..engines.base import StopFlag, TextSink
from ..errors import ModelTypeError
from ..schema import ChatMessage, GenerationOptions

if TYPE_CHECKING:  # each work imports its engine's module when it runs: serving starts without them
    from ..engines.embedding import EmbeddingOutput, InputType
    from ..engines.generation import GenerationOutput
    from ..engines.rerank import RerankOutput
    from ..engines.tts import Speech
    from ..engines.whisper import Transcript

__all__ = [
    "describe_engine",
    "describe_image_work",
    "embed_alone",
    "embed_many",
    "generate_work",
    "rerank_work",
    "speak_work",
    "transcribe_work",
]


def generate_work(
    chat: str | list[ChatMessage],
    options: GenerationOptions,
    engine: Any,
    stop: StopFlag,
    sink: TextSink,
    *,
    raw: bool = False,
) -> GenerationOutput:
    """Generate for a chat or a prompt; ``raw`` sends a prompt as is, without the chat template."""
    from ..engines.llm import TextGenerator

    if not isinstance(engine, TextGenerator):
        raise ModelTypeError("this model's engine cannot generate text")
    return engine.generate(chat, options, sink, stop, apply_chat_template=not raw)


def describe_image_work(
    chat: list[dict[str, str]],
    images: list[Any],
    options: GenerationOptions,
    engine: Any,
    stop: StopFlag,
    sink: TextSink,
) -> GenerationOutput:
    from ..engines.vlm import IsolatedVLMEngine, VLMEngine

    if not isinstance(engine, VLMEngine | IsolatedVLMEngine):
        raise ModelTypeError("this model's engine cannot look at images")
    return engine.generate(chat, images, options, sink, stop)


def embed_many(
    input_type: InputType, engine: Any, parts: list[Sequence[Any]], stop: StopFlag
) -> list[EmbeddingOutput]:
    """One engine call for several requests' texts; the output split back per request."""
    from ..engines.embedding import EmbeddingEngine, EmbeddingOutput

    if not isinstance(engine, EmbeddingEngine):
        raise ModelTypeError("this model's engine cannot embed text")
    output = engine.embed([text for part in parts for text in part], input_type, stop)
    results, start = [], 0
    for part in parts:
        end = start + len(part)
        results.append(EmbeddingOutput(output.vectors[start:end], output.token_counts[start:end]))
        start = end
    return results


def embed_alone(
    run_many: Callable[[Any, list[Sequence[Any]], StopFlag], list[EmbeddingOutput]],
    items: list[str],
    engine: Any,
    stop: StopFlag,
    sink: TextSink,
) -> EmbeddingOutput:
    return run_many(engine, [items], stop)[0]


def transcribe_work(
    samples: Any,
    language: str | None,
    task: Literal["transcribe", "translate"],
    timestamps: bool,
    prompt: str | None,
    words: bool,
    engine: Any,
    stop: StopFlag,
    sink: TextSink,
) -> Transcript:
    from ..engines.whisper import IsolatedWhisperEngine, WhisperEngine

    if not isinstance(engine, WhisperEngine | IsolatedWhisperEngine):
        raise ModelTypeError("this model's engine cannot transcribe")
    return engine.transcribe(samples, language, task, timestamps, prompt, stop, words=words)


def speak_work(
    text: str,
    voice: str | None,
    language: str,
    speed: float,
    audio_format: SpeechEncoding,
    engine: Any,
    stop: StopFlag,
    sink: TextSink,
) -> tuple[Speech, bytes]:
    from ..engines.tts import IsolatedTTSEngine, TTSEngine

    if not isinstance(engine, TTSEngine | IsolatedTTSEngine):
        raise ModelTypeError("this model's engine cannot speak")
    speech = engine.synthesize(text, engine.default_voice if voice is None else voice, language, speed, stop)
    return speech, encode_audio(speech.audio, speech.sample_rate, audio_format)


def rerank_work(
    query: str, documents: list[str], engine: Any, stop: StopFlag, sink: TextSink
) -> RerankOutput:
    from ..engines.rerank import RerankEngine

    if not isinstance(engine, RerankEngine):
        raise ModelTypeError("this model's engine cannot rerank")
    return engine.rerank(query, documents, stop)


def describe_engine(engine: Any) -> dict[str, object] | None:
    describe = getattr(engine, "describe", None)
    return dict(describe()) if callable(describe) else None
