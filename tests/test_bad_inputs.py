# ruff: noqa: E501  (the catalogue reads best one case per line)
"""The catalogue of bad tool arguments, media and model operations, over a real stdio server.

Each case must get a clear error (a tool error whose text says what is wrong, never a traceback),
and the server must answer a `ping` right after it; at the end every loaded model still works.
(Wire-level cases — malformed JSON, batches, bad ids — are in test_wire.py.)
"""

from __future__ import annotations

import base64
import io
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
import soundfile
from PIL import Image

from .conftest import EMBEDDER, LLM, RERANKER, TTS, VLM, WHISPER_EN
from .stdio_session import RawSession, server_env

pytestmark = pytest.mark.anyio

LONG_PROMPT = "word " * 40_000  # far beyond SmolLM2's context


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _wav(samples: np.ndarray, rate: int = 16_000, audio_format: str = "WAV") -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format=audio_format)
    return buffer.getvalue()


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buffer, "PNG")
    return buffer.getvalue()


def _png_header(width: int, height: int) -> bytes:
    """A real PNG whose header claims another size (the IHDR checksum fixed up to match)."""
    data = bytearray(_png(2, 2))
    data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")  # IHDR data follows 8+8 bytes
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    return bytes(data)


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("media")
    outside = tmp_path_factory.mktemp("outside")
    files = {
        "text_as_wav": root / "notes.wav",
        "text_as_png": root / "notes.png",
        "empty_wav": root / "empty.wav",
        "one_sample": root / "one.wav",
        "silence_hours": root / "silence.flac",
        "folder": root / "folder",
        "secret": outside / "secret.wav",
        "escape": root / "escape.wav",
        "model_escape": root / "model-link",
    }
    files["text_as_wav"].write_text("SECRET-CONTENT do not echo me\n" * 20)
    files["text_as_png"].write_text("SECRET-CONTENT do not echo me\n" * 20)
    files["empty_wav"].write_bytes(b"")
    files["one_sample"].write_bytes(_wav(np.zeros(1, dtype=np.float32)))
    three_hours = np.zeros(3 * 3600 * 1000, dtype=np.int16)  # 1 kHz: small to write, FLAC packs it
    files["silence_hours"].write_bytes(_wav(three_hours, 1000, "FLAC"))
    files["folder"].mkdir()
    files["secret"].write_bytes(_wav(np.zeros(1600, dtype=np.float32)))
    files["escape"].symlink_to(files["secret"])
    files["model_escape"].symlink_to(outside, target_is_directory=True)
    return {"root": root, **files}


@pytest.fixture(scope="module")
async def server(models_dir: Path, media: dict[str, Path]) -> AsyncIterator[RawSession]:
    preload = ",".join([LLM, EMBEDDER, RERANKER, WHISPER_EN, VLM, TTS])
    roots = str(media["root"])
    env = server_env(
        models_dir, OPENARC_PRELOAD=preload, OPENARC_MEDIA_ROOTS=roots, OPENARC_MODEL_ROOTS=roots
    )
    async with RawSession(env) as session:
        await session.initialize()
        for name in preload.split(","):  # wait for the preloads, through the loading path itself
            await session.request("tools/call", {"name": "load_model", "arguments": {"model_name": name}})
        yield session


