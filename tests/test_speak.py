"""`speak` on the real Kokoro-82M (prepared offline from PyPI parts)."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile
from mcp import Client

from openarc_mcp.app import OpenArcApp
from openarc_mcp.audio_out import MIME_TYPES
from openarc_mcp.engines.tts import split_sentences
from openarc_mcp.schema import LoadRequest
from openarc_mcp.transports.mcp_server import build_mcp_server

from .conftest import TTS, make_settings, structured, text_of

pytestmark = pytest.mark.anyio


async def _speak(client: Client, **arguments: Any) -> tuple[dict[str, Any], np.ndarray | None, int]:
    result = await client.call_tool("speak", {"model": TTS, **arguments})
    data = structured(result)
    audio_blocks = [block for block in result.content if getattr(block, "type", "") == "audio"]
    if not audio_blocks:
        return data, None, 0
    raw = base64.b64decode(getattr(audio_blocks[0], "data", ""))
    audio, rate = soundfile.read(io.BytesIO(raw))
    assert getattr(audio_blocks[0], "mime_type", "") == MIME_TYPES[data["format"]]
    return data, audio, rate


async def test_speech_comes_back_as_a_wav_block(client: Client) -> None:
    data, audio, rate = await _speak(client, text="The quick brown fox jumps over the lazy dog.")
    assert audio is not None and rate == 24000 == data["sample_rate"]
    assert audio.ndim == 1
    assert data["duration_s"] == pytest.approx(len(audio) / rate, abs=0.01)
    assert 1.5 < data["duration_s"] < 8
    assert float(np.sqrt(np.mean(audio**2))) > 0.01  # not silence
    assert data["inline"] is True and data["path"] is None


async def test_text_after_a_newline_is_spoken(client: Client) -> None:
    one, _, _ = await _speak(client, text="Hello there.")
    two, _, _ = await _speak(
        client, text="Hello there.\nAnd this second line is spoken as well, every word of it."
    )
    assert two["duration_s"] > one["duration_s"] + 1.5


async def test_speed_changes_the_duration(client: Client) -> None:
    text = "Speaking faster makes the same sentence shorter."
    normal, _, _ = await _speak(client, text=text)
    fast, _, _ = await _speak(client, text=text, speed=2.0)
    assert fast["duration_s"] < normal["duration_s"] * 0.7


@pytest.mark.parametrize("audio_format", ["flac", "ogg", "mp3", "opus"])
async def test_other_formats(client: Client, audio_format: str) -> None:
    data, audio, rate = await _speak(client, text="Format test, spoken.", format=audio_format)
    assert audio is not None and rate == 24000 and data["format"] == audio_format
    assert abs(len(audio) / rate - data["duration_s"]) < 0.1  # encoders pad a frame at most
    assert float(np.sqrt(np.mean(audio**2))) > 0.01  # not silence


async def test_voices_are_listed_and_unknown_ones_refused(client: Client) -> None:
    contents = (await client.read_resource(f"openarc://models/{TTS}")).contents
    engine = json.loads(getattr(contents[0], "text", ""))["engine"]
    assert "jf_alpha" in engine["voices"] and engine["sample_rate"] == 24000
    data, _, _ = await _speak(client, text="Another voice.", voice="jm_kumo")
    assert data["voice"] == "jm_kumo"
    result = await client.call_tool("speak", {"model": TTS, "text": "x", "voice": "af_heart"})
    assert result.is_error and "unknown voice 'af_heart'" in text_of(result) and "jf_alpha" in text_of(result)


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ({"text": ""}, "text"),
        ({"text": "   "}, "'text' is empty"),
        ({"text": "x", "speed": 3}, "speed"),
        ({"text": "x", "language": "fr-fr"}, "'en-us' or 'en-gb'"),  # refused before the model is used
        ({"text": "x", "format": "aac"}, "format"),
        ({"text": "x", "output_path": "../outside.wav"}, "inside the output directory"),
        ({"text": "x", "output_path": "/etc/passwd.wav"}, "inside the output directory"),
        ({"text": "x", "output_path": "speech.flac"}, "must end in .wav"),
    ],
)
async def test_bad_speak_input_is_refused(client: Client, arguments: dict[str, Any], expected: str) -> None:
    result = await client.call_tool("speak", {"model": TTS, **arguments})
    assert result.is_error and expected in text_of(result)


async def test_output_path_writes_inside_the_output_directory(models_dir: Path, tmp_path: Path) -> None:
    settings = make_settings(models_dir, output_dir=tmp_path / "out", max_inline_audio_bytes=2000)
    async with OpenArcApp(settings) as app, Client(build_mcp_server(app)) as client:
        await app.load_model(LoadRequest(model_name=TTS))
        asked, audio, _ = await _speak(client, text="Saved to a file.", output_path="clips/hello.wav")
        large, large_audio, _ = await _speak(client, text="Too large to send inline.")
    assert Path(asked["path"]) == (tmp_path / "out" / "clips" / "hello.wav").resolve()
    assert soundfile.info(asked["path"]).samplerate == 24000
    assert audio is None and asked["inline"] is False  # over the 2000-byte inline limit
    assert large_audio is None and large["inline"] is False
    assert Path(large["path"]).parent == (tmp_path / "out").resolve()
    assert soundfile.info(large["path"]).frames > 0


async def test_an_output_path_that_cannot_be_written_is_refused_before_speaking(
    models_dir: Path, tmp_path: Path
) -> None:
    """Each of these failed at the write, after the synthesis, as a bare "Error executing tool speak"."""
    out = tmp_path / "out"
    (out / "taken.wav").mkdir(parents=True)
    (out / "a.wav").write_bytes(b"")
    settings = make_settings(models_dir, output_dir=out)
    async with OpenArcApp(settings) as app, Client(build_mcp_server(app)) as client:
        for output_path, said in (
            ("taken.wav", "'output_path' taken.wav is a folder; give a file name in it"),
            ("a.wav/x.wav", "'output_path' a.wav/x.wav lies under a.wav, which is a file, not a folder"),
            ("n" * 300 + ".wav", "'output_path' has a file name of 304 bytes; at most 255"),
        ):
            refused = await client.call_tool(
                "speak", {"model": TTS, "text": "Hi.", "output_path": output_path}
            )
            assert refused.is_error and said in text_of(refused), text_of(refused)
        assert app.registry.get(TTS) is None  # refused before the model was needed


def test_long_text_is_split_at_sentences_without_losing_any() -> None:
    text = "First sentence. Second one!\nA third line? " + "word " * 200 + "end."
    chunks = split_sentences(text, 120)
    assert all(len(chunk) <= 120 for chunk in chunks)
    assert " ".join(chunks).split() == text.split()
    packed = split_sentences("One. Two. " + "A sentence of some forty characters here. " * 3, 120, 50)
    assert packed == ["One. Two."] + ["A sentence of some forty characters here."] * 3  # packed to 50


def test_pieces_meet_with_a_sentences_pause_not_kokoros_padding() -> None:
    from openarc_mcp.engines.tts import _joined_pieces

    rate = 1000
    silence = np.zeros(500, dtype=np.float32)  # Kokoro pads each call: 0.5 s here
    sound = np.full(200, 0.5, dtype=np.float32)
    piece = np.concatenate([silence, sound, silence])
    joined = _joined_pieces([piece, np.zeros(300, dtype=np.float32), piece, piece], rate)
    assert [len(part) for part in joined] == [500 + 200 + 300, 100 + 200 + 300, 100 + 200 + 500]
    assert joined[0][:500].max() == 0 and joined[-1][-500:].max() == 0  # the ends stay as spoken
