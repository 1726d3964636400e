"""Encoding synthesised audio and writing it where ``speak`` is allowed to write."""

from __future__ import annotations

import io
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from .errors import InvalidRequestError, ServerFault
from .schema import AudioFormat

if TYPE_CHECKING:  # numpy is imported where it is used: the server starts without it
    import numpy as np

__all__ = ["MIME_TYPES", "SpeechEncoding", "encode_audio", "output_target", "write_audio"]

SpeechEncoding = AudioFormat | Literal["pcm"]
"""A file format, or ``pcm``: raw signed 16-bit little-endian mono samples, no header."""

MIME_TYPES: dict[str, str] = {
    "wav": "audio/wav",
    "flac": "audio/flac",
    "ogg": "audio/ogg",
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "pcm": "audio/pcm",
}
_SOUNDFILE_FORMATS = {
    "wav": ("WAV", "PCM_16"),
    "flac": ("FLAC", "PCM_16"),
    "ogg": ("OGG", "VORBIS"),
    "mp3": ("MP3", "MPEG_LAYER_III"),  # libsndfile >= 1.1 (soundfile's wheels bundle 1.2)
    "opus": ("OGG", "OPUS"),
}


def encode_audio(audio: np.ndarray, sample_rate: int, audio_format: SpeechEncoding) -> bytes:
    """Mono float audio as a WAV, FLAC, Ogg Vorbis, MP3 or Ogg Opus file's bytes, or as raw 16-bit PCM."""
    import numpy as np
    import soundfile

    if audio_format == "pcm":
        scaled = np.round(np.clip(audio, -1.0, 1.0) * 32767.0)
        return bytes(scaled.astype("<i2").tobytes())
    container, subtype = _SOUNDFILE_FORMATS[audio_format]
    buffer = io.BytesIO()
    soundfile.write(buffer, np.clip(audio, -1.0, 1.0), sample_rate, format=container, subtype=subtype)
    return buffer.getvalue()


def output_target(requested: str | None, output_dir: Path, audio_format: AudioFormat) -> Path | None:
    """The file a caller asked for, confined to ``output_dir``; ``None`` when none was asked for."""
    if requested is None:
        return None
    if not requested.strip():
        raise InvalidRequestError("'output_path' is empty; give a file name inside the output directory")
    if "\x00" in requested:
        raise InvalidRequestError("'output_path' contains a NUL character; give a plain file name")
    root = output_dir.expanduser().resolve()
    target = (root / Path(requested).expanduser()).resolve()
    if not target.is_relative_to(root) or target == root:
        raise InvalidRequestError(f"'output_path' must be a file inside the output directory {root}")
    if target.suffix.lower() != f".{audio_format}":
        raise InvalidRequestError(
            f"'output_path' must end in .{audio_format} for format '{audio_format}'", "output_path"
        )
    _check_writable_place(target, root)
    return target


_LONGEST_NAME = 255  # bytes of one file name on Linux filesystems


def _check_writable_place(target: Path, root: Path) -> None:
    """Refuse, before any speech is made, an ``output_path`` that is a folder, lies under a file, or
    has a name longer than a file system takes (each failed at the write, after the synthesis)."""
    shown = target.relative_to(root)
    if len(target.name.encode()) > _LONGEST_NAME:
        raise InvalidRequestError(
            f"'output_path' has a file name of {len(target.name.encode())} bytes; at most {_LONGEST_NAME}",
            "output_path",
        )
    if target.is_dir():
        raise InvalidRequestError(f"'output_path' {shown} is a folder; give a file name in it", "output_path")
    for folder in target.parents:
        if folder == root or not folder.is_relative_to(root):
            break
        if folder.exists() and not folder.is_dir():
            raise InvalidRequestError(
                f"'output_path' {shown} lies under {folder.relative_to(root)}, which is a file, not a folder",
                "output_path",
            )


def write_audio(data: bytes, target: Path | None, output_dir: Path, audio_format: AudioFormat) -> Path:
    """Write the audio to ``target`` (or a fresh name in ``output_dir``); blocking."""
    path = (
        target
        or output_dir.expanduser().resolve()
        / f"speech-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}.{audio_format}"
    )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    except OSError as exc:  # a place that changed since it was checked, a full disk, no permission
        reason = exc.strerror or type(exc).__name__
        if target is not None:
            raise InvalidRequestError(f"'output_path' could not be written: {reason}", "output_path") from exc
        raise ServerFault(f"the output directory could not be written: {reason}") from exc
    return path
