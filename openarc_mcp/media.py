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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from .errors import InvalidRequestError

if TYPE_CHECKING:  # numpy is imported where it is used: the server starts without it
    import numpy as np

__all__ = ["IMAGE_FORMATS", "Audio", "check_media_size", "decode_audio", "decode_image", "read_media_bytes"]

IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF")

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


def read_media_bytes(value: str, name: str, max_bytes: int, roots: Sequence[Path] | None = None) -> bytes:
    """The bytes behind a path, a data URL or a base64 string.

    ``roots`` confines paths: ``None`` reads any file, a list only files inside those folders
    (symlinks resolved first), an empty list no file at all (the value must be the data itself).
    """
    if not value.strip():
        raise InvalidRequestError(f"'{name}' is empty; give a file path, base64 data or a data: URL")
    if value.startswith(("http://", "https://")):
        raise InvalidRequestError(
            f"'{name}' is a URL; this server is offline by design: give a local file path"
        )
    match = _DATA_URL.match(value)
    if match:
        return _b64(match.group("data"), name, max_bytes)
    if roots is not None and not roots:
        return _data_only(value, name, max_bytes)
    if "\x00" in value:
        raise InvalidRequestError(
            f"'{name}' contains a NUL character: it is no file path, base64 or data: URL"
        )
    if value.startswith("file://"):
        return _read_file(_confined(Path(unquote(urlsplit(value).path)), roots, name), name, max_bytes)
    path = Path(value).expanduser()
    if _looks_like_base64(value) and not _exists(path):
        return _b64(value, name, max_bytes)
    return _read_file(_confined(path, roots, name), name, max_bytes)


def _data_only(value: str, name: str, max_bytes: int) -> bytes:
    """Where no file may be read, the value is the data; nothing about the file system leaks."""
    if value.startswith(("file://", "/", "~", ".")) or not _looks_like_base64(value):
        raise InvalidRequestError(
            f"'{name}': file paths are not accepted by this server (over HTTP, unless it is started "
            "with --media-roots); send the data as base64 or a data: URL"
        )
    return _b64(value, name, max_bytes)


def _confined(path: Path, roots: Sequence[Path] | None, name: str) -> Path:
    """``path`` when it lies inside one of ``roots`` after resolving symlinks and '..'."""
    if roots is None:
        return path
    resolved = path.expanduser().resolve()
    if not any(resolved.is_relative_to(root) for root in roots):
        raise InvalidRequestError(
            f"'{name}': {path} is outside the folders this server reads media from (--media-roots); "
            "send the data as base64 or a data: URL instead"
        )
    return resolved


def check_media_size(data: bytes, name: str, max_bytes: int) -> bytes:
    """``data`` itself, when it is neither empty nor larger than ``max_bytes``."""
    if not data:
        raise InvalidRequestError(f"'{name}' is empty (0 bytes)")
    if len(data) > max_bytes:
        raise InvalidRequestError(f"'{name}' is {len(data)} bytes; at most {max_bytes}")
    return data


def decode_audio(data: bytes, name: str, target_rate: int, max_seconds: float) -> Audio:
    """Any format soundfile reads, mixed down to mono and resampled to ``target_rate``."""
    import soundfile

    try:
        info = soundfile.info(io.BytesIO(data))  # the length, from the header: before any decoding
        if info.frames > 0 and info.duration > max_seconds:
            raise InvalidRequestError(f"'{name}' lasts {info.duration:.0f} s; at most {max_seconds:g} s")
        samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as exc:
        raise InvalidRequestError(
            f"'{name}' is not audio soundfile can read (wav, flac, ogg, ...): {exc}"
        ) from exc
    if samples.shape[0] == 0:
        raise InvalidRequestError(f"'{name}' holds no audio samples")
    if samples.shape[0] / rate > max_seconds:  # a header that understated the length
        raise InvalidRequestError(
            f"'{name}' lasts {samples.shape[0] / rate:.0f} s; at most {max_seconds:g} s"
        )
    mono = samples.mean(axis=1)
    return Audio(samples=_resample(mono, int(rate), target_rate), sample_rate=target_rate)


def decode_image(data: bytes, name: str, max_pixels: int) -> np.ndarray:
    """PNG, JPEG, WebP or GIF (first frame) as an RGB ``[H, W, 3]`` uint8 array, upright.

    The pixel count is checked from the header, before any pixel is decoded, so an oversized image
    never takes memory. Transparency is composed onto white; EXIF orientation is applied.
    """
    import numpy as np
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            _check_image(image.format, image.size, name, max_pixels)
            image.seek(0)
            upright = ImageOps.exif_transpose(image)
            return np.asarray(_rgb(upright), dtype=np.uint8)
    except UnidentifiedImageError as exc:
        raise InvalidRequestError(
            f"'{name}' is not an image Pillow can read; give a PNG, JPEG, WebP or GIF file"
        ) from exc
    except Image.DecompressionBombError as exc:
        raise InvalidRequestError(f"'{name}' has too many pixels; at most {max_pixels}") from exc
    except (OSError, ValueError, SyntaxError) as exc:  # truncated or corrupt pixel data
        raise InvalidRequestError(f"'{name}' is a corrupt or truncated image: {exc}") from exc


def _check_image(image_format: str | None, size: tuple[int, int], name: str, max_pixels: int) -> None:
    if image_format not in IMAGE_FORMATS:
        raise InvalidRequestError(
            f"'{name}' is a {image_format or 'unknown'} image; supported: PNG, JPEG, WebP, GIF"
        )
    width, height = size
    if width * height > max_pixels:
        raise InvalidRequestError(
            f"'{name}' is {width}x{height} = {width * height} pixels; at most {max_pixels} (scale it down)"
        )
    if width < 1 or height < 1:
        raise InvalidRequestError(f"'{name}' has no pixels ({width}x{height})")


def _rgb(image: Any) -> Any:
    """RGB, with any transparency composed onto a white background."""
    from PIL import Image

    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _resample(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    import numpy as np

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
