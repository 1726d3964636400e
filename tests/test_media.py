"""Decoding audio that callers send: paths, base64, data URLs; mixdown, resampling, clear errors."""

from __future__ import annotations

import base64
import io
import os
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile

from openarc_mcp.errors import InvalidRequestError
from openarc_mcp.media import _mono_blocks, decode_audio, decode_image, read_media_bytes

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


def test_a_channel_recorded_inverted_does_not_cancel_the_mixdown() -> None:
    """Antiphase stereo (one channel's polarity inverted) mixes down to the sound, not to silence;
    the polarity is settled where the channels are clearly related (a silent start or unrelated
    hiss settles nothing), and stereo whose channels differ without being inverted is averaged."""
    tone = _tone(16000, 3.0)
    hiss = np.random.default_rng(3).standard_normal((70000, 2)).astype(np.float32) * 0.01
    hiss[:, 1] *= 3  # unrelated channels, the right one the louder: they settle nothing
    for start in (np.zeros((0, 2), np.float32), np.zeros((70000, 2), np.float32), hiss):  # 70000: past
        antiphase = np.concatenate([start, np.stack([tone, -tone], axis=1)])  # the first block read
        audio = decode_audio(_encoded(antiphase, 16000, "FLAC"), "audio", 16000, 60)
        sound = audio.samples[len(start) :]
        assert np.abs(sound).max() == pytest.approx(0.5, abs=0.01)
        assert _peak_frequency(sound, 16000) == pytest.approx(440.0, abs=2.0)
    left, right = _tone(16000, 1.0, 440.0), _tone(16000, 1.0, 1000.0)  # unrelated: averaged
    apart = decode_audio(_encoded(np.stack([left, right], axis=1), 16000, "WAV"), "audio", 16000, 60)
    assert np.allclose(apart.samples, (left + right) / 2, atol=1e-3)


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


def test_a_url_or_a_data_url_without_base64_is_refused_with_what_to_send_instead() -> None:
    """Where no file may be read (HTTP without --media-roots), a URL's refusal must not send the
    caller to a file path; a data: URL of plain text is called what it is, not a missing file."""
    with pytest.raises(InvalidRequestError, match="offline by design: give a local file path"):
        read_media_bytes("https://example.com/a.wav", "audio", MAX_BYTES)
    with pytest.raises(InvalidRequestError, match="offline by design: send the data as base64 or a data"):
        read_media_bytes("https://example.com/a.wav", "audio", MAX_BYTES, [])
    no_roots: list[Path] = []
    for roots in (None, no_roots):
        with pytest.raises(InvalidRequestError, match="is a data: URL without base64; send data:<type>"):
            read_media_bytes("data:audio/wav,abc", "audio", MAX_BYTES, roots)


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


def test_pipes_and_devices_are_refused_before_any_read(tmp_path: Path) -> None:
    fifo = tmp_path / "audio.wav"
    os.mkfifo(fifo)  # nobody writes to it: a read would never end
    for path in (fifo, Path("/dev/zero")):
        with pytest.raises(InvalidRequestError, match="not a regular file"):
            read_media_bytes(str(path), "audio", MAX_BYTES)


def _flac_claiming(seconds: int, rate: int, channels: int) -> bytes:
    """A one-second silent FLAC whose STREAMINFO header claims ``seconds`` at ``rate`` x ``channels``."""
    data = bytearray(_encoded(np.zeros((16000, channels), dtype=np.float32), 16000, "FLAC"))
    start = 8 + 10  # "fLaC", the block header, then min/max block and frame sizes
    fields = int.from_bytes(data[start : start + 8], "big")  # rate 20 bits, channels-1 3, bps-1 5, frames 36
    bits_per_sample = (fields >> 36) & 0x1F
    fields = (rate << 44) | ((channels - 1) << 41) | (bits_per_sample << 36) | (seconds * rate)
    data[start : start + 8] = fields.to_bytes(8, "big")
    return bytes(data)