# (case, tool, arguments, text the error must contain); "@name" stands for a file of the media fixture
CASES: list[tuple[str, str, dict[str, Any], str]] = [
        # arguments
        ("generate-wrong-type", "generate", {"prompt": "hi", "max_tokens": "ten"}, "max_tokens"),
        ("generate-negative-max-tokens", "generate", {"prompt": "hi", "max_tokens": -5}, "max_tokens"),
        ("generate-temperature-below-0", "generate", {"prompt": "hi", "temperature": -1}, "temperature"),
        ("generate-top-p-above-1", "generate", {"prompt": "hi", "top_p": 1.5}, "top_p"),
        ("generate-temperature-too-small", "generate", {"prompt": "hi", "model": LLM, "temperature": 1e-300}, "temperature 1e-300 is too small for the engine: give 0 for greedy decoding, or at least 1e-06"),
        ("generate-top-p-too-small", "generate", {"prompt": "hi", "model": LLM, "top_p": 1e-50}, "top_p 1e-50 is too small for the engine: give at least 1e-06"),
        ("generate-true-as-max-tokens", "generate", {"prompt": "hi", "max_tokens": True}, "'max_tokens' should be a valid integer, got True"),
        ("embed-true-as-dimensions", "embed", {"texts": "hi", "dimensions": True}, "'dimensions' should be a valid integer, got True"),
        ("transcribe-yes-as-timestamps", "transcribe", {"audio": "@one_sample", "timestamps": "yes"}, "'timestamps' should be a valid boolean, got 'yes'"),
        ("speak-true-as-speed", "speak", {"text": "Hi.", "speed": True}, "'speed' should be a valid number, got True"),
        ("generate-empty-prompt", "generate", {"prompt": ""}, "prompt"),
        ("generate-blank-prompt", "generate", {"prompt": "   ", "model": LLM}, "empty"),
        ("generate-empty-messages", "generate", {"messages": []}, "messages"),
        ("generate-both-inputs", "generate", {"prompt": "a", "messages": [{"role": "user", "content": "b"}]}, "exactly one"),
        ("generate-unknown-role", "generate", {"messages": [{"role": "wizard", "content": "x"}]}, "role"),
        ("generate-ends-with-assistant", "generate", {"model": LLM, "messages": [{"role": "assistant", "content": "x"}]}, "end the chat"),
        ("generate-too-long-prompt", "generate", {"model": LLM, "prompt": LONG_PROMPT}, "too long"),
        ("generate-empty-stop", "generate", {"model": LLM, "prompt": "hi", "stop": [""]}, "stop"),
        ("generate-extra-argument", "generate", {"prompt": "hi", "verbosity": 3}, "unknown argument"),
        ("generate-schema-not-an-object", "generate", {"model": LLM, "prompt": "hi", "json_schema": ["type", "object"]}, "json_schema"),
        ("generate-schema-not-a-json-schema", "generate", {"model": LLM, "prompt": "hi", "json_schema": {"type": "nonsense"}}, "not a valid JSON Schema"),
        ("generate-schema-the-engine-refuses", "generate", {"model": LLM, "prompt": "hi", "json_schema": {"type": "string", "pattern": "(?<=a)b"}}, "Lookbehind"),
        ("generate-schema-numeric-bounds", "generate", {"model": LLM, "prompt": "hi", "json_schema": {"type": "integer", "maximum": 9}}, "maximum (at #)"),
        ("generate-schema-with-stop", "generate", {"model": LLM, "prompt": "hi", "json_schema": {"type": "object"}, "stop": "}"}, "not both"),
        ("describe-image-schema-refused", "describe_image", {"model": VLM, "image": _b64(_png(8, 8)), "json_schema": {"$ref": "#/$defs/none"}}, "json_schema cannot be used"),
        ("embed-model-name-5000-chars", "embed", {"model": "a" * 5000, "texts": "0"}, "no model named"),  # found by fuzzing: crashed
        ("generate-unknown-model", "generate", {"model": "no-such-model", "prompt": "hi"}, "no model named"),
        ("generate-on-an-embedder", "generate", {"model": EMBEDDER, "prompt": "hi"}, "type"),
        ("embed-missing-texts", "embed", {"model": EMBEDDER}, "texts"),
        ("embed-empty-list", "embed", {"model": EMBEDDER, "texts": []}, "empty"),
        ("embed-empty-text", "embed", {"model": EMBEDDER, "texts": [""]}, "empty"),
        ("embed-number", "embed", {"model": EMBEDDER, "texts": 42}, "texts"),
        ("embed-zero-dimensions", "embed", {"model": EMBEDDER, "texts": "a", "dimensions": 0}, "dimensions"),
        ("embed-too-many-dimensions", "embed", {"model": EMBEDDER, "texts": "a", "dimensions": 9999}, "dimensions"),
        ("rerank-no-documents", "rerank", {"model": RERANKER, "query": "q", "documents": []}, "documents"),
        ("rerank-empty-query", "rerank", {"model": RERANKER, "query": "", "documents": ["d"]}, "query"),
        ("rerank-invisible-only", "rerank", {"model": RERANKER, "query": "\x1b", "documents": ["\b"]}, "no visible"),  # GenAI failed on it
        ("embed-invisible-text", "embed", {"model": EMBEDDER, "texts": ["\u200b\x1b"]}, "no visible"),
        ("rerank-combining-marks-only", "rerank", {"model": RERANKER, "query": "\u0301\u0301", "documents": ["\ufe0f"]}, "no visible"),  # the tokenizer drops them
        ("rerank-top-n-zero", "rerank", {"model": RERANKER, "query": "q", "documents": ["d"], "top_n": 0}, "top_n"),
        ("speak-empty-text", "speak", {"model": TTS, "text": ""}, "text"),
        ("speak-speed-out-of-range", "speak", {"model": TTS, "text": "hi", "speed": 9}, "speed"),
        ("speak-output-traversal", "speak", {"model": TTS, "text": "hi", "output_path": "../../x.wav"}, "output directory"),
        ("speak-output-absolute", "speak", {"model": TTS, "text": "hi", "output_path": "/tmp/x.wav"}, "output directory"),
        ("speak-unknown-voice", "speak", {"model": TTS, "text": "hi", "voice": "nobody"}, "voice"),
        ("speak-emoji-only", "speak", {"model": TTS, "text": "\U0001f600"}, "could be spoken"),  # was 0 s of broken audio
        # media
        ("audio-corrupt-base64", "transcribe", {"model": WHISPER_EN, "audio": "data:audio/wav;base64,@@@"}, "base64"),
        ("audio-base64-of-garbage", "transcribe", {"model": WHISPER_EN, "audio": _b64(b"\x13" * 4000)}, "not audio"),
        ("audio-zero-length-file", "transcribe", {"model": WHISPER_EN, "audio": "@empty_wav"}, "audio"),
        ("audio-hours-of-silence", "transcribe", {"model": WHISPER_EN, "audio": "@silence_hours"}, "at most"),
        ("audio-text-file", "transcribe", {"model": WHISPER_EN, "audio": "@text_as_wav"}, "not audio"),
        ("audio-missing-file", "transcribe", {"model": WHISPER_EN, "audio": "@root/none.wav"}, "no file"),
        ("audio-directory", "transcribe", {"model": WHISPER_EN, "audio": "@folder"}, "directory"),
        ("audio-outside-roots", "transcribe", {"model": WHISPER_EN, "audio": "@secret"}, "outside"),
        ("audio-symlink-escape", "transcribe", {"model": WHISPER_EN, "audio": "@escape"}, "outside"),
        ("audio-nul-path", "transcribe", {"model": WHISPER_EN, "audio": "\x00"}, "NUL"),  # found by fuzzing: crashed
        ("image-nul-path", "describe_image", {"model": VLM, "image": "a\x00.png"}, "NUL"),
        ("speak-output-nul", "speak", {"model": TTS, "text": "hi", "output_path": "a\x00.wav"}, "NUL"),
        ("load-nul-path", "load_model", {"model_name": "m8", "model_path": "a\x00b", "model_type": "llm"}, "model path"),
        ("audio-url", "transcribe", {"model": WHISPER_EN, "audio": "https://example.com/a.wav"}, "offline"),
        ("audio-for-no-such-model", "transcribe", {"model": "no-such-whisper", "audio": _b64(b"\x13" * 4000)}, "no model named"),  # said before the audio is decoded
        ("image-huge-header", "describe_image", {"model": VLM, "image": _b64(_png_header(20_000, 20_000))}, "pixels"),
        ("image-text-file", "describe_image", {"model": VLM, "image": "@text_as_png"}, "image"),
        ("image-truncated", "describe_image", {"model": VLM, "image": _b64(_png(40, 40)[:70])}, "corrupt or truncated"),
        ("image-none", "describe_image", {"model": VLM, "prompt": "what?"}, "no image"),
        ("image-a-line-of-pixels", "describe_image", {"model": VLM, "image": _b64(_png(2000, 10))}, "times the other"),
        ("image-empty-data-url", "describe_image", {"model": VLM, "image": "data:image/png;base64,"}, "empty"),
        ("image-on-an-llm", "describe_image", {"model": LLM, "image": _b64(_png(8, 8))}, "type"),
        # models
        ("load-missing-path", "load_model", {"model_name": "m1", "model_path": "@root/no-such-model", "model_type": "llm"}, "does not exist"),
        ("load-outside-roots", "load_model", {"model_name": "m4", "model_path": "/usr", "model_type": "llm"}, "outside the folders"),
        ("load-missing-outside-roots", "load_model", {"model_name": "m5", "model_path": "/no/such/model", "model_type": "llm"}, "outside the folders"),
        ("load-traversal", "load_model", {"model_name": "m6", "model_path": "../../../../../../etc", "model_type": "llm"}, "outside the folders"),
        ("load-symlink-escape", "load_model", {"model_name": "m7", "model_path": "@model_escape", "model_type": "llm"}, "outside the folders"),
        ("load-not-a-model", "load_model", {"model_name": "m2", "model_path": "@folder", "model_type": "llm"}, "model"),
        ("load-wrong-type", "load_model", {"model_name": "m3", "model_path": "@llm_path", "model_type": "whisper"}, "whisper"),
        ("load-name-in-use", "load_model", {"model_name": LLM}, "in use"),
        ("load-bad-name", "load_model", {"model_name": "../etc"}, "model_name"),
        ("unload-unknown", "unload_model", {"model_name": "never-loaded"}, "never-loaded"),
        ("tool-on-a-failed-model", "generate", {"model": "m2", "prompt": "hi"}, "m2"),
        ("transcribe-one-sample", "transcribe", {"model": WHISPER_EN, "audio": "@one_sample", "language": "xx-nope"}, "language"),
]  # fmt: skip


