"""Speech recognition on ``openvino_genai.WhisperPipeline``: 16 kHz mono float input, any length."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from ..errors import InvalidRequestError
from ..schema import RuntimeValue
from .base import StopFlag
from .isolated import ProcessEngine
from .options import split_options

if TYPE_CHECKING:  # numpy is imported where it is used: the server starts without it
    import numpy as np

__all__ = ["SAMPLE_RATE", "IsolatedWhisperEngine", "Segment", "Transcript", "WhisperEngine"]

SAMPLE_RATE = 16000
Task = Literal["transcribe", "translate"]


@dataclass(frozen=True)
class Segment:
    """A stretch of the transcript with its start and end in seconds."""

    start: float
    end: float
    text: str


@dataclass(frozen=True)
class Transcript:
    """What was said, in which language, and (when asked) when."""

    text: str
    language: str | None
    segments: list[Segment]


_MIN_SAMPLES = 400  # one STFT window (n_fft) at 16 kHz: GenAI refuses audio of half a window or less


class WhisperEngine:
    """One ``WhisperPipeline``."""

    def __init__(self, path: Path, device: str, properties: dict[str, RuntimeValue]) -> None:
        import numpy as np
        import openvino_genai

        _, ov_properties = split_options(properties, ())
        self._genai: Any = openvino_genai
        self._pipe: Any = openvino_genai.WhisperPipeline(str(path), device, **ov_properties)
        self._tokenizer: Any = self._pipe.get_tokenizer()
        defaults = self._pipe.get_generation_config()
        self.multilingual = bool(defaults.is_multilingual)
        self.languages = (
            sorted(code.strip("<|>") for code in defaults.lang_to_id) if self.multilingual else ["en"]
        )
        self._pipe.generate(np.zeros(SAMPLE_RATE // 2, dtype=np.float32))  # warm-up

    def close(self) -> None:
        """Drop the pipeline so OpenVINO frees the compiled model."""
        self._pipe = None
        self._tokenizer = None

    def describe(self) -> dict[str, object]:
        """What a model resource shows about this engine."""
        tasks = ["transcribe", "translate"] if self.multilingual else ["transcribe"]
        return {"multilingual": self.multilingual, "languages": self.languages, "tasks": tasks}

    def transcribe(
        self,
        samples: np.ndarray,
        language: str | None,
        task: Task,
        timestamps: bool,
        prompt: str | None,
        stop: StopFlag,
    ) -> Transcript:
        """Transcribe (or translate to English) 16 kHz mono audio of any length."""
        import numpy as np

        config = self._config(language, task, timestamps, prompt)
        duration = len(samples) / SAMPLE_RATE
        if len(samples) < _MIN_SAMPLES:  # GenAI needs more than half a window; silence pads it
            samples = np.pad(samples, (0, _MIN_SAMPLES - len(samples)))
        # GenAI takes the float32 array as it is: no Python list (several times the memory for long audio)
        speech = np.ascontiguousarray(samples, dtype=np.float32)
        result = self._pipe.generate(speech, config, self._streamer(stop))
        segments = _segments(result.chunks or [], duration)
        detected = getattr(result, "language", None) or language
        return Transcript(text=str(result.texts[0]).strip(), language=_plain(detected), segments=segments)

    def _config(self, language: str | None, task: Task, timestamps: bool, prompt: str | None) -> Any:
        config = self._pipe.get_generation_config()
        if task == "translate" and not self.multilingual:
            raise InvalidRequestError(
                "this Whisper model is English-only: it cannot translate; use a multilingual one"
            )
        if language is not None:
            code = language.lower().strip("<|>")
            if code not in self.languages:
                raise InvalidRequestError(
                    f"language '{language}' is not one of this model's: {', '.join(self.languages)}"
                )
            if self.multilingual:
                config.language = f"<|{code}|>"
        if self.multilingual:
            config.task = task
        config.return_timestamps = timestamps
        if prompt:
            config.initial_prompt = self._prompt_tail(prompt, int(config.max_length) // 2 - 1)
        return config

    def _prompt_tail(self, prompt: str, room: int) -> str:
        """The prompt's last ``room`` tokens (half the decoder's window, as OpenAI's API and
        Hugging Face keep): a longer one leaves no room for the transcript, and GenAI refuses one
        that fills the window."""
        ids = self._tokenizer.encode(prompt, add_special_tokens=False).input_ids.data[0]
        if len(ids) <= room:
            return prompt
        return str(self._tokenizer.decode([int(token) for token in ids[-room:]], skip_special_tokens=True))

    def _streamer(self, stop: StopFlag) -> Any:
        running, cancel = self._genai.StreamingStatus.RUNNING, self._genai.StreamingStatus.CANCEL

        def stream(_text: str) -> Any:
            return cancel if stop.is_set() else running

        return stream


class IsolatedWhisperEngine(ProcessEngine):
    """A ``WhisperEngine`` in a process of its own: GenAI's ``WhisperPipeline`` keeps ~7 MB of every
    load and first use after it is dropped, so in the server's process each reload would grow it."""

    exported: ClassVar[tuple[str, ...]] = ("multilingual", "languages")

    def __init__(self, path: Path, device: str, properties: dict[str, RuntimeValue]) -> None:
        super().__init__(WhisperEngine, (path, device, properties), f"whisper-{path.name}")
        self.multilingual = bool(self.attributes["multilingual"])
        self.languages: list[str] = list(self.attributes["languages"])

    def transcribe(
        self,
        samples: np.ndarray,
        language: str | None,
        task: Task,
        timestamps: bool,
        prompt: str | None,
        stop: StopFlag,
    ) -> Transcript:
        """``WhisperEngine.transcribe`` in the model's process."""
        transcript: Transcript = self.call(
            "transcribe", samples, language, task, timestamps, prompt, stop=stop
        )
        return transcript


def _segments(chunks: list[Any], duration: float) -> list[Segment]:
    """GenAI's chunks as segments: empty ones dropped (silence gives one), times within the audio
    (a chunk that never ended carries -1, and the last end can pass the audio's)."""
    segments = []
    for chunk in chunks:
        text = str(chunk.text).strip()
        if not text:
            continue
        start = min(max(float(chunk.start_ts), 0.0), duration)
        end = float(chunk.end_ts)
        end = duration if end < start else min(end, duration)
        segments.append(Segment(round(start, 3), round(end, 3), text))
    return segments


def _plain(language: str | None) -> str | None:
    return language.strip("<|>") if language else None
