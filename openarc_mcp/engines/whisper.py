"""Speech recognition on ``openvino_genai.WhisperPipeline``: 16 kHz mono float input, any length.

Word timings come from the decoder's cross-attention on the model's alignment heads (GenAI's
``word_timestamps``): a pipeline built for them decodes a call that does not ask for words as fast,
and into the same text, as one without (measured on whisper-base-int8, 53 s of speech: 2.115 vs
2.131 s, identical text and segments), and a call that asks for words takes ~20% longer. Such a
pipeline's default generation config has them on, so each call's config sets them. On the CPU a
model whose generation config names its alignment heads is built for them unless its
``runtime_config`` says ``word_timestamps: false``; on other devices (not measured) only when it
says ``true``.
"""

from __future__ import annotations

import bisect
import logging
import unicodedata
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

from ..errors import InvalidRequestError, ModelLoadError
from ..schema import RuntimeValue
from .base import StopFlag
from .devices import require_device
from .isolated import ProcessEngine
from .options import read_config, split_options

if TYPE_CHECKING:  # numpy is imported where it is used: the server starts without it
    import numpy as np

__all__ = [
    "SAMPLE_RATE",
    "WHISPER_OPTIONS",
    "IsolatedWhisperEngine",
    "Segment",
    "Transcript",
    "WhisperEngine",
    "Word",
]

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
WHISPER_OPTIONS = ("word_timestamps",)
Task = Literal["transcribe", "translate"]


@dataclass(frozen=True)
class Segment:
    """A stretch of the transcript with its start and end in seconds."""

    start: float
    end: float
    text: str


@dataclass(frozen=True)
class Word:
    """One word of the transcript with its start and end in seconds."""

    word: str
    start: float
    end: float


_Timed = TypeVar("_Timed", "Segment", "Word")


@dataclass(frozen=True)
class Transcript:
    """What was said, in which language, and (when asked) when: by segment, by word."""

    text: str
    language: str | None
    segments: list[Segment]
    words: list[Word]


_MIN_SAMPLES = 400  # one STFT window (n_fft) at 16 kHz: GenAI refuses audio of half a window or less
SILENCE_PEAK = 10 ** (-60 / 20)
"""Audio that swings less than -60 dBFS about its middle is silence (inaudible when played; a 16-bit
sample under 33, a constant offset aside): Whisper's features are scaled to the loudest sound, so
it hears such audio as sound and makes words up ("you", on every model here); it is answered with
no words instead."""