def _resolved(value: Any, files: dict[str, Path]) -> Any:
    if isinstance(value, str) and value.startswith("@"):
        key, _, rest = value[1:].partition("/")
        return str(files[key] / rest) if rest else str(files[key])
    return value


@pytest.mark.parametrize(("case", "tool", "arguments", "expected"), CASES, ids=[case[0] for case in CASES])
async def test_each_bad_input_is_a_clear_error_and_serving_goes_on(
    server: RawSession,
    media: dict[str, Path],
    llm_path: Path,
    case: str,
    tool: str,
    arguments: dict[str, Any],
    expected: str,
) -> None:
    files = {**media, "llm_path": llm_path}
    arguments = {key: _resolved(value, files) for key, value in arguments.items()}
    reply = await server.request("tools/call", {"name": tool, "arguments": arguments})
    text = _error_text(reply)
    assert expected.lower() in text.lower(), (case, text)
    assert "Traceback" not in text and "SECRET-CONTENT" not in text, text
    assert (await server.request("ping"))["result"] == {}


async def test_inputs_that_are_odd_but_valid_get_results(server: RawSession, media: dict[str, Path]) -> None:
    odd: list[tuple[str, dict[str, Any]]] = [
        ("generate", {"model": LLM, "prompt": "a\u0000b", "max_tokens": 3}),  # NUL in text
        ("embed", {"model": EMBEDDER, "texts": "\U0001f600 \u202e mixed \u0000 text"}),
        # found by fuzzing: GenAI's batched pair tokenizer failed on these, then the heap broke
        (
            "rerank",
            {
                "model": RERANKER,
                "query": "ß¡\U000edff0ìÃ\x92",
                "documents": [
                    "Ç",
                    ",\x87\x8d0E",
                    "dÞ\U00098861û",
                    "w¼",
                    "7ï\U000769e6K\x9e",
                    "\u143f\x85\x04O*\U000f6fec",
                ],
            },
        ),
        ("rerank", {"model": RERANKER, "query": "still fine?", "documents": ["yes", "no"]}),
        ("transcribe", {"model": WHISPER_EN, "audio": str(media["one_sample"])}),  # one sample of audio
        ("describe_image", {"model": VLM, "image": _b64(_png(1, 1)), "max_tokens": 2}),  # 1x1 pixel
    ]
    for tool, arguments in odd:
        reply = await server.request("tools/call", {"name": tool, "arguments": arguments})
        assert reply["result"].get("isError") is not True, (tool, reply)