def test_a_header_claiming_hours_of_many_channels_sizes_no_buffer() -> None:
    data = _flac_claiming(7000, 655350, 8)  # ~147 GB as float32, if a buffer were sized from it
    assert soundfile.info(io.BytesIO(data)).frames == 7000 * 655350
    tracemalloc.start()
    try:
        audio = decode_audio(data, "audio", 16000, 7200)
        assert audio.duration_s < 1.0  # what is really there: a moment of silence
    except InvalidRequestError as refused:  # or libsndfile stops at the lie: a clear error either way
        assert "not audio soundfile can read" in str(refused)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < 50_000_000


def test_audio_past_the_limit_is_refused_as_it_decodes() -> None:
    # Headers cannot be trusted (above); the decoding loop counts the samples it really gets.
    data = _encoded(_tone(16000, 6.0), 16000, "OGG")
    with (
        soundfile.SoundFile(io.BytesIO(data)) as source,
        pytest.raises(InvalidRequestError, match="more than the 5 s allowed"),
    ):
        _mono_blocks(source, "audio", 16000, 5)


# ----- images ---------------------------------------------------------------------------------


def _image_bytes(image: Any, image_format: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def test_jpeg_and_webp_decode_to_rgb_uint8() -> None:
    from PIL import Image

    source = Image.new("RGB", (17, 9), (200, 30, 40))
    for image_format in ("JPEG", "WEBP"):
        pixels = decode_image(_image_bytes(source, image_format), "image", 1000)
        assert pixels.shape == (9, 17, 3)
        assert pixels.dtype == np.uint8
        assert abs(int(pixels[4, 8, 0]) - 200) < 12


def test_transparency_is_composed_onto_white() -> None:
    from PIL import Image

    clear = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    pixels = decode_image(_image_bytes(clear, "PNG"), "image", 1000)
    assert (pixels == 255).all()


def test_gif_gives_its_first_frame() -> None:
    from PIL import Image

    frames = [Image.new("RGB", (6, 6), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    data = _image_bytes(frames[0], "GIF", save_all=True, append_images=frames[1:])
    pixels = decode_image(data, "image", 1000)
    assert tuple(pixels[0, 0]) == (255, 0, 0)


def test_exif_orientation_is_applied() -> None:
    from PIL import Image

    wide = Image.new("RGB", (20, 10), (0, 128, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    pixels = decode_image(_image_bytes(wide, "JPEG", exif=exif), "image", 1000)
    assert pixels.shape[:2] == (20, 10)


def test_pixel_limit_is_checked_before_decoding() -> None:
    from PIL import Image

    data = _image_bytes(Image.new("RGB", (40, 30)), "PNG")
    with pytest.raises(InvalidRequestError, match=r"40x30 = 1200 pixels; at most 1000"):
        decode_image(data, "image", 1000)


def test_file_url_reads_the_file(tmp_path: Path) -> None:
    path = tmp_path / "a b.bin"
    path.write_bytes(b"\x00\x01")
    assert read_media_bytes(path.as_uri(), "image", MAX_BYTES) == b"\x00\x01"


@pytest.fixture
def rooted(tmp_path: Path) -> tuple[Path, Path]:
    """An allowed folder holding a clip, and a clip outside it."""
    root, outside = tmp_path / "allowed", tmp_path / "elsewhere"
    root.mkdir()
    outside.mkdir()
    data = _encoded(_tone(16000, 0.1), 16000, "WAV")
    (root / "clip.wav").write_bytes(data)
    (outside / "secret.wav").write_bytes(data)
    return root, outside


def test_paths_inside_media_roots_are_read(rooted: tuple[Path, Path]) -> None:
    root, _ = rooted
    for value in (str(root / "clip.wav"), (root / "clip.wav").as_uri(), str(root / "." / "clip.wav")):
        assert read_media_bytes(value, "audio", MAX_BYTES, [root.resolve()])


@pytest.mark.parametrize("how", ["absolute", "traversal", "symlink", "file-url", "symlinked-folder"])
def test_paths_leaving_media_roots_are_refused(rooted: tuple[Path, Path], how: str) -> None:
    root, outside = rooted
    (root / "link.wav").symlink_to(outside / "secret.wav")
    (root / "door").symlink_to(outside)
    value = {
        "absolute": str(outside / "secret.wav"),
        "traversal": str(root / ".." / "elsewhere" / "secret.wav"),
        "symlink": str(root / "link.wav"),
        "file-url": (outside / "secret.wav").as_uri(),
        "symlinked-folder": str(root / "door" / "secret.wav"),
    }[how]
    with pytest.raises(InvalidRequestError, match="outside the folders") as raised:
        read_media_bytes(value, "audio", MAX_BYTES, [root.resolve()])
    assert "RIFF" not in str(raised.value)


@pytest.mark.parametrize(
    "value", ["/etc/hostname", "/no/such/file.wav", "~/x.wav", "./clip.wav", "file:///etc/hostname"]
)
def test_no_roots_means_no_file_and_nothing_about_files_leaks(value: str) -> None:
    with pytest.raises(InvalidRequestError, match="file paths are not accepted") as raised:
        read_media_bytes(value, "audio", MAX_BYTES, [])
    assert "no file at" not in str(raised.value)


def test_no_roots_still_takes_the_data_itself() -> None:
    data = _encoded(_tone(16000, 0.1), 16000, "WAV")
    text = base64.b64encode(data).decode()
    assert read_media_bytes(text, "audio", MAX_BYTES, []) == data
    assert read_media_bytes(f"data:audio/wav;base64,{text}", "audio", MAX_BYTES, []) == data


def test_raw_base64_of_a_jpeg_is_data_though_it_starts_with_a_slash(tmp_path: Path) -> None:
    """JPEG's base64 always begins '/9j/' (and an untagged MP3's '//'): data, not a path, on every
    transport; a missing path with a slash is still a missing file, and never echoed at length."""
    from PIL import Image

    jpeg = _image_bytes(Image.new("RGB", (8, 8), (10, 200, 30)), "JPEG")
    text = base64.b64encode(jpeg).decode()
    assert text.startswith("/9j/")
    for roots in (None, [], [tmp_path]):
        assert read_media_bytes(text, "image", MAX_BYTES, roots) == jpeg
    mp3 = _encoded(_tone(24000, 0.2), 24000, "MP3")
    untagged = mp3[mp3.index(b"\xff\xf3") :] if mp3.startswith(b"ID3") else mp3
    assert read_media_bytes(base64.b64encode(untagged).decode(), "audio", MAX_BYTES) == untagged
    with pytest.raises(InvalidRequestError, match="no file at /home/nobody/pictures/cat"):
        read_media_bytes("/home/nobody/pictures/cat", "image", MAX_BYTES)
    with pytest.raises(InvalidRequestError) as raised:
        read_media_bytes("/x" + "y" * 5000 + ".png", "image", MAX_BYTES)
    assert len(str(raised.value)) < 400, str(raised.value)[:100]


def test_url_safe_and_unpadded_base64_are_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Base64 in the URL-safe alphabet (``-_``, as JavaScript's and JWT-style encoders write it) and
    without its ``=`` padding is the data on every transport, raw or in a data: URL; short names with
    ``-`` or ``_`` stay file names, an existing file is still read, and a mix of alphabets is refused."""
    data = _encoded(_tone(16000, 0.1), 16000, "WAV")
    url_safe = base64.urlsafe_b64encode(data).decode().rstrip("=")
    assert "-" in url_safe or "_" in url_safe
    for roots in (None, [], [tmp_path]):
        assert read_media_bytes(url_safe, "audio", MAX_BYTES, roots) == data
        assert read_media_bytes(f"data:audio/wav;base64,{url_safe}", "audio", MAX_BYTES, roots) == data
    for cut in (1, 2):  # one and two '=' of padding left out
        part = data[: len(data) - len(data) % 3 - cut]
        unpadded = base64.b64encode(part).decode().rstrip("=")
        assert len(unpadded) % 4 and read_media_bytes(unpadded, "audio", MAX_BYTES) == part
    with pytest.raises(InvalidRequestError, match=r"no file at quarterly-report_final$"):
        read_media_bytes("quarterly-report_final", "audio", MAX_BYTES)
    monkeypatch.chdir(tmp_path)
    name = "a-recording_" + "x" * 60
    (tmp_path / name).write_bytes(data)
    assert read_media_bytes(name, "audio", MAX_BYTES) == data
    mixed = url_safe[:40] + "+" + url_safe[41:]
    for value, roots in ((f"data:audio/wav;base64,{mixed}", None), (mixed, None), (mixed, [])):
        with pytest.raises(InvalidRequestError, match=r"mixes the standard alphabet \(\+ /\) with the URL"):
            read_media_bytes(value, "audio", MAX_BYTES, roots)


@pytest.mark.parametrize("value", ["data:audio/wav;base64,", "DATA:audio/wav;BASE64,"])
def test_empty_data_is_called_empty(value: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidRequestError, match=r"is empty \(0 bytes\)"):
        read_media_bytes(value, "audio", MAX_BYTES)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(InvalidRequestError, match=r"is empty \(0 bytes\)"):
        read_media_bytes(str(empty), "audio", MAX_BYTES)


def test_audio_that_holds_nan_is_refused() -> None:
    samples = _tone(16000, 0.5)
    samples[100] = np.nan
    data = _encoded(samples, 16000, "WAV")  # 16-bit PCM, which cannot hold NaN
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, 16000, format="WAV", subtype="FLOAT")
    with pytest.raises(InvalidRequestError, match="not numbers"):
        decode_audio(buffer.getvalue(), "audio", 16000, 60)
    assert decode_audio(data, "audio", 16000, 60).samples.shape[0] == 8000


def test_sixteen_bit_grey_keeps_its_shade() -> None:
    from PIL import Image

    grey = Image.fromarray(np.full((4, 4), 30000, dtype=np.uint16))  # 46 % grey
    pixels = decode_image(_image_bytes(grey, "PNG"), "image", 1000)
    assert abs(int(pixels[0, 0, 0]) - 30000 // 256) <= 1


def test_a_transparent_colour_in_an_rgb_png_goes_onto_white() -> None:
    from PIL import Image

    image = Image.new("RGB", (4, 4), (0, 0, 0))
    pixels = decode_image(_image_bytes(image, "PNG", transparency=(0, 0, 0)), "image", 1000)
    assert (pixels == 255).all()


def test_a_multi_picture_jpeg_gives_its_first_picture() -> None:
    from PIL import Image

    pictures = [Image.new("RGB", (8, 8), colour) for colour in ((250, 0, 0), (0, 0, 250))]
    data = _image_bytes(pictures[0], "MPO", save_all=True, append_images=pictures[1:])
    pixels = decode_image(data, "image", 1000)
    assert pixels[0, 0, 0] > 200 and pixels[0, 0, 2] < 50


def test_the_pixel_limit_is_ours_not_pillows() -> None:
    """Pillow refuses images over twice its own limit (~179 MP) when they are opened; a server
    configured for more must get them, and one configured for less says its own limit."""
    from PIL import Image

    data = _image_bytes(Image.new("1", (20_000, 10_000)), "PNG")  # 200 MP, a few kB
    with pytest.raises(InvalidRequestError, match="20000x10000 = 200000000 pixels; at most 150000000"):
        decode_image(data, "image", 150_000_000)  # checked from the header: Pillow's guard is off
    with pytest.raises(InvalidRequestError, match="more than 100 times the other"):
        decode_image(_image_bytes(Image.new("1", (20_000, 100)), "PNG"), "image", 300_000_000)