class WhisperEngine:
    """One ``WhisperPipeline``."""

    def __init__(self, path: Path, device: str, properties: dict[str, RuntimeValue]) -> None:
        import openvino_genai

        require_device(device)
        options, ov_properties = split_options(properties, WHISPER_OPTIONS)
        chosen = _chosen_word_timestamps(options)
        self.word_timestamps = _word_timestamps(chosen, path, device)
        self._genai: Any = openvino_genai
        try:
            self._pipe: Any = self._built(path, device, ov_properties)
        except RuntimeError as exc:
            if not self.word_timestamps:
                raise
            reason = str(exc).strip().splitlines()[-1]
            if chosen:
                raise ModelLoadError(
                    f"runtime_config asks for word timestamps, which this model cannot give: {reason}"
                ) from exc
            logger.warning(
                "model %s: built without word timestamps, which it could not give (%s)", path.name, reason
            )
            self.word_timestamps = False
            self._pipe = self._built(path, device, ov_properties)
        self._tokenizer: Any = self._pipe.get_tokenizer()
        defaults = self._pipe.get_generation_config()
        self.multilingual = bool(defaults.is_multilingual)
        self.languages = (
            sorted(code.strip("<|>") for code in defaults.lang_to_id) if self.multilingual else ["en"]
        )

    def _built(self, path: Path, device: str, properties: dict[str, RuntimeValue]) -> Any:
        """The pipeline, warmed up (with word timings when built for them: a model that cannot give
        them fails here, at load, not on the first call that asks)."""
        import numpy as np

        words = {"word_timestamps": True} if self.word_timestamps else {}
        pipe = self._genai.WhisperPipeline(str(path), device, **properties, **words)
        config = pipe.get_generation_config()
        config.word_timestamps = self.word_timestamps
        pipe.generate(np.zeros(SAMPLE_RATE // 2, dtype=np.float32), config)
        return pipe

    def close(self) -> None:
        """Drop the pipeline so OpenVINO frees the compiled model."""
        self._pipe = None
        self._tokenizer = None

    def describe(self) -> dict[str, object]:
        """What a model resource shows about this engine."""
        tasks = ["transcribe", "translate"] if self.multilingual else ["transcribe"]
        return {
            "multilingual": self.multilingual,
            "languages": self.languages,
            "tasks": tasks,
            "word_timestamps": self.word_timestamps,
        }

    def transcribe(
        self,
        samples: np.ndarray,
        language: str | None,
        task: Task,
        timestamps: bool,
        prompt: str | None,
        stop: StopFlag,
        words: bool = False,
    ) -> Transcript:
        """Transcribe (or translate to English) 16 kHz mono audio of any length; ``timestamps``
        adds timed segments, ``words`` timed words."""
        import numpy as np

        config = self._config(language, task, timestamps, prompt)
        if words:
            self._check_words(task)
            config.word_timestamps = True
        duration = len(samples) / SAMPLE_RATE
        if _silent(samples):
            english = None if self.multilingual else "en"
            return Transcript(text="", language=_plain(language) or english, segments=[], words=[])
        if len(samples) < _MIN_SAMPLES:  # GenAI needs more than half a window; silence pads it
            samples = np.pad(samples, (0, _MIN_SAMPLES - len(samples)))
        # GenAI takes the float32 array as it is: no Python list (several times the memory for long audio)
        speech = np.ascontiguousarray(samples, dtype=np.float32)
        result = self._pipe.generate(speech, config, self._streamer(stop))
        segments = _segments(result.chunks or [], duration)
        timed_words = _words(result.words or [], duration) if words else []
        if segments or timed_words:
            quiet = QuietStretches.of(samples[: int(duration * SAMPLE_RATE)])
            segments, timed_words = quiet.snapped(segments), quiet.snapped(timed_words)
        detected = getattr(result, "language", None) or language
        text = str(result.texts[0]).strip()
        return Transcript(text=text, language=_plain(detected), segments=segments, words=timed_words)

    def _check_words(self, task: Task) -> None:
        if task == "translate":
            raise InvalidRequestError(
                "word timestamps are given for transcriptions only (a translation's words were not "
                "spoken); ask for segment timestamps instead",
                "word_timestamps",
            )
        if not self.word_timestamps:
            raise InvalidRequestError(
                "this Whisper model was loaded without word timestamps (its generation_config.json "
                "names no alignment heads that its decoder has, it runs on a device other than the "
                "CPU, its runtime_config turned them off, or they failed at load: the server's log "
                "says which); ask for segment timestamps instead",
                "word_timestamps",
            )

    def _config(self, language: str | None, task: Task, timestamps: bool, prompt: str | None) -> Any:
        config = self._pipe.get_generation_config()
        config.word_timestamps = False  # a pipeline built for words has them on by default: off unless asked
        if task == "translate" and not self.multilingual:
            raise InvalidRequestError(
                "this Whisper model is English-only: it cannot translate; use a multilingual one", "task"
            )
        if language is not None:
            code = _language_code(language)
            if code not in self.languages:
                raise InvalidRequestError(
                    f"language '{language}' is not one of this model's: {', '.join(self.languages)}",
                    "language",
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

    exported: ClassVar[tuple[str, ...]] = ("multilingual", "languages", "word_timestamps")

    def __init__(self, path: Path, device: str, properties: dict[str, RuntimeValue]) -> None:
        super().__init__(WhisperEngine, (path, device, properties), f"whisper-{path.name}")
        self.multilingual = bool(self.attributes["multilingual"])
        self.languages: list[str] = list(self.attributes["languages"])
        self.word_timestamps = bool(self.attributes["word_timestamps"])

    def transcribe(
        self,
        samples: np.ndarray,
        language: str | None,
        task: Task,
        timestamps: bool,
        prompt: str | None,
        stop: StopFlag,
        words: bool = False,
    ) -> Transcript:
        """``WhisperEngine.transcribe`` in the model's process."""
        transcript: Transcript = self.call(
            "transcribe", samples, language, task, timestamps, prompt, stop=stop, words=words
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


def _words(timings: list[Any], duration: float) -> list[Word]:
    """GenAI's word timings as OpenAI gives words: without the spaces and punctuation around them
    (GenAI keeps "dog," and "accurately."; a mark alone is no word), times within the audio."""
    words = []
    for timing in timings:
        text = _bare(str(timing.word))
        if not text:
            continue
        start = min(max(float(timing.start_ts), 0.0), duration)
        end = min(max(float(timing.end_ts), start), duration)
        words.append(Word(text, round(start, 3), round(end, 3)))
    return words


def _bare(word: str) -> str:
    """``word`` without the whitespace and punctuation at its ends (an inner apostrophe stays)."""
    start, end = 0, len(word)
    while start < end and _outside_word(word[start]):
        start += 1
    while end > start and _outside_word(word[end - 1]):
        end -= 1
    return word[start:end]


def _outside_word(character: str) -> bool:
    return character.isspace() or unicodedata.category(character).startswith("P")


def _chosen_word_timestamps(options: dict[str, RuntimeValue]) -> bool | None:
    """``runtime_config``'s ``word_timestamps``: true, false, or ``None`` when not given."""
    chosen = options.get("word_timestamps")
    if chosen is not None and not isinstance(chosen, bool):
        raise InvalidRequestError(
            f"runtime_config option 'word_timestamps' must be true or false, got {chosen!r}", "runtime_config"
        )
    return chosen


def _word_timestamps(chosen: bool | None, folder: Path, device: str) -> bool:
    """Whether to build the pipeline for word timings: as ``runtime_config`` chose, else on the CPU
    (where they were measured to cost plain calls nothing) whenever the model's generation config
    names alignment heads that its decoder has."""
    problem = _alignment_problem(folder)
    if chosen and problem:
        raise InvalidRequestError(f"runtime_config asks for word timestamps, but {problem}", "runtime_config")
    if chosen is None:
        return problem is None and device.upper().split(".")[0] == "CPU"
    return chosen


def _alignment_problem(folder: Path) -> str | None:
    """Why the model's alignment heads cannot give word timings; ``None`` when they can."""
    generation, model = read_config(folder / "generation_config.json"), read_config(folder / "config.json")
    heads = generation.get("alignment_heads")
    if not isinstance(heads, list) or not heads:
        return "this model's generation_config.json names no alignment_heads to read them from"
    layers, width = model.get("decoder_layers"), model.get("decoder_attention_heads")
    if not (isinstance(layers, int) and isinstance(width, int)):
        return (
            "its config.json gives no decoder_layers and decoder_attention_heads to check its "
            "alignment heads by"
        )
    for head in heads:
        if not (isinstance(head, list) and len(head) == 2 and all(_index(n) for n in head)):
            return f"its alignment head {head!r} is not a [layer, head] pair"
        if head[0] >= layers or head[1] >= width:
            return (
                f"its alignment head {head!r} lies outside its decoder ({layers} layers of {width} "
                "heads in config.json): the generation config is another model's"
            )
    return None


def _index(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


_QUIET_FRAME = SAMPLE_RATE // 100
"""Samples in one 10 ms frame of the quiet map."""
_QUIET_MIN_FRAMES = 10
"""The shortest quiet stretch that moves a time (100 ms: the closure before a 'p' or 'k' is shorter)."""


@dataclass(frozen=True)
class QuietStretches:
    """Where the audio is silent (every 10 ms frame swings less than ``SILENCE_PEAK``, as ``_silent``
    measures), for at least 100 ms: nothing can be said there.

    Whisper puts the first segment and word after a silence at the silence's start: 0.0 after a
    silent lead-in (the first subtitle would show during it), the start of its 30 s window after a
    long pause. A start in a quiet stretch moves to its end, where the sound begins; an end in one
    moves to its start. Times outside them stay as Whisper gave them.
    """

    starts: tuple[float, ...]
    ends: tuple[float, ...]

    @classmethod
    def of(cls, samples: np.ndarray) -> QuietStretches:
        """The quiet stretches of 16 kHz mono audio (a last partial frame counts as a frame)."""
        import numpy as np

        padded = np.pad(samples, (0, -len(samples) % _QUIET_FRAME), mode="edge") if len(samples) else samples
        frames = padded.reshape(-1, _QUIET_FRAME)
        quiet = (frames.max(axis=1) - frames.min(axis=1)) / 2 < SILENCE_PEAK
        edges = np.flatnonzero(np.diff(np.concatenate(([0], quiet.astype(np.int8), [0]))))
        runs = [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True)]
        long_runs = [(a, b) for a, b in runs if b - a >= _QUIET_MIN_FRAMES]
        seconds = _QUIET_FRAME / SAMPLE_RATE
        return cls(tuple(a * seconds for a, _ in long_runs), tuple(b * seconds for _, b in long_runs))

    def snapped(self, timed: list[_Timed]) -> list[_Timed]:
        """Each segment or word with its start moved out of a quiet stretch to the sound after it,
        its end to the sound before it; one wholly in a stretch stays as it was."""
        moved = []
        for item in timed:
            start, end = self._sound_from(item.start), self._sound_until(item.end)
            moved.append(replace(item, start=start, end=end) if start < end else item)
        return moved

    def _sound_from(self, time: float) -> float:
        index = bisect.bisect_right(self.starts, time) - 1  # the last stretch starting at or before
        if index >= 0 and time < self.ends[index]:
            return round(self.ends[index], 3)
        return time

    def _sound_until(self, time: float) -> float:
        index = bisect.bisect_left(self.starts, time) - 1  # the last stretch starting before
        if index >= 0 and time <= self.ends[index]:
            return round(self.starts[index], 3)
        return time


def _silent(samples: np.ndarray) -> bool:
    """Whether the audio's swing (half its peak-to-peak: a constant offset, such as a microphone's
    DC bias, is no sound) stays below ``SILENCE_PEAK``."""
    return len(samples) == 0 or float(samples.max() - samples.min()) / 2 < SILENCE_PEAK


def _language_code(language: str) -> str:
    """A language as its code: ``en`` for ``<|en|>``, ``EN`` or ``en``."""
    return language.lower().strip("<|>")


def _plain(language: str | None) -> str | None:
    return _language_code(language) if language else None
