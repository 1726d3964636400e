"""Speech synthesis on ``openvino_genai.Text2SpeechPipeline`` with its Kokoro backend.

The model folder holds ``openvino_model.xml``, a ``config.json`` with the phoneme ``vocab``, the
English lexicons under ``data/`` and one ``voices/NAME.npy`` style tensor per voice. Text is
synthesised in sentence-sized chunks (none of it is dropped, newlines included), so a cancelled or
unloaded request stops between chunks.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import InvalidRequestError, ModelLoadError
from ..schema import RuntimeValue
from .base import StopFlag
from .devices import require_device
from .isolated import ProcessEngine
from .options import split_options

if TYPE_CHECKING:  # numpy is imported where it is used: the server starts without it
    import numpy as np

__all__ = ["LANGUAGES", "IsolatedTTSEngine", "Speech", "TTSEngine", "speech_chunks", "split_sentences"]

LANGUAGES = ("en-us", "en-gb")
_CHUNK_CHARS = 400
"""The longest piece synthesised in one call: a longer sentence is cut at spaces (Kokoro takes at
most ~500 phonemes a call)."""
_PACK_CHARS = 160
"""Sentences are packed into one call up to this many characters (short ones keep their natural
pauses; a cancel or unload waits for at most the call under way: about a sentence)."""
_SENTENCE_END = re.compile(r"(?<=[.!?;:。！？])\s+|\n+")


@dataclass(frozen=True)
class Speech:
    """Synthesised mono audio."""

    audio: np.ndarray
    sample_rate: int
    voice: str

    @property
    def duration_s(self) -> float:
        """Length of the audio in seconds."""
        return len(self.audio) / self.sample_rate


class TTSEngine:
    """One Kokoro ``Text2SpeechPipeline`` and the voices of its folder."""

    def __init__(self, path: Path, device: str, properties: dict[str, RuntimeValue]) -> None:
        import openvino
        import openvino_genai

        require_device(device)
        _, ov_properties = split_options(properties, ())
        if "CACHE_DIR" not in ov_properties and os.access(path, os.W_OK):
            ov_properties["CACHE_DIR"] = str(path / "compile-cache")  # reloads in ~2 s instead of ~6 s
        self._openvino: Any = openvino
        self.voices = _load_voices(path / "voices")
        self.default_voice = sorted(self.voices)[0]
        self._pipe: Any = openvino_genai.Text2SpeechPipeline(str(path), device, **ov_properties)
        self.sample_rate = self.synthesize("Hello.", self.default_voice, "en-us", 1.0, StopFlag()).sample_rate
        self.espeak = _espeak_installed()

    def close(self) -> None:
        """Drop the pipeline so OpenVINO frees the compiled model."""
        self._pipe = None

    def describe(self) -> dict[str, object]:
        """What a model resource shows about this engine."""
        return {
            "voices": sorted(self.voices),
            "default_voice": self.default_voice,
            "languages": list(LANGUAGES),
            "sample_rate": self.sample_rate,
            "out_of_vocabulary_words": "spoken via espeak-ng"
            if self.espeak
            else "DROPPED: install espeak-ng",
        }

    def synthesize(self, text: str, voice: str, language: str, speed: float, stop: StopFlag) -> Speech:
        """All of ``text`` as speech; stops between sentence chunks when ``stop`` is set."""
        import numpy as np

        style = self._voice(voice)
        if language not in LANGUAGES:
            raise InvalidRequestError(
                f"language '{language}' is not supported; use one of {', '.join(LANGUAGES)}", "language"
            )
        pieces, rate = [], 24000
        for chunk in speech_chunks(text):
            if stop.is_set():
                break
            result = self._pipe.generate(chunk, style, language=language, speed=speed)
            pieces.append(np.asarray(result.speeches[0].data, dtype=np.float32).reshape(-1))
            rate = int(result.output_sample_rate)
        joined = _joined_pieces(pieces, rate)
        audio = np.concatenate(joined) if joined else np.zeros(0, dtype=np.float32)
        if audio.size == 0 and not stop.is_set():  # emoji or symbols alone: no file can hold nothing
            raise InvalidRequestError("nothing in the text could be spoken (no audio came of it); give words")
        return Speech(audio=audio, sample_rate=rate, voice=voice)

    def _voice(self, voice: str) -> Any:
        if voice not in self.voices:
            raise InvalidRequestError(
                f"unknown voice '{voice}'; this model has: {', '.join(sorted(self.voices))}", "voice"
            )
        return self._openvino.Tensor(self.voices[voice])


class IsolatedTTSEngine(ProcessEngine):
    """A ``TTSEngine`` in a process of its own, so that unloading returns all it took."""

    exported: ClassVar[tuple[str, ...]] = ("default_voice",)

    def __init__(self, path: Path, device: str, properties: dict[str, RuntimeValue]) -> None:
        super().__init__(TTSEngine, (path, device, properties), f"tts-{path.name}")
        self.default_voice = str(self.attributes["default_voice"])

    def synthesize(self, text: str, voice: str, language: str, speed: float, stop: StopFlag) -> Speech:
        """``TTSEngine.synthesize`` in the model's process."""
        speech: Speech = self.call("synthesize", text, voice, language, speed, stop=stop)
        return speech


