"""What word timestamps cost Whisper, side by side in one run (interleaved, medians).

Three ways over the same ~50 s of Kokoro speech on the catalogue's whisper-base-int8: a pipeline
built without word timestamps, the pipeline the server builds (``word_timestamps=True``) asked for
segments only, and that pipeline asked for words too. It also checks that the three give the same
text and segments (the server builds every Whisper model for words when it can, so its plain
transcriptions must not change).

    python benchmarks/word_timestamps.py [--models-dir DIR] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import soxr

from openarc_mcp.engines.base import StopFlag
from openarc_mcp.engines.tts import TTSEngine
from openarc_mcp.library import DEFAULT_TTS, DEFAULT_WHISPER
from openarc_mcp.library.prepare import prepare_models
from openarc_mcp.settings import default_models_dir

PARAGRAPH = (
    "The lighthouse keeper climbed the long stair and lit the lamp against the coming storm, "
    "while the ships waited in the harbour for the morning tide. "
)


def _speech(models_dir: Path) -> np.ndarray:
    """About 50 s of Kokoro speech at 16 kHz."""
    engine = TTSEngine(models_dir / DEFAULT_TTS, "CPU", {})
    try:
        text = " ".join(f"Part {n}. {PARAGRAPH}" for n in range(1, 7))
        speech = engine.synthesize(text, engine.default_voice, "en-us", 1.0, StopFlag())
    finally:
        engine.close()
    return np.asarray(soxr.resample(speech.audio, speech.sample_rate, 16000), dtype=np.float32)


def _run(pipe: Any, audio: np.ndarray, words: bool) -> tuple[float, tuple[Any, ...]]:
    config = pipe.get_generation_config()
    config.return_timestamps = True
    config.word_timestamps = words
    started = time.perf_counter()
    result = pipe.generate(audio, config)
    seconds = time.perf_counter() - started
    chunks = tuple((round(c.start_ts, 2), round(c.end_ts, 2), c.text) for c in result.chunks)
    return seconds, (result.texts[0], chunks)


def main() -> None:
    import openvino_genai

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=default_models_dir(os.environ))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    prepare_models([DEFAULT_WHISPER, DEFAULT_TTS], args.models_dir)
    audio = _speech(args.models_dir)
    path = str(args.models_dir / DEFAULT_WHISPER)
    plain = openvino_genai.WhisperPipeline(path, "CPU")
    worded = openvino_genai.WhisperPipeline(path, "CPU", word_timestamps=True)
    ways = {
        "built without words, segments": (plain, False),
        "built for words, segments": (worded, False),
        "built for words, words": (worded, True),
    }
    times: dict[str, list[float]] = {name: [] for name in ways}
    outputs: dict[str, tuple[Any, ...]] = {}
    for _ in range(args.repeats):
        for name, (pipe, words) in ways.items():
            seconds, outputs[name] = _run(pipe, audio, words)
            times[name].append(seconds)
    base = statistics.median(times["built without words, segments"])
    sys.stdout.write(f"{len(audio) / 16000:.1f} s of speech, {args.repeats} repeats\n")
    for name, values in times.items():
        median = statistics.median(values)
        sys.stdout.write(f"{name:34} {median:7.3f} s  ×{median / base:.2f}\n")
    same = len({repr(output) for output in outputs.values()}) == 1
    sys.stdout.write(f"same text and segments all three ways: {same}\n")


if __name__ == "__main__":
    main()
