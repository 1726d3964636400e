"""Decoding audio that callers send: paths, base64, data URLs; mixdown, resampling, clear errors."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
import soundfile

from openarc_mcp.errors import InvalidRequestError
from openarc_mcp.media import decode_audio, read_media_bytes

MAX_BYTES = 10_000_000


def _tone(rate: int, seconds: float, frequency: float = 440.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    wave = 0.5 * np.sin(2 * np.pi * frequency * t).astype(np.float32)
    return np.stack([wave] * channels, axis=1) if channels > 1 else wave


def _encoded(samples: np.ndarray, rate: int, audio_format: str) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format=audio_format)
    return buffer.getvalue()


def _peak_frequency(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[int(np.argmax(spectrum))])


def test_a_wav_path_is_read(tmp_path: Path) -> None:
    path = tmp_path / "tone.wav"
    soundfile.write(path, _tone(16000, 1.0), 16000)
    audio = decode_audio(read_media_bytes(str(path), "audio", MAX_BYTES), "audio", 16000, 60)
    assert audio.sample_rate == 16000 and audio.duration_s == pytest.approx(1.0)


def test_base64_and_data_url_give_the_same_samples(tmp_path: Path) -> None:
    data = _encoded(_tone(16000, 0.5), 16000, "FLAC")
    text = base64.b64encode(data).decode()
    from_base64 = decode_audio(read_media_bytes(text, "audio", MAX_BYTES), "audio", 16000, 60)
    from_url = decode_audio(
        read_media_bytes(f"data:audio/flac;base64,{text}", "audio", MAX_BYTES), "audio", 16000, 60
    )
    assert np.array_equal(from_base64.samples, from_url.samples)


def test_stereo_is_mixed_down_and_44k_resampled_to_16k() -> None:
    data = _encoded(_tone(44100, 2.0, 440.0, channels=2), 44100, "OGG")
    audio = decode_audio(data, "audio", 16000, 60)
    assert audio.samples.ndim == 1
    assert len(audio.samples) == pytest.approx(32000, abs=50)
    assert _peak_frequency(audio.samples, 16000) == pytest.approx(440.0, abs=2.0)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/no/such/file.wav", "no file at"),
        ("", "'audio' is empty"),
        ("https://example.com/a.wav", "offline by design"),
        ("data:audio/wav;base64,@@@@", "not valid base64"),
    ],
)
def test_unreadable_sources_are_clear_errors(value: str, expected: str) -> None:
    with pytest.raises(InvalidRequestError, match=expected):
        read_media_bytes(value, "audio", MAX_BYTES)


def test_a_directory_is_not_audio(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequestError, match="is a directory"):
        read_media_bytes(str(tmp_path), "audio", MAX_BYTES)


def test_garbage_bytes_are_not_audio(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequestError, match="not audio soundfile can read"):
        decode_audio(b"definitely not a sound file" * 10, "audio", 16000, 60)


def test_a_text_file_named_wav_is_not_audio(tmp_path: Path) -> None:
    path = tmp_path / "notes.wav"
    path.write_text("hello")
    with pytest.raises(InvalidRequestError, match="not audio"):
        decode_audio(read_media_bytes(str(path), "audio", MAX_BYTES), "audio", 16000, 60)


def test_empty_audio_is_refused() -> None:
    with pytest.raises(InvalidRequestError, match="no audio samples"):
        decode_audio(_encoded(np.zeros(0, dtype=np.float32), 16000, "WAV"), "audio", 16000, 60)


def test_limits_are_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequestError, match="at most 5 s"):
        decode_audio(_encoded(_tone(16000, 6.0), 16000, "WAV"), "audio", 16000, 5)
    path = tmp_path / "big.wav"
    soundfile.write(path, _tone(16000, 2.0), 16000)
    with pytest.raises(InvalidRequestError, match="at most 1000"):
        read_media_bytes(str(path), "audio", 1000)