_QUIET = 1e-3
"""A sample below this (-60 dBFS) is silence, for the pauses between pieces."""
_KEPT_LEAD_S, _KEPT_TAIL_S = 0.1, 0.3
"""The silence kept before and after a piece where it meets another: Kokoro pads every call with
~0.27 s before and ~0.7 s after, a pause of ~1 s at each joint (a sentence's own is ~0.4 s)."""


def _joined_pieces(pieces: list[np.ndarray], rate: int) -> list[np.ndarray]:
    """The pieces with the silence where they meet cut to a sentence's pause (the first piece's
    start and the last one's end stay as spoken; a piece of nothing but silence is left out)."""
    import numpy as np

    joined = []
    for index, piece in enumerate(pieces):
        sound = np.flatnonzero(np.abs(piece) >= _QUIET)
        if sound.size == 0:
            continue  # nothing but silence: no pause of its own
        start = 0 if index == 0 else max(0, int(sound[0]) - int(_KEPT_LEAD_S * rate))
        end = len(piece) if index == len(pieces) - 1 else int(sound[-1]) + 1 + int(_KEPT_TAIL_S * rate)
        joined.append(piece[start:end])
    return joined


def speech_chunks(text: str) -> list[str]:
    """The pieces ``TTSEngine.synthesize`` speaks one call each, in order."""
    return split_sentences(text, _CHUNK_CHARS, _PACK_CHARS)


def split_sentences(text: str, max_chars: int, pack_chars: int | None = None) -> list[str]:
    """Sentence-sized chunks of at most ``max_chars`` (longer sentences are cut at spaces); sentences
    are packed together up to ``pack_chars`` (default ``max_chars``)."""
    pack = max_chars if pack_chars is None else min(pack_chars, max_chars)
    chunks: list[str] = []
    current = ""
    for sentence in (s.strip() for s in _SENTENCE_END.split(text)):
        for part in _cut(sentence, max_chars):
            if current and len(current) + 1 + len(part) > pack:
                chunks.append(current)
                current = part
            else:
                current = f"{current} {part}".strip()
    if current:
        chunks.append(current)
    return chunks


def _cut(sentence: str, max_chars: int) -> list[str]:
    parts: list[str] = []
    while len(sentence) > max_chars:
        cut = sentence.rfind(" ", 0, max_chars)
        cut = cut if cut > 0 else max_chars
        parts.append(sentence[:cut].strip())
        sentence = sentence[cut:].strip()
    return [*parts, sentence] if sentence else parts


def _espeak_installed() -> bool:
    """Whether espeak-ng's library is on this machine (Kokoro's fallback for words it does not know)."""
    import ctypes.util  # here, not at import: serving starts without ctypes

    return ctypes.util.find_library("espeak-ng") is not None


def _load_voices(folder: Path) -> dict[str, np.ndarray]:
    import numpy as np

    voices = {file.stem: np.load(file).astype(np.float32) for file in sorted(folder.glob("*.npy"))}
    if not voices:
        raise ModelLoadError(f"{folder} has no voices: a Kokoro folder needs voices/NAME.npy style tensors")
    return voices