async def test_unload_twice_and_concurrent_loads_of_one_name(server: RawSession) -> None:
    arguments = {"model_name": "twin", "model_path": EMBEDDER, "model_type": "embedding"}  # in models_dir
    ids = [
        await server.start_request("tools/call", {"name": "load_model", "arguments": arguments}) for _ in "ab"
    ]
    replies = await _responses(server, set(ids))
    refused = [reply for reply in replies if reply["result"].get("isError")]
    assert len(refused) == 1 and "in use" in refused[0]["result"]["content"][0]["text"], replies
    unload = {"name": "unload_model", "arguments": {"model_name": "twin"}}
    assert (await server.request("tools/call", unload))["result"].get("isError") is not True
    assert (await server.request("tools/call", unload))["result"]["isError"] is True


async def test_every_model_still_works_after_the_catalogue(
    server: RawSession, media: dict[str, Path]
) -> None:
    calls: list[tuple[str, dict[str, Any]]] = [
        ("generate", {"model": LLM, "prompt": "What is the capital of France?", "temperature": 0, "max_tokens": 12}),
        ("embed", {"model": EMBEDDER, "texts": ["still here"]}),
        ("rerank", {"model": RERANKER, "query": "q", "documents": ["a", "b"]}),
        ("speak", {"model": TTS, "text": "Still here."}),
        ("describe_image", {"model": VLM, "image": _b64(_png(32, 32)), "max_tokens": 2}),
        ("transcribe", {"model": WHISPER_EN, "audio": _b64(_wav(np.zeros(8000, dtype=np.float32)))}),
    ]  # fmt: skip
    for tool, arguments in calls:
        reply = await server.request("tools/call", {"name": tool, "arguments": arguments})
        assert reply["result"].get("isError") is not True, (tool, reply)
    tools = await server.request("tools/list")
    assert len(tools["result"]["tools"]) == 8


async def _responses(server: RawSession, ids: set[int]) -> list[dict[str, Any]]:
    """The responses to several requests in flight, in whatever order they come."""
    replies: list[dict[str, Any]] = []
    with anyio.fail_after(120):
        while len(replies) < len(ids):
            message = await server.receive()
            if message.get("id") in ids and "method" not in message:
                replies.append(message)
    return replies


def _error_text(reply: dict[str, Any]) -> str:
    if "error" in reply:
        return str(reply["error"].get("message", ""))
    result = reply["result"]
    assert result.get("isError") is True, reply
    return " ".join(block.get("text", "") for block in result["content"])
