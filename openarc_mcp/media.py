"""Decoding media that callers send: a file path (preferred), base64, or a ``data:`` URL.

Agents cannot type megabytes of base64, so paths come first. Every problem is a clear
``InvalidRequestError``: missing files, directories, corrupt or empty data, unsupported formats,
limits exceeded. Decoding is blocking: call it from a thread.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from .errors import InvalidRequestError

if TYPE_CHECKING:  # numpy is imported where it is used: the server starts without it
    import numpy as np

__all__ = ["IMAGE_FORMATS", "Audio", "check_media_size", "decode_audio", "decode_image", "read_media_bytes"]

IMAGE_FORMATS = ("PNG", "JPEG", "MPO", "WEBP", "GIF")  # MPO: a JPEG with more pictures (phone cameras)
_MAX_ASPECT = 100  # longest side over shortest: beyond it a vision model's resize takes huge memory

_DATA_URL = re.compile(
    r"^(?i:data):(?P<mime>[\w.+-]+/[\w.+-]+)?(?:;[\w=.+-]+)*;(?i:base64),(?P<data>.*)$", re.DOTALL
)
_BASE64 = re.compile(r"^[A-Za-z0-9+/_\s-]+={0,2}\s*$")
"""Base64's characters, in the standard alphabet (``+/``) or the URL-safe one (``-_``), padded or
not (a mix of the two alphabets is refused when decoded, saying so)."""


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
    """The bytes behind a path, a data URL or a base64 string; never none.

    ``roots`` confines paths: ``None`` reads any file, a list only files inside those folders
    (symlinks resolved first), an empty list no file at all (the value must be the data itself).
    """
    data = _media_bytes(value, name, max_bytes, roots)
    if not data:
        raise InvalidRequestError(f"'{name}' is empty (0 bytes)", name)
    return data


def _media_bytes(value: str, name: str, max_bytes: int, roots: Sequence[Path] | None) -> bytes:
    if not value.strip():
        raise InvalidRequestError(f"'{name}' is empty; give a file path, base64 data or a data: URL", name)
    if value.startswith(("http://", "https://")):
        data_only = roots is not None and not roots  # over HTTP without --media-roots
        instead = "send the data as base64 or a data: URL" if data_only else "give a local file path"
        raise InvalidRequestError(f"'{name}' is a URL; this server is offline by design: {instead}", name)
    match = _DATA_URL.match(value)
    if match:
        return _b64(match.group("data"), name, max_bytes)
    if value[:5].lower() == "data:":
        raise InvalidRequestError(
            f"'{name}' is a data: URL without base64; send data:<type>;base64,<base64 data>", name
        )
    if roots is not None and not roots:
        return _data_only(value, name, max_bytes)
    if "\x00" in value:
        raise InvalidRequestError(
            f"'{name}' contains a NUL character: it is no file path, base64 or data: URL", name
        )
    if value.startswith("file://"):
        return _read_file(_confined(Path(unquote(urlsplit(value).path)), roots, name), name, max_bytes)
    path = Path(value).expanduser()
    if _looks_like_base64(value) and not _exists(path):
        return _b64(value, name, max_bytes, could_be=path)
    return _read_file(_confined(path, roots, name), name, max_bytes)


def _data_only(value: str, name: str, max_bytes: int) -> bytes:
    """Where no file may be read, the value is the data; nothing about the file system leaks."""
    if value.startswith(("file://", "~", ".")) or not _looks_like_base64(value):
        raise InvalidRequestError(
            f"'{name}': file paths are not accepted by this server (over HTTP, unless it is started "
            "with --media-roots); send the data as base64 or a data: URL",
            name,
        )
    return _b64(value, name, max_bytes)


def _confined(path: Path, roots: Sequence[Path] | None, name: str) -> Path:
    """``path`` when it lies inside one of ``roots`` after resolving symlinks and '..'."""
    if roots is None:
        return path
    resolved = path.expanduser().resolve()
    if not any(resolved.is_relative_to(root) for root in roots):
        raise InvalidRequestError(
            f"'{name}': {_shown(path)} is outside the folders this server reads media from (--media-roots); "
            "send the data as base64 or a data: URL instead",
            name,
        )
    return resolved


def check_media_size(data: bytes, name: str, max_bytes: int) -> bytes:
    """``data`` itself, when it is neither empty nor larger than ``max_bytes``."""
    if not data:
        raise InvalidRequestError(f"'{name}' is empty (0 bytes)", name)
    if len(data) > max_bytes:
        raise InvalidRequestError(f"'{name}' is {len(data)} bytes; at most {max_bytes}", name)
    return data


def decode_audio(data: bytes, name: str, target_rate: int, max_seconds: float) -> Audio:
    """Any format soundfile reads, mixed down to mono and resampled to ``target_rate``.

    Decoded block by block, each block mixed down and resampled before the next is read, so memory
    follows the audio actually decoded at ``target_rate``, never a header's claim: a small file
    whose header promises hours of many channels is refused once its samples pass ``max_seconds``,
    and never sizes a buffer.
    """
    import numpy as np
    import soundfile

    try:
        with soundfile.SoundFile(io.BytesIO(data)) as source:
            if source.frames > 0 and source.frames / source.samplerate > max_seconds:
                raise InvalidRequestError(
                    f"'{name}' lasts {source.frames / source.samplerate:.6g} s; at most {max_seconds:g} s",
                    name,
                )
            samples = _mono_blocks(source, name, target_rate, max_seconds)
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as exc:
        reason = getattr(exc, "error_string", None) or str(exc)  # libsndfile's own words, no object repr
        raise InvalidRequestError(
            f"'{name}' is not audio soundfile can read (wav, flac, ogg, ...): {reason}", name
        ) from exc
    if samples.shape[0] == 0:
        raise InvalidRequestError(f"'{name}' holds no audio samples", name)
    if not np.isfinite(samples).all():  # float audio can hold them; the model would hear noise
        raise InvalidRequestError(f"'{name}' holds samples that are not numbers (NaN or infinite)", name)
    return Audio(samples=samples, sample_rate=target_rate)


_AUDIO_BLOCK_FRAMES = 1 << 16


def _mono_blocks(source: Any, name: str, target_rate: int, max_seconds: float) -> np.ndarray:
    """``source`` read to its end in blocks, as mono float32 at ``target_rate``."""
    import numpy as np

    rate = int(source.samplerate)
    resampler = None
    if rate != target_rate:
        import soxr

        resampler = soxr.ResampleStream(rate, target_rate, 1, dtype="float32", quality="HQ")
    pieces: list[np.ndarray] = []
    frames = 0
    mixdown = _Mixdown()
    while True:
        block = source.read(_AUDIO_BLOCK_FRAMES, dtype="float32", always_2d=True)
        if block.shape[0] == 0:
            break
        frames += block.shape[0]
        if frames > max_seconds * rate:  # a header that understated the length, or none
            raise InvalidRequestError(f"'{name}' lasts more than the {max_seconds:g} s allowed", name)
        mono = mixdown(block)  # float32, as read
        pieces.append(mono if resampler is None else resampler.resample_chunk(mono))
    if resampler is not None and frames:
        pieces.append(resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True))
    return np.concatenate(pieces) if pieces else np.zeros(0, np.float32)


_SOUND_PEAK = 1e-3  # -60 dBFS: a block below it is silence, which says nothing of polarity
_RELATED = 0.5  # a correlation this strong, either way, settles a channel's polarity


class _Mixdown:
    """Channels averaged into one, each with its polarity matched to the loudest channel's first.
    A channel recorded inverted (a microphone wired backwards, a stereo widening effect) would
    otherwise cancel the others: antiphase stereo mixes down to near silence. A channel's polarity
    is settled by the first block where it is clearly related to the loudest one (silence and
    unrelated noise settle nothing) and then kept, so the mix does not change back and forth."""

    def __init__(self) -> None:
        self._signs: np.ndarray | None = None
        self._settled: np.ndarray | None = None

    def __call__(self, block: np.ndarray) -> np.ndarray:
        """``block`` (frames x channels, float32) as mono float32."""
        import numpy as np

        if block.shape[1] == 1:
            return block[:, 0]
        if self._signs is None or self._settled is None:
            self._signs = np.ones(block.shape[1], dtype=np.float32)
            self._settled = np.zeros(block.shape[1], dtype=bool)
        if not self._settled.all() and float(abs(block).max()) >= _SOUND_PEAK:
            self._settle(block, self._signs, self._settled)
        aligned = block if (self._signs > 0).all() else block * self._signs
        mono: np.ndarray = aligned.mean(axis=1)
        return mono

    @staticmethod
    def _settle(block: np.ndarray, signs: np.ndarray, settled: np.ndarray) -> None:
        """Settle the polarities of the channels clearly related to the block's loudest one, each
        relative to it (an unrelated channel, or a loudest one related to none, stays unsettled)."""
        import numpy as np

        channels = block.astype(np.float64).T
        reference = int(np.argmax((channels**2).sum(axis=1)))
        norms = np.linalg.norm(channels, axis=1)
        for index, channel in enumerate(channels):
            scale = float(norms[index] * norms[reference])
            correlation = float(channel @ channels[reference]) / scale if scale > 0 else 0.0
            if index == reference or abs(correlation) < _RELATED or (settled[index] and settled[reference]):
                continue
            relative = 1.0 if correlation > 0 else -1.0
            if settled[index]:  # the reference takes its polarity from a channel settled before
                signs[reference] = signs[index] * relative
            else:
                signs[index] = signs[reference] * relative
            settled[index] = settled[reference] = True


def decode_image(data: bytes, name: str, max_pixels: int) -> np.ndarray:
    """PNG, JPEG, WebP or GIF (first frame) as an RGB ``[H, W, 3]`` uint8 array, upright.

    The pixel count is checked from the header, before any pixel is decoded, so an oversized image
    never takes memory. Transparency is composed onto white; EXIF orientation is applied.
    """
    import numpy as np
    from PIL import Image, ImageOps, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = None  # the header is checked against max_pixels here, before decoding
    try:
        with Image.open(io.BytesIO(data)) as image:
            _check_image(image.format, image.size, name, max_pixels)
            image.seek(0)
            upright = ImageOps.exif_transpose(image)
            return np.asarray(_rgb(upright), dtype=np.uint8)
    except UnidentifiedImageError as exc:
        raise InvalidRequestError(
            f"'{name}' is not an image Pillow can read; give a PNG, JPEG, WebP or GIF file", name
        ) from exc
    except Image.DecompressionBombError as exc:
        raise InvalidRequestError(f"'{name}' has too many pixels; at most {max_pixels}", name) from exc
    except (OSError, ValueError, SyntaxError) as exc:  # truncated or corrupt pixel data
        raise InvalidRequestError(f"'{name}' is a corrupt or truncated image: {exc}", name) from exc


def _check_image(image_format: str | None, size: tuple[int, int], name: str, max_pixels: int) -> None:
    if image_format not in IMAGE_FORMATS:
        raise InvalidRequestError(
            f"'{name}' is a {image_format or 'unknown'} image; supported: PNG, JPEG, WebP, GIF", name
        )
    width, height = size
    if width * height > max_pixels:
        raise InvalidRequestError(
            f"'{name}' is {width}x{height} = {width * height} pixels; at most {max_pixels} (scale it down)",
            name,
        )
    if width < 1 or height < 1:
        raise InvalidRequestError(f"'{name}' has no pixels ({width}x{height})", name)
    if max(width, height) > _MAX_ASPECT * min(width, height):
        raise InvalidRequestError(
            f"'{name}' is {width}x{height}: one side more than {_MAX_ASPECT} times the other; crop or pad it",
            name,
        )


def _rgb(image: Any) -> Any:
    """RGB, with any transparency (an alpha channel, or a PNG's transparent colour) composed onto
    a white background, and 16-bit grey scaled to 8 bits (Pillow's own conversion clips it)."""
    import numpy as np
    from PIL import Image

    if image.mode.startswith("I;16") or image.mode == "I":
        image = Image.fromarray((np.asarray(image).astype(np.uint32) >> 8).clip(0, 255).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


_SLASHED_BASE64 = ("/9j/", "//")
"""How base64 of a JPEG (FF D8 FF) or of an MP3 frame without a tag (FF Fx) begins: a leading slash
that is data, not a path."""
_LONGEST_PATH = 1024  # base64 alphabet longer than this is data, leading slash or not
_SHORTEST_URL_SAFE = 64
"""Shorter URL-safe base64 is taken for a file name (``my-notes_2``): no image or sound file is that
small (a 1x1 PNG is 92 characters of base64)."""


def _looks_like_base64(value: str) -> bool:
    """Long, only base64's alphabet (no dot), and not shaped like a path: a leading slash only as
    JPEG or MP3 data begins, or in a value longer than any path; with ``-`` or ``_`` (the URL-safe
    alphabet, also common in file names) longer than any media file's base64 could be short."""
    if len(value) < 16 or value.startswith("~") or _BASE64.match(value[:4096]) is None:
        return False
    if len(value) < _SHORTEST_URL_SAFE and ("-" in value or "_" in value):
        return False
    return not value.startswith("/") or value.startswith(_SLASHED_BASE64) or len(value) > _LONGEST_PATH


def _shown(path: Path) -> str:
    """``path`` for an error message, cut short: a long value that was meant as data is not echoed."""
    text = str(path)
    return text if len(text) <= 200 else f"{text[:200]}... ({len(text)} characters)"


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except (OSError, ValueError):  # a name too long for the file system is no file
        return False


def _b64(text: str, name: str, max_bytes: int, could_be: Path | None = None) -> bytes:
    """The bytes of base64 ``text`` in either alphabet (standard or URL-safe), its padding optional;
    ``could_be``: the file the text would name, for an error message when it is neither."""
    if len(text) * 3 // 4 > max_bytes:
        raise InvalidRequestError(
            f"'{name}' is larger than {max_bytes} bytes; give a file path instead", name
        )
    try:
        return _decoded_base64("".join(text.split()))
    except (binascii.Error, ValueError) as exc:
        if could_be is not None and len(text) <= _LONGEST_PATH:
            raise InvalidRequestError(
                f"'{name}': no file at {_shown(could_be)}, and not valid base64 either ({exc})", name
            ) from exc
        raise InvalidRequestError(f"'{name}' is not valid base64: {exc}", name) from exc


def _decoded_base64(compact: str) -> bytes:
    """``compact`` (no whitespace) decoded: the standard alphabet or the URL-safe one, not a mix of
    both; missing padding is added, as the URL-safe form often leaves it out."""
    url_safe = "-" in compact or "_" in compact
    if url_safe and ("+" in compact or "/" in compact):
        raise ValueError("it mixes the standard alphabet (+ /) with the URL-safe one (- _)")
    body = compact.rstrip("=")
    if len(body) % 4 == 1:
        raise ValueError(f"{len(body)} characters of data cannot be base64 (one too many or too few)")
    padded = body + "=" * (-len(body) % 4)
    return base64.b64decode(padded, altchars=b"-_" if url_safe else None, validate=True)


def _read_file(path: Path, name: str, max_bytes: int) -> bytes:
    """A regular file's bytes, at most ``max_bytes``. Anything else (a pipe, a device, a socket,
    ``/proc/self/fd/N``) is refused before a byte is read: such a file has no size to check, a read
    may never end, and over stdio one of them is the server's own protocol wire."""
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO opens at once
    except FileNotFoundError as exc:
        raise InvalidRequestError(f"'{name}': no file at {_shown(path)}", name) from exc
    except IsADirectoryError as exc:
        raise InvalidRequestError(f"'{name}': {_shown(path)} is a directory, not a file", name) from exc
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise InvalidRequestError(f"'{name}': cannot read {_shown(path)}: {reason}", name) from exc
    try:
        _check_regular(os.fstat(descriptor), path, name, max_bytes)
        with os.fdopen(descriptor, "rb", closefd=False) as file:
            data = file.read(max_bytes + 1)  # a file that grew since: still bounded
    except OSError as exc:
        raise InvalidRequestError(f"'{name}': cannot read {path}: {exc.strerror}", name) from exc
    finally:
        os.close(descriptor)
    if len(data) > max_bytes:
        raise InvalidRequestError(f"'{name}': {path} is more than {max_bytes} bytes", name)
    return data


def _check_regular(status: os.stat_result, path: Path, name: str, max_bytes: int) -> None:
    if stat.S_ISDIR(status.st_mode):
        raise InvalidRequestError(f"'{name}': {path} is a directory, not a file", name)
    if not stat.S_ISREG(status.st_mode):
        raise InvalidRequestError(
            f"'{name}': {path} is not a regular file (a pipe, device or socket); give a file, "
            "or send the data as base64 or a data: URL",
            name,
        )
    if status.st_size > max_bytes:
        raise InvalidRequestError(f"'{name}': {path} is {status.st_size} bytes; at most {max_bytes}", name)
