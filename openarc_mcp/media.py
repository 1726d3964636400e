"""Decoding media that callers send: a file path (preferred), base64, or a ``data:`` URL.

Agents cannot type megabytes of base64, so paths come first. Every problem is a clear
``InvalidRequestError``: missing files, directories, corrupt or empty data, unsupported formats,
limits exceeded. Decoding is blocking: call it from a thread.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InvalidRequestError

__all__ = ["Audio", "decode_audio", "read_media_bytes"]

_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?:;[\w=.+-]+)*;base64,(?P<data>.*)$", re.DOTALL)
_BASE64 = re.compile(r"^[A-Za-z0-9+/\s]+={0,2}\s*$")


@dataclass(frozen=True)
class Audio:
    """Mono float32 samples at ``sample_rate``, and how long they last."""

    samples: np.ndarray
    sample_rate: int

    @property
    def duration_s(self) -> float:
        """Length in seconds."""
        return len(self.samples) / self.sample_rate


def read_media_bytes(value: str, name: str, max_bytes: int) -> bytes:
    """The bytes behind a path, a data URL or a base64 string."""
    if not value.strip():
        raise InvalidRequestError(f"'{name}' is empty; give a file path, base64 data or a data: URL")
    if value.startswith(("http://", "https://")):
        raise InvalidRequestError(
            f"'{name}' is a URL; this server is offline by design: give a local file path"
        )
    match = _DATA_URL.match(value)
    if match:
        return _b64(match.group("data"), name, max_bytes)
    path = Path(value).expanduser()
    if _looks_like_base64(value) and not _exists(path):
        return _b64(value, name, max_bytes)
    return _read_file(path, name, max_bytes)


def decode_audio(data: bytes, name: str, target_rate: int, max_seconds: float) -> Audio:
    """Any format soundfile reads, mixed down to mono and resampled to ``target_rate``."""
    import soundfile

    try:
        samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as exc:
        raise InvalidRequestError(
            f"'{name}' is not audio soundfile can read (wav, flac, ogg, ...): {exc}"
        ) from exc
    if samples.shape[0] == 0:
        raise InvalidRequestError(f"'{name}' holds no audio samples")
    if samples.shape[0] / rate > max_seconds:
        raise InvalidRequestError(
            f"'{name}' lasts {samples.shape[0] / rate:.0f} s; at most {max_seconds:g} s"
        )
    mono = samples.mean(axis=1)
    return Audio(samples=_resample(mono, int(rate), target_rate), sample_rate=target_rate)


def _resample(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    if rate == target:
        return np.ascontiguousarray(samples, dtype=np.float32)
    import soxr

    return np.asarray(soxr.resample(samples, rate, target, quality="HQ"), dtype=np.float32)


def _looks_like_base64(value: str) -> bool:
    """Long, only base64's alphabet, and not shaped like a path (no leading slash, no dot)."""
    return len(value) >= 16 and not value.startswith(("/", "~")) and _BASE64.match(value[:4096]) is not None


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except (OSError, ValueError):  # a name too long for the file system is no file
        return False


def _b64(text: str, name: str, max_bytes: int) -> bytes:
    if len(text) * 3 // 4 > max_bytes:
        raise InvalidRequestError(f"'{name}' is larger than {max_bytes} bytes; give a file path instead")
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequestError(f"'{name}' is not valid base64: {exc}") from exc


def _read_file(path: Path, name: str, max_bytes: int) -> bytes:
    try:
        if path.is_dir():
            raise InvalidRequestError(f"'{name}': {path} is a directory, not a file")
        size = path.stat().st_size
    except FileNotFoundError as exc:
        raise InvalidRequestError(f"'{name}': no file at {path}") from exc
    except OSError as exc:
        raise InvalidRequestError(f"'{name}': cannot read {path}: {exc.strerror}") from exc
    if size > max_bytes:
        raise InvalidRequestError(f"'{name}': {path} is {size} bytes; at most {max_bytes}")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidRequestError(f"'{name}': cannot read {path}: {exc.strerror}") from exc
