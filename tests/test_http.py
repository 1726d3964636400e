"""The HTTP transport on a real server process: the `openai` client, MCP over HTTP and SSE, security.

One `openarc-mcp serve --transport http` process serves every test here (real models, loopback),
so these tests also show that REST and MCP share one registry.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import numpy as np
import openai
import pydantic
import pytest
import soundfile
from mcp import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from openai.types.chat import ChatCompletionMessageParam
from PIL import Image

from openarc_mcp.demo import CITY_SCHEMA

from .conftest import EMBEDDER, LLM, RERANKER, TTS, VLM, WHISPER, WHISPER_EN, structured
from .http_server import HttpServer, free_port, running_server

API_KEY = "test-key-3f9a1c7e5b"
BODY_LIMIT = 1024 * 1024
QUESTION: list[ChatCompletionMessageParam] = [{"role": "user", "content": "What is the capital of France?"}]
SENTENCE = "The quick brown fox jumps over the lazy dog."
INSPECTOR = os.environ.get("OPENARC_INSPECTOR", "")


@pytest.fixture(scope="module")
def server(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpServer]:
    log = tmp_path_factory.mktemp("http") / "server.log"
    flags = ("--max-body-bytes", str(BODY_LIMIT))
    with running_server(models_dir, log, API_KEY, [LLM, EMBEDDER], *flags) as running:
        yield running
    assert running.process.returncode == 0, running.exit_report()  # SIGTERM: a clean, prompt exit
    assert API_KEY not in log.read_text(encoding="utf-8", errors="replace"), "the API key reached the log"


@pytest.fixture(scope="module")
def oai(server: HttpServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0, timeout=120) as client:
        yield client


def _post(server: HttpServer, path: str, body: Any, **headers: str) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=body, headers={**server.headers, **headers}, timeout=120)


# ----- the openai client ------------------------------------------------------------------------


def test_models_list_shows_loaded_and_prepared_models(oai: openai.OpenAI) -> None:
    models = {model.id: model for model in oai.models.list()}
    assert {LLM, EMBEDDER, RERANKER, TTS, WHISPER_EN} <= set(models)
    extra = models[LLM].model_extra or {}
    assert (extra["type"], extra["status"], extra["device"]) == ("llm", "loaded", "CPU"), extra
    assert extra["load_time_s"] > 0 and "error" not in extra, extra
    assert models[RERANKER].model_extra == {"type": "reranker", "status": "available"}  # prepared only
    assert oai.models.retrieve(EMBEDDER).id == EMBEDDER


def test_chat_answers_and_streams_the_same_greedy_text(oai: openai.OpenAI) -> None:
    plain = oai.chat.completions.create(model=LLM, messages=QUESTION, temperature=0, max_tokens=24)
    text = plain.choices[0].message.content or ""
    assert "Paris" in text
    assert plain.choices[0].finish_reason == "stop"
    assert plain.usage is not None and plain.usage.completion_tokens > 0

    stream = oai.chat.completions.create(
        model=LLM,
        messages=QUESTION,
        stream=True,
        stream_options={"include_usage": True},
        temperature=0,
        max_tokens=24,
    )
    pieces, finish, usage = [], None, None
    for chunk in stream:
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        usage = chunk.usage or usage
    assert "".join(pieces) == text
    assert finish == "stop"
    assert usage is not None and usage.total_tokens == plain.usage.total_tokens


def test_max_tokens_gives_finish_reason_length(oai: openai.OpenAI) -> None:
    reply = oai.chat.completions.create(
        model=LLM,
        messages=[{"role": "user", "content": "Write a long story about a dragon."}],
        temperature=0,
        max_completion_tokens=5,
    )
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None and reply.usage.completion_tokens == 5


CITY_FORMAT: dict[str, Any] = {
    "type": "json_schema",
    "json_schema": {"name": "city", "strict": True, "schema": CITY_SCHEMA},
}


JSON_QUESTION: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "What is the capital of France? Answer in JSON with city and country."}
]


def test_response_format_json_schema_plain_and_streamed(oai: openai.OpenAI) -> None:
    arguments: dict[str, Any] = {"model": LLM, "messages": JSON_QUESTION, "temperature": 0, "max_tokens": 200}
    plain = oai.chat.completions.create(**arguments, response_format=CITY_FORMAT)  # type: ignore[call-overload]
    text = plain.choices[0].message.content or ""
    value = json.loads(text)
    assert set(value) == {"city", "country"} and all(isinstance(v, str) for v in value.values()), text
    assert "paris" in value["city"].lower() and plain.choices[0].finish_reason == "stop"
    stream = oai.chat.completions.create(**arguments, response_format=CITY_FORMAT, stream=True)  # type: ignore[call-overload]
    streamed = json.loads("".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices))
    assert set(streamed) == {
        "city",
        "country",
    }  # (equal to the plain text unless numerics drift between runs)


class _Place(pydantic.BaseModel):
    city: str
    country: str


class _CityAnswer(pydantic.BaseModel):
    place: _Place
    is_capital: bool


def test_the_openai_clients_parse_helper_gets_its_pydantic_model(oai: openai.OpenAI) -> None:
    """``parse`` sends the model's schema (nested models under $defs, strict) and validates the reply."""
    reply = oai.chat.completions.parse(
        model=LLM, messages=JSON_QUESTION, response_format=_CityAnswer, temperature=0, max_tokens=200
    )
    assert reply.choices[0].finish_reason == "stop"
    assert isinstance(reply.choices[0].message.parsed, _CityAnswer)


def test_response_format_json_object_gives_a_json_object(oai: openai.OpenAI) -> None:
    reply = oai.chat.completions.create(
        model=LLM,
        messages=JSON_QUESTION,
        temperature=0,
        max_tokens=200,
        response_format={"type": "json_object"},
    )
    assert reply.choices[0].finish_reason == "stop", reply.choices[0].message.content
    assert isinstance(json.loads(reply.choices[0].message.content or ""), dict)


def test_an_unusable_response_schema_is_400_with_the_engines_reason(server: HttpServer) -> None:
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "x", "schema": {"type": "string", "pattern": "(?<=a)b"}},
    }
    reply = _post(
        server,
        "/v1/chat/completions",
        {"model": LLM, "messages": QUESTION, "response_format": response_format},
    )
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["param"] == "response_format" and "Lookbehind is not supported" in error["message"], error
    after = _post(server, "/v1/chat/completions", {"model": LLM, "messages": QUESTION, "max_tokens": 8})
    assert after.status_code == 200, after.text  # the model still serves


WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 40}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
TIME: Any = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The current time in a time zone.",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "maxLength": 40}},
            "required": ["zone"],
        },
    },
}
WEATHER_QUESTION: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "What is the weather in Paris?"}
]


def test_a_required_tool_call_comes_back_as_tool_calls(oai: openai.OpenAI) -> None:
    reply = oai.chat.completions.create(
        model=LLM, messages=WEATHER_QUESTION, tools=[WEATHER, TIME], tool_choice="required",
        parallel_tool_calls=False, temperature=0, max_tokens=200,
    )  # fmt: skip
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    calls = choice.message.tool_calls or []
    assert len(calls) == 1 and calls[0].type == "function" and calls[0].id.startswith("call_")
    function = calls[0].function
    arguments = json.loads(function.arguments)
    assert (function.name, sorted(arguments)) in (("get_weather", ["city"]), ("get_time", ["zone"])), function

    streamed = oai.chat.completions.create(
        model=LLM, messages=WEATHER_QUESTION, tools=[WEATHER, TIME], tool_choice="required",
        parallel_tool_calls=False, temperature=0, max_tokens=200, stream=True,
    )  # fmt: skip
    deltas, finish = [], None
    for chunk in streamed:
        if chunk.choices:
            deltas.extend(chunk.choices[0].delta.tool_calls or [])
            finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls" and len(deltas) == 1
    assert deltas[0].function is not None and deltas[0].function.name in ("get_weather", "get_time")
    assert sorted(json.loads(deltas[0].function.arguments or "")) in (["city"], ["zone"])


def test_a_named_tool_choice_calls_that_function(oai: openai.OpenAI) -> None:
    reply = oai.chat.completions.create(
        model=LLM, messages=WEATHER_QUESTION, tools=[WEATHER, TIME], temperature=0, max_tokens=200,
        tool_choice={"type": "function", "function": {"name": "get_time"}}, parallel_tool_calls=False,
    )  # fmt: skip
    calls = reply.choices[0].message.tool_calls or []
    assert calls and all(call.function.name == "get_time" for call in calls)  # type: ignore[union-attr]
    assert all(isinstance(json.loads(call.function.arguments)["zone"], str) for call in calls)  # type: ignore[union-attr]


def test_with_tool_choice_auto_the_reply_is_a_call_or_an_answer(oai: openai.OpenAI) -> None:
    for question in (WEATHER_QUESTION, QUESTION):
        reply = oai.chat.completions.create(
            model=LLM,
            messages=question,
            tools=[WEATHER],
            temperature=0,
            parallel_tool_calls=False,
            max_tokens=200,
        )
        choice = reply.choices[0]
        if choice.finish_reason == "tool_calls":
            assert choice.message.content is None and choice.message.tool_calls
            assert choice.message.tool_calls[0].function.name == "get_weather"  # type: ignore[union-attr]
        else:
            assert choice.finish_reason in ("stop", "length") and choice.message.tool_calls is None
            assert choice.message.content and not choice.message.content.startswith('{"content"')


def test_an_agent_loop_sends_the_clients_own_replies_back(oai: openai.OpenAI) -> None:
    """As agent code does: each reply the client returns (plain, streamed, parsed; with its
    ``refusal``, ``annotations``, calls' ``index`` ...) goes back into ``messages`` as it is, and
    tool results answer the calls by id."""
    messages: list[Any] = [{"role": "user", "name": "ana", "content": "What is the weather in Paris?"}]
    required: Any = {"tools": [WEATHER], "tool_choice": "required", "parallel_tool_calls": False}
    called = oai.chat.completions.create(
        model=LLM, messages=messages, temperature=0, max_tokens=200, **required
    )
    messages.append(called.choices[0].message)
    messages.append(_weather_result(called.choices[0].message.tool_calls))
    answered = oai.chat.completions.create(
        model=LLM, messages=messages, tools=[WEATHER], tool_choice="none", temperature=0, max_tokens=40
    )
    assert answered.choices[0].finish_reason in ("stop", "length") and answered.choices[0].message.content
    assert answered.choices[0].message.tool_calls is None
    messages += [answered.choices[0].message, {"role": "user", "content": "And in Rome?"}]
    with oai.chat.completions.stream(
        model=LLM, messages=messages, temperature=0, max_tokens=200, **required
    ) as stream:
        streamed = stream.get_final_completion()
    messages.append(streamed.choices[0].message)
    messages.append(_weather_result(streamed.choices[0].message.tool_calls))
    parsed = oai.chat.completions.parse(
        model=LLM, messages=messages, response_format=_CityAnswer, temperature=0, max_tokens=200
    )
    messages += [parsed.choices[0].message, {"role": "user", "content": "Thanks."}]
    with warnings.catch_warnings():  # the client's own: its parsed message's model is generic
        warnings.filterwarnings("ignore", "Pydantic serializer warnings", UserWarning)
        last = oai.chat.completions.create(model=LLM, messages=messages, max_tokens=8)
    assert last.choices[0].message.content


def _weather_result(calls: Any) -> dict[str, Any]:
    assert calls and calls[0].function.name == "get_weather", calls
    return {"role": "tool", "tool_call_id": calls[0].id, "content": "18 degrees Celsius and sunny"}


def _earlier_call(arguments: str) -> dict[str, Any]:
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": arguments}}
    return {"messages": [{"role": "assistant", "tool_calls": [call]}, {"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(
    ("extra", "param", "words"),
    [
        (
            {"tools": [{"type": "function", "function": {"name": "bad name"}}]},
            "tools.0.function.name",
            "1-64",
        ),
        ({"tools": [WEATHER, WEATHER]}, "tools.1.function.name", "two functions"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice",
            "not in tools",
        ),
        ({"tool_choice": "required"}, "tool_choice", "needs 'tools'"),
        ({"tools": [WEATHER], "response_format": {"type": "json_object"}}, "response_format", "not both"),
        ({"tools": [WEATHER], "stop": "}"}, "stop", "cut the JSON short"),
        ({"response_format": {"type": "json_object"}, "stop": ["\n"]}, "stop", "cut the JSON short"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 7}}}]},
            "tools.0.function.parameters",
            "not a valid JSON Schema",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"$id": "http://x/f"}}}]},
            "tools.0.function.parameters",
            "$id (at #)",
        ),
        *(
            (_earlier_call(arguments), "messages.0.tool_calls.0.function.arguments", "JSON object")
            for arguments in ("{", "[1, 2]", '{"a": "\\ud800"}')  # the last: an escaped lone surrogate
        ),
    ],
)
def test_bad_tool_requests_are_400_naming_the_problem(
    server: HttpServer, extra: dict[str, Any], param: str, words: str
) -> None:
    reply = _post(
        server, "/v1/chat/completions", {"model": LLM, "messages": QUESTION, "max_tokens": 8, **extra}
    )
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["param"] == param and words in error["message"], error


def test_text_completion_plain_and_streamed(oai: openai.OpenAI) -> None:
    prompt = "The capital of France is"
    plain = oai.completions.create(model=LLM, prompt=prompt, max_tokens=8, temperature=0)
    text = plain.choices[0].text
    assert "Paris" in text
    streamed = oai.completions.create(model=LLM, prompt=prompt, max_tokens=8, temperature=0, stream=True)
    assert "".join(chunk.choices[0].text for chunk in streamed if chunk.choices) == text


@pytest.mark.anyio
async def test_embeddings_equal_the_mcp_tool_vectors(oai: openai.OpenAI, server: HttpServer) -> None:
    texts = ["Paris is the capital of France.", "Bananas are yellow."]
    as_base64 = oai.embeddings.create(model=EMBEDDER, input=texts)  # the client asks for base64
    as_floats = oai.embeddings.create(model=EMBEDDER, input=texts, encoding_format="float")
    async with _mcp_http(server) as client:
        tool = structured(await client.call_tool("embed", {"model": EMBEDDER, "texts": texts}))
    expected = np.array(tool["embeddings"])
    for reply in (as_base64, as_floats):
        vectors = np.array([item.embedding for item in reply.data])
        assert vectors.shape == (2, 384)
        assert np.abs(vectors - expected).max() < 1e-6
    assert as_floats.usage.prompt_tokens > 0
    short = oai.embeddings.create(model=EMBEDDER, input="hello", dimensions=64, encoding_format="float")
    assert len(short.data[0].embedding) == 64
    assert np.linalg.norm(short.data[0].embedding) == pytest.approx(1.0, abs=1e-5)
    too_many = _post(server, "/v1/embeddings", {"model": EMBEDDER, "input": "hello", "dimensions": 385})
    assert too_many.status_code == 400 and too_many.json()["error"]["param"] == "dimensions", too_many.text


def test_speech_is_valid_audio_and_transcribes_back(oai: openai.OpenAI, tmp_path: Path) -> None:
    speech = oai.audio.speech.create(model=TTS, input=SENTENCE, voice="alloy", response_format="wav")
    audio, rate = soundfile.read(io.BytesIO(speech.content))
    assert rate == 24_000
    assert 1.5 < len(audio) / rate < 10
    path = tmp_path / "fox.wav"
    path.write_bytes(speech.content)
    with path.open("rb") as upload:
        transcript = oai.audio.transcriptions.create(model=WHISPER, file=upload)
    assert _words(transcript.text) == _words(SENTENCE)


def test_speech_is_mp3_by_default_as_openais_and_opus_on_request(oai: openai.OpenAI, tmp_path: Path) -> None:
    """Code written for OpenAI saves ``speech.mp3`` without naming a format: it gets MP3."""
    speech = oai.audio.speech.create(model=TTS, input=SENTENCE, voice="alloy")
    assert speech.response.headers["content-type"] == "audio/mpeg"
    assert soundfile.info(io.BytesIO(speech.content)).format == "MP3"
    path = tmp_path / "speech.mp3"
    speech.write_to_file(path)
    with path.open("rb") as upload:  # the server reads MP3 uploads too
        transcript = oai.audio.transcriptions.create(model=WHISPER, file=upload)
    assert _words(transcript.text) == _words(SENTENCE)
    opus = oai.audio.speech.create(model=TTS, input="One two three.", voice="alloy", response_format="opus")
    info = soundfile.info(io.BytesIO(opus.content))
    assert (info.format, info.subtype, info.samplerate) == ("OGG", "OPUS", 24_000)


def test_speech_as_flac_and_raw_pcm(oai: openai.OpenAI) -> None:
    flac = oai.audio.speech.create(model=TTS, input="One two three.", voice="alloy", response_format="flac")
    samples, rate = soundfile.read(io.BytesIO(flac.content))
    pcm = oai.audio.speech.create(model=TTS, input="One two three.", voice="alloy", response_format="pcm")
    raw = np.frombuffer(pcm.content, dtype="<i2")
    assert rate == 24_000
    assert len(raw) == len(samples)
    assert np.abs(raw / 32767.0 - samples).max() < 2e-4


@pytest.fixture(scope="module")
def fox_wav(oai: openai.OpenAI, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("audio") / "fox.wav"
    path.write_bytes(
        oai.audio.speech.create(model=TTS, input=SENTENCE, voice="alloy", response_format="wav").content
    )
    return path


def test_transcription_formats(oai: openai.OpenAI, fox_wav: Path) -> None:
    with fox_wav.open("rb") as upload:
        verbose = oai.audio.transcriptions.create(
            model=WHISPER_EN, file=upload, response_format="verbose_json", timestamp_granularities=["segment"]
        )
    assert verbose.language == "en"
    assert verbose.segments and 0.0 < verbose.segments[0].start < 0.5  # Kokoro's lead-in is silent
    assert verbose.duration == pytest.approx(soundfile.info(fox_wav).duration, abs=0.01)
    for response_format, pattern in (
        ("text", r"(?i)quick brown fox"),
        ("srt", r"^1\n00:00:00,\d{3} --> 00:00:0\d,\d{3}\n"),
        ("vtt", r"^WEBVTT\n\n1\n00:00:00\.\d{3} --> "),
    ):
        with fox_wav.open("rb") as upload:
            text = oai.audio.transcriptions.create(
                model=WHISPER_EN,
                file=upload,
                response_format=response_format,  # type: ignore[call-overload]
            )
        assert re.search(pattern, str(text)), (response_format, text)


def test_word_timestamps_as_openai_gives_them(oai: openai.OpenAI, server: HttpServer, fox_wav: Path) -> None:
    with fox_wav.open("rb") as upload:
        words_only = oai.audio.transcriptions.create(
            model=WHISPER_EN, file=upload, response_format="verbose_json", timestamp_granularities=["word"]
        )
    assert words_only.words and words_only.segments is None  # as OpenAI's: words alone, unless both
    spoken = [word.word for word in words_only.words]
    assert spoken == re.findall(r"[\w']+", words_only.text), (spoken, words_only.text)  # no punctuation
    assert all(0 <= w.start <= w.end <= words_only.duration for w in words_only.words)
    assert [w.start for w in words_only.words] == sorted(w.start for w in words_only.words)
    with fox_wav.open("rb") as upload:
        both = oai.audio.transcriptions.create(
            model=WHISPER_EN,
            file=upload,
            response_format="verbose_json",
            timestamp_granularities=["word", "segment"],
        )
    assert both.segments and both.words == words_only.words
    translated = httpx.post(
        f"{server.url}/v1/audio/translations",
        headers=server.headers,
        files={"file": ("fox.wav", fox_wav.read_bytes(), "audio/wav")},
        data={"model": WHISPER, "response_format": "verbose_json", "timestamp_granularities[]": "word"},
        timeout=120,
    )
    assert translated.status_code == 400, translated.text
    error = translated.json()["error"]
    assert error["param"] == "timestamp_granularities" and "transcriptions only" in error["message"], error


def test_translation_to_english(server: HttpServer, fox_wav: Path) -> None:
    # openai's client marks translations deprecated; the route is used here with a plain HTTP client
    reply = httpx.post(
        f"{server.url}/v1/audio/translations",
        headers=server.headers,
        files={"file": ("fox.wav", fox_wav.read_bytes(), "audio/wav")},
        data={"model": WHISPER},
        timeout=120,
    )
    assert reply.status_code == 200, reply.text
    assert "fox" in reply.json()["text"].lower()
    english_only = httpx.post(
        f"{server.url}/v1/audio/translations",
        headers=server.headers,
        files={"file": ("fox.wav", fox_wav.read_bytes(), "audio/wav")},
        data={"model": WHISPER_EN},
        timeout=120,
    )
    assert english_only.status_code == 400
    assert english_only.json()["error"]["type"] == "invalid_request_error"
    assert english_only.json()["error"]["param"] == "model", english_only.json()
    unknown_language = httpx.post(
        f"{server.url}/v1/audio/transcriptions",
        headers=server.headers,
        files={"file": ("fox.wav", fox_wav.read_bytes(), "audio/wav")},
        data={"model": WHISPER, "language": "xx"},
        timeout=120,
    )
    assert unknown_language.status_code == 400
    assert unknown_language.json()["error"]["param"] == "language", unknown_language.json()


def test_rerank_orders_documents_like_the_tool(server: HttpServer) -> None:
    documents = ["Bananas are yellow.", {"text": "Paris is the capital of France."}, "Cats purr."]
    reply = _post(
        server, "/v1/rerank", {"model": RERANKER, "query": "capital of France", "documents": documents}
    )
    assert reply.status_code == 200, reply.text
    results = reply.json()["results"]
    assert results[0]["index"] == 1
    assert results[0]["document"] == {"text": "Paris is the capital of France."}
    assert results[0]["relevance_score"] > 0.5 > results[-1]["relevance_score"]
    top = _post(server, "/v1/rerank", {"model": RERANKER, "query": "x", "documents": ["a", "b"], "top_n": 1})
    assert len(top.json()["results"]) == 1


def test_models_are_loaded_and_unloaded_over_rest(server: HttpServer) -> None:
    name = "rest-reranker"  # a folder of the models directory under a name of the caller's own
    body = {
        "model": name,
        "model_path": RERANKER,
        "model_type": "reranker",
        "runtime_config": {"max_length": 128},
    }
    loaded = _post(server, "/v1/models/load", body)
    assert loaded.status_code == 200, loaded.text
    model = loaded.json()
    assert (model["id"], model["type"], model["status"], model["device"]) == (
        name,
        "reranker",
        "loaded",
        "CPU",
    )
    assert model["load_time_s"] > 0
    listed = httpx.get(f"{server.url}/v1/models/{name}", headers=server.headers, timeout=10).json()
    assert listed["status"] == "loaded"
    in_use = _post(server, "/v1/models/load", body)
    assert in_use.status_code == 409, in_use.text
    assert (
        in_use.json()["error"]["code"] == "model_exists"
        and "unload it first" in in_use.json()["error"]["message"]
    )
    ranked = _post(
        server, "/v1/rerank", {"model": name, "query": "capital of France", "documents": ["Paris.", "Cats."]}
    )
    assert ranked.json()["results"][0]["index"] == 0, ranked.text
    unloaded = _post(server, "/v1/models/unload", {"model": name})
    assert unloaded.status_code == 200, unloaded.text
    assert unloaded.json()["status"] == "unloaded"
    gone = _post(server, "/v1/models/unload", {"model": name})
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "model_not_found", gone.text
    assert httpx.get(f"{server.url}/v1/models/{name}", headers=server.headers, timeout=10).status_code == 404


def test_a_load_refused_for_an_argument_is_a_400_naming_it_and_the_name_can_be_loaded_again(
    server: HttpServer,
) -> None:
    body: dict[str, Any] = {"model": "rest-embedder", "model_path": EMBEDDER, "model_type": "embedding"}
    failed = _post(server, "/v1/models/load", {**body, "runtime_config": {"pooling": "sideways"}})
    assert failed.status_code == 400 and "Retry-After" not in failed.headers, failed.text
    error = failed.json()["error"]
    assert error["code"] == "model_load_refused" and error["param"] == "runtime_config", error
    assert "runtime_config option pooling 'sideways'" in error["message"], error
    record = next(m for m in _models(server) if m["id"] == "rest-embedder")
    assert record["status"] == "failed" and "pooling" in record["error"], record
    used = _post(server, "/v1/embeddings", {"model": "rest-embedder", "input": "hi"})
    assert used.status_code == 503 and used.json()["error"]["code"] == "model_failed", used.text
    assert used.headers["x-should-retry"] == "false" and "Retry-After" not in used.headers  # not a wait
    loaded = _post(server, "/v1/models/load", body)  # the failed name is free: no unload first
    assert loaded.status_code == 200 and loaded.json()["status"] == "loaded", loaded.text
    assert _post(server, "/v1/models/unload", {"model": "rest-embedder"}).status_code == 200


def test_a_device_not_on_this_machine_is_refused_naming_those_it_has(server: HttpServer) -> None:
    body: dict[str, Any] = {"model": "rest-device", "model_path": EMBEDDER, "model_type": "embedding"}
    for device, named in (
        ("tpu", "device 'TPU' is not"),
        ("AUTO:TPU,XPU", "none of the devices in 'AUTO:TPU,XPU' is"),
    ):
        refused = _post(server, "/v1/models/load", {**body, "device": device})
        assert refused.status_code == 400, refused.text
        error = refused.json()["error"]
        assert error["param"] == "device" and error["code"] == "model_load_refused", error
        assert f"{named} on this machine; its devices: CPU" in error["message"], error
        assert "src/" not in error["message"] and ".cpp" not in error["message"], error
    bogus = _post(server, "/v1/models/load", {**body, "runtime_config": {"PERFORMANCE_HINT": "BOGUS"}})
    assert bogus.status_code == 400 and bogus.json()["error"]["param"] == "runtime_config", bogus.text
    message = bogus.json()["error"]["message"]  # OpenVINO's reason, without its source locations
    assert "Wrong value BOGUS" in message and "PERFORMANCE_HINT" in message and ".cpp" not in message, message
    loaded = _post(server, "/v1/models/load", {**body, "device": " cpu"})  # OpenVINO's names are upper case
    assert loaded.status_code == 200 and loaded.json()["device"] == "CPU", loaded.text
    assert _post(server, "/v1/models/unload", {"model": "rest-device"}).status_code == 200


@pytest.mark.parametrize(
    ("path", "body", "param", "words"),
    [
        ("/v1/models/load", {"model": "x", "frobnicate": 1}, "frobnicate", "unsupported parameter"),
        ("/v1/models/load", {"model": "../up"}, "model", "invalid 'model'"),
        ("/v1/models/load", {"model": "nothing-here"}, "model", "nothing-here"),
        (
            "/v1/models/load",
            {"model": "x", "model_path": "/etc", "model_type": "llm"},
            "model",
            "/etc is outside the folders this server loads models from",
        ),
        ("/v1/models/load", {"model": "x", "model_type": "sound"}, "model_type", "invalid 'model_type'"),
        ("/v1/models/unload", {}, "model", "missing required parameter 'model'"),
    ],
)
def test_bad_model_management_requests_are_400_naming_the_problem(
    server: HttpServer, path: str, body: dict[str, Any], param: str, words: str
) -> None:
    reply = _post(server, path, body)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["param"] == param and words in error["message"], error
    assert "nothing-here" not in {model["id"] for model in _models(server)}  # nothing claimed the name


def test_devices_are_listed(server: HttpServer) -> None:
    index = httpx.get(f"{server.url}/", headers=server.headers, timeout=10).json()
    assert "/v1/devices" in index["models"] and "/v1/models/load" in index["models"], index
    reply = httpx.get(f"{server.url}/v1/devices", headers=server.headers, timeout=60)
    assert reply.status_code == 200, reply.text
    devices = {device["name"]: device for device in reply.json()["data"]}
    assert "CPU" in devices and devices["CPU"]["full_name"], devices


def test_a_model_whose_process_died_is_loaded_again_by_the_next_request(
    server: HttpServer, oai: openai.OpenAI
) -> None:
    assert oai.audio.speech.create(model=TTS, input="One.", voice="alloy").content
    pid = _model_details(server, TTS)["engine"]["process_id"]
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while next(m for m in _models(server) if m["id"] == TTS)["status"] != "failed":
        assert time.monotonic() < deadline, "the killed model is still reported loaded"
        time.sleep(0.1)
    failed = next(m for m in _models(server) if m["id"] == TTS)
    assert "exit code -9" in failed["error"], failed
    speech = oai.audio.speech.create(model=TTS, input="Back again.", voice="alloy")
    assert len(soundfile.read(io.BytesIO(speech.content))[0]) > 24_000 * 0.3
    assert _model_details(server, TTS)["engine"]["process_id"] != pid


def _models(server: HttpServer) -> list[dict[str, Any]]:
    reply = httpx.get(f"{server.url}/v1/models", headers=server.headers, timeout=10)
    return list(reply.json()["data"])


@pytest.mark.anyio
async def test_chat_with_an_image_goes_to_the_vlm(server: HttpServer, tmp_path: Path) -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(
        buffer, "PNG"
    )
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    content = [
        {"type": "text", "text": "What is in the picture?"},
        {"type": "image_url", "image_url": {"url": url}},
    ]
    body = {
        "model": VLM,
        "messages": [{"role": "user", "content": content}],
        "temperature": 0,
        "max_tokens": 8,
    }
    reply = _post(server, "/v1/chat/completions", body)
    assert reply.status_code == 200, reply.text
    async with _mcp_http(server) as client:
        tool = structured(
            await client.call_tool(
                "describe_image",
                {"model": VLM, "messages": body["messages"], "temperature": 0, "max_tokens": 8},
            )
        )
    assert reply.json()["choices"][0]["message"]["content"] == tool["text"]
    to_llm = _post(server, "/v1/chat/completions", {**body, "model": LLM})
    assert to_llm.status_code == 400
    assert "vlm" in to_llm.json()["error"]["message"]
    text_turn = {**body, "messages": [{"role": "user", "content": "Hello!"}]}  # a chat UI's first turn
    answered = _post(server, "/v1/chat/completions", text_turn)
    assert answered.status_code == 200 and answered.json()["choices"][0]["finish_reason"], answered.text
    async with _mcp_http(server) as client:  # the tool is for images: it still asks for one
        refused = await client.call_tool("describe_image", {"model": VLM, "prompt": "Hello!"})
    assert refused.is_error and "no image given" in refused.content[0].text  # type: ignore[union-attr]


# ----- errors ------------------------------------------------------------------------------------


def test_a_wrong_key_is_401_and_liveness_needs_none(server: HttpServer) -> None:
    with (
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0) as wrong,
        pytest.raises(openai.AuthenticationError),
    ):
        wrong.models.list()
    assert httpx.get(f"{server.url}/v1/models", timeout=10).status_code == 401
    assert httpx.get(f"{server.url}/readyz", timeout=10).status_code == 401
    assert httpx.get(f"{server.url}/healthz", timeout=10).json() == {"status": "ok"}
    ready = httpx.get(f"{server.url}/readyz", headers=server.headers, timeout=10).json()
    assert ready == {"status": "ready", "models": {LLM: {"status": "loaded"}, EMBEDDER: {"status": "loaded"}}}


def test_an_unknown_model_is_404(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        oai.chat.completions.create(model="no-such-model", messages=QUESTION)
    assert "no model named 'no-such-model'" in str(raised.value)
    with pytest.raises(openai.NotFoundError):
        oai.models.retrieve("no-such-model")


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"response_format": {"type": "xml"}}, "response_format"),
        ({"response_format": {"type": "json_schema"}}, "response_format"),
        ({"frobnicate": 1}, "frobnicate"),
        ({"temperature": 3}, "temperature"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"stop": [""]}, "stop"),
        ({"max_tokens": True}, "max_tokens"),  # types as OpenAI checks them: nothing converted
        ({"max_tokens": "3"}, "max_tokens"),
        ({"temperature": False}, "temperature"),
        ({"stream": "yes"}, "stream"),
        ({"stream": 1}, "stream"),
    ],
)
def test_unsupported_or_invalid_parameters_are_400_naming_them(
    server: HttpServer, extra: dict[str, Any], param: str
) -> None:
    reply = _post(server, "/v1/chat/completions", {"model": LLM, "messages": QUESTION, **extra})
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert param in error["message"]


def test_other_routes_take_no_converted_types_either(server: HttpServer) -> None:
    for path, body, param in (
        ("/v1/embeddings", {"model": EMBEDDER, "input": "hi", "dimensions": True}, "dimensions"),
        ("/v1/rerank", {"model": RERANKER, "query": "q", "documents": ["a"], "top_n": "1"}, "top_n"),
        ("/v1/audio/speech", {"model": TTS, "input": "Hi.", "speed": True}, "speed"),
    ):
        reply = _post(server, path, body)
        assert reply.status_code == 400 and reply.json()["error"]["param"] == param, (path, reply.text)


def test_errors_name_the_parameters_as_rest_calls_them(server: HttpServer) -> None:
    for path, body, param, said in (
        ("/v1/embeddings", {"model": EMBEDDER, "input": []}, "input", "'input' is empty"),
        ("/v1/embeddings", {"model": EMBEDDER, "input": ["a", " "]}, "input", "input[1] is empty"),
        ("/v1/audio/speech", {"model": TTS, "input": "\u200b"}, "input", "'input' is empty"),
        (  # a document fits neither a string nor {text}: told of the key {text} does not have
            "/v1/rerank",
            {"model": RERANKER, "query": "q", "documents": [{"text": "a", "title": "x"}]},
            "documents.0.title",
            "unsupported parameter 'documents.0.title'",
        ),
        (
            "/v1/rerank",
            {"model": RERANKER, "query": "q", "documents": [{"body": "a"}]},
            "documents.0.text",
            "missing required parameter 'documents.0.text'",
        ),
    ):
        reply = _post(server, path, body)
        assert reply.status_code == 400, (path, reply.text)
        error = reply.json()["error"]
        assert error["param"] == param and error["message"].startswith(said), (path, error)


def test_a_speech_voice_at_fault_is_named(server: HttpServer) -> None:
    unknown = _post(server, "/v1/audio/speech", {"model": TTS, "input": "Hi.", "voice": "bogus"})
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "voice", unknown.text
    assert "unknown voice 'bogus'; this model has: " in unknown.json()["error"]["message"]
    empty = _post(server, "/v1/audio/speech", {"model": TTS, "input": "Hi.", "voice": ""})
    assert empty.status_code == 400 and empty.json()["error"]["param"] == "voice", empty.text


def test_malformed_bodies_get_clear_errors(server: HttpServer, fox_wav: Path) -> None:
    url = f"{server.url}/v1/chat/completions"
    not_json = httpx.post(
        url, content=b"{nope", headers={**server.headers, "Content-Type": "application/json"}
    )
    assert not_json.status_code == 400
    assert "not valid JSON" in not_json.json()["error"]["message"]
    for path, field in (
        ("/v1/chat/completions", '"messages": [{"role": "user", "content": "a\\ud800"}]'),
        ("/v1/completions", '"prompt": "\\udfff b"'),
    ):  # a lone surrogate: not Unicode
        lone = httpx.post(
            f"{server.url}{path}",
            content=f'{{"model": "{LLM}", {field}}}'.encode(),
            headers={**server.headers, "Content-Type": "application/json"},
        )
        assert lone.status_code == 400, lone.text
        assert lone.json()["error"]["code"] == "invalid_json"
    wrong_type = httpx.post(url, content=b"x=1", headers={**server.headers, "Content-Type": "text/plain"})
    assert wrong_type.status_code == 415
    missing = _post(server, "/v1/embeddings", {"model": EMBEDDER})
    assert missing.json()["error"]["param"] == "input"
    no_route = httpx.get(f"{server.url}/v1/nothing", headers=server.headers)
    assert no_route.status_code == 404
    assert "error" in no_route.json()
    wrong_method = httpx.get(f"{server.url}/v1/embeddings", headers=server.headers)
    assert wrong_method.status_code == 405
    assert "POST" in wrong_method.headers["allow"]  # RFC 9110: a 405 names the methods that work
    assert "error" in wrong_method.json()
    for action in ("load", "unload"):  # not taken for a model of that name
        get_action = httpx.get(f"{server.url}/v1/models/{action}", headers=server.headers)
        assert get_action.status_code == 405 and get_action.headers["allow"] == "POST", get_action.text
        assert f"POST /v1/models/{action}" in get_action.json()["error"]["message"]
    no_file = httpx.post(
        f"{server.url}/v1/audio/transcriptions", headers=server.headers, data={"model": WHISPER}, files={}
    )
    assert no_file.status_code in (400, 415)
    as_text = httpx.post(  # curl -F file=<x.wav: the file's content as a text field
        f"{server.url}/v1/audio/transcriptions",
        headers=server.headers,
        data={"model": WHISPER},
        files={"file": (None, b"RIFF....WAVE")},  # a part without a filename
    )
    assert as_text.status_code == 400 and "must be a file upload" in as_text.json()["error"]["message"]
    twice = httpx.post(  # two models: which one was meant is not the server's to guess
        f"{server.url}/v1/audio/transcriptions",
        headers=server.headers,
        data={"model": [WHISPER, "whisper-base-int8"]},
        files={"file": ("fox.wav", fox_wav.read_bytes())},
    )
    assert twice.status_code == 400, twice.text
    assert twice.json()["error"]["param"] == "model", twice.text
    assert twice.json()["error"]["message"] == "'model' is given 2 times; send it once", twice.text
    not_audio = httpx.post(
        f"{server.url}/v1/audio/transcriptions",
        headers=server.headers,
        data={"model": WHISPER},
        files={"file": ("notes.wav", b"these are words, not sound " * 10)},
    )
    assert not_audio.status_code == 400
    error = not_audio.json()["error"]
    assert error["param"] == "file"
    assert error["message"].startswith("'file' is not audio soundfile can read"), error  # the caller's name
    assert "object at 0x" not in error["message"]
    wrong_type = httpx.post(  # a loaded model of another type: the model is at fault, not the audio
        f"{server.url}/v1/audio/transcriptions",
        headers=server.headers,
        data={"model": EMBEDDER},
        files={"file": ("fox.wav", fox_wav.read_bytes())},
    )
    assert wrong_type.status_code == 400, wrong_type.text
    assert wrong_type.json()["error"] == {
        "message": f"model '{EMBEDDER}' is of type 'embedding'; this call needs a model of type 'whisper'",
        "type": "invalid_request_error",
        "param": "model",
        "code": "wrong_model_type",
    }


def test_foreign_host_and_origin_are_refused(server: HttpServer) -> None:
    for path in ("/v1/models", "/mcp"):
        foreign = httpx.get(f"{server.url}{path}", headers={**server.headers, "Host": "evil.example"})
        assert foreign.status_code == 421, path
    origin = httpx.get(
        f"{server.url}/v1/models", headers={**server.headers, "Origin": "https://evil.example"}
    )
    assert origin.status_code == 403
    local_origin = httpx.get(
        f"{server.url}/v1/models", headers={**server.headers, "Origin": "http://localhost:3000"}
    )
    assert local_origin.status_code == 200
    assert "access-control-allow-origin" not in local_origin.headers  # no CORS unless origins are configured


def test_oversize_bodies_are_413(server: HttpServer) -> None:
    huge = {"model": EMBEDDER, "input": "x" * (BODY_LIMIT + 10)}
    assert _post(server, "/v1/embeddings", huge).status_code == 413
    mcp = httpx.post(
        f"{server.url}/mcp",
        content=b" " * (BODY_LIMIT + 10),
        headers={**server.headers, "Content-Type": "application/json"},
    )
    assert mcp.status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        for _ in range(BODY_LIMIT // 65536 + 2):
            yield b" " * 65536

    chunked = httpx.post(
        f"{server.url}/v1/embeddings",
        content=chunks(),
        headers={**server.headers, "Content-Type": "application/json"},
    )
    assert chunked.status_code == 413
    assert _post(server, "/v1/embeddings", {"model": EMBEDDER, "input": "still fine"}).status_code == 200


def test_client_disconnect_cancels_the_generation(server: HttpServer, oai: openai.OpenAI) -> None:
    before = _model_details(server, LLM)["cancelled_requests"]
    body = {
        "model": LLM,
        "messages": [{"role": "user", "content": "Write a very long essay about the history of Europe."}],
        "max_tokens": 4000,
        "temperature": 0,
        "stream": True,
    }
    with (
        httpx.Client(timeout=60) as http,
        http.stream("POST", f"{server.url}/v1/chat/completions", json=body, headers=server.headers) as reply,
    ):
        assert reply.status_code == 200
        next(reply.iter_lines())  # the first text has arrived; now hang up
    deadline = time.monotonic() + 20
    while _model_details(server, LLM)["cancelled_requests"] == before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _model_details(server, LLM)["cancelled_requests"] == before + 1
    started = time.monotonic()
    quick = oai.chat.completions.create(model=LLM, messages=QUESTION, max_tokens=4)
    assert quick.choices[0].message.content
    assert time.monotonic() - started < 30  # the worker is free again, not still writing the essay


def _model_details(server: HttpServer, name: str) -> dict[str, Any]:
    async def read() -> dict[str, Any]:
        async with _mcp_http(server) as client:
            result = await client.read_resource(f"openarc://models/{name}")
        return dict(json.loads(getattr(result.contents[0], "text", "{}")))

    with ThreadPoolExecutor(1) as pool:  # a thread of its own: this one may have a running loop
        return pool.submit(anyio.run, read).result(timeout=60)


# ----- MCP over HTTP and SSE ---------------------------------------------------------------------


@asynccontextmanager
async def _mcp_http(server: HttpServer) -> AsyncIterator[Client]:
    """An MCP client over streamable HTTP with the key (the SDK leaves a given HTTP client open)."""
    async with (
        httpx2.AsyncClient(headers=server.headers, timeout=120) as http,
        Client(streamable_http_client(f"{server.url}/mcp", http_client=http)) as client,
    ):
        yield client


@pytest.mark.parametrize(
    ("message", "answer"),
    [
        (
            {"jsonrpc": "2.0", "id": None, "method": "tools/list"},
            (None, "'id' must be a string or an integer"),
        ),
        ({"jsonrpc": "2.0", "id": True, "method": "ping"}, (None, "'id' must be a string or an integer")),
        ({"jsonrpc": "1.0", "id": 9, "method": "ping"}, (9, "Invalid Request: jsonrpc")),
        ({"jsonrpc": "2.0", "id": 10, "method": "ping", "params": [1]}, (10, "Invalid Request: params")),
        ([{"jsonrpc": "2.0", "id": 11, "method": "ping"}], (None, "no batches")),
    ],
    ids=["null-id", "true-id", "jsonrpc-1.0", "array-params", "batch"],
)
def test_invalid_json_rpc_over_mcp_is_answered_as_stdio_answers_it(
    server: HttpServer, message: Any, answer: tuple[Any, str]
) -> None:
    """The SDK answered the first two with 202 and no body, the others with a -32602 dump of its
    own types and a null id."""
    headers = {**server.headers, "Accept": "application/json, text/event-stream"}
    reply = httpx.post(f"{server.url}/mcp", json=message, headers=headers, timeout=30)
    assert reply.status_code == 400, reply.text
    error = reply.json()
    assert error["id"] == answer[0] and error["error"]["code"] == -32600, error
    assert answer[1] in error["error"]["message"] and len(error["error"]["message"]) < 300, error


LONG_STORY = "Write a very long story about a lighthouse keeper, with many chapters."


@pytest.mark.anyio
async def test_a_request_reusing_the_id_of_one_in_flight_is_refused_and_the_first_is_answered(
    server: HttpServer,
) -> None:
    """The SDK matched answers by id alone: the first request's stream got keep-alives for ever.
    (The first takes seconds: 300 tokens; the second is sent 0.3 s after it.)"""
    headers = {**server.headers, "Accept": "application/json, text/event-stream"}
    hello = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
    call = {
        "jsonrpc": "2.0",
        "id": "dup",
        "method": "tools/call",
        "params": {
            "name": "generate",
            "arguments": {"model": LLM, "prompt": LONG_STORY, "max_tokens": 300},
        },
    }
    async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=60) as http:
        opened = await http.post(
            "/mcp", json={"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": hello}
        )
        session = {"Mcp-Session-Id": opened.headers["mcp-session-id"], "MCP-Protocol-Version": "2025-11-25"}
        await http.post(
            "/mcp", json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=session
        )
        answers: dict[str, httpx.Response] = {}

        async def send(label: str, delay: float) -> None:
            await anyio.sleep(delay)
            answers[label] = await http.post("/mcp", json=call, headers=session)

        with anyio.fail_after(60):  # keep-alive pings would hold a read timeout off for ever
            async with anyio.create_task_group() as group:
                group.start_soon(send, "first", 0)
                group.start_soon(send, "second", 0.3)
    second = answers["second"].json()
    assert second["id"] == "dup" and second["error"]["code"] == -32600, second
    assert "in use by a request still being answered" in second["error"]["message"]
    assert '"result"' in answers["first"].text and '"isError":false' in answers["first"].text.replace(" ", "")


@asynccontextmanager
async def _mcp_sse(server: HttpServer) -> AsyncIterator[Client]:
    async with Client(sse_client(f"{server.url}/sse", headers=server.headers, timeout=30)) as client:
        yield client


@pytest.mark.parametrize("connect", [_mcp_http, _mcp_sse], ids=["streamable-http", "sse"])
@pytest.mark.anyio
async def test_mcp_lists_tools_and_streams_generate_progress(server: HttpServer, connect: Any) -> None:
    messages: list[str] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        messages.append(message or "")

    async with connect(server) as client:
        tools = {tool.name for tool in (await client.list_tools()).tools}
        assert {"generate", "describe_image", "embed", "rerank", "transcribe", "speak"} <= tools
        result = await client.call_tool(
            "generate",
            {
                "model": LLM,
                "prompt": "Count from one to twenty in words.",
                "temperature": 0,
                "max_tokens": 60,
            },
            progress_callback=on_progress,
        )
    text = structured(result)["text"]
    assert len(messages) >= 2
    assert "".join(messages) == text


@pytest.mark.anyio
async def test_two_sse_connections_share_one_model_loaded_once(server: HttpServer) -> None:
    arguments = {"model": RERANKER, "query": "capital of France", "documents": ["Paris.", "Bananas."]}
    results: list[dict[str, Any]] = []
    async with _mcp_sse(server) as client:  # start from 'not loaded' (other tests may have used it)
        await client.call_tool("unload_model", {"model_name": RERANKER})
    loads_before = server.log_text().count(f"loading model '{RERANKER}'")

    async def rank() -> None:
        async with _mcp_sse(server) as client:
            results.append(structured(await client.call_tool("rerank", arguments)))

    async with anyio.create_task_group() as group:
        group.start_soon(rank)
        group.start_soon(rank)
    assert results[0] == results[1]
    details = _model_details(server, RERANKER)
    assert details["record"]["status"] == "loaded"
    assert details["record"]["requests"] == 2
    assert server.log_text().count(f"loading model '{RERANKER}'") == loads_before + 1


def test_inspector_cli_over_http(server: HttpServer) -> None:
    if not INSPECTOR or not Path(INSPECTOR).is_file():
        if os.environ.get("CI"):
            pytest.fail("the MCP Inspector CLI is not installed; scripts/test.sh installs it with npm")
        pytest.skip("set OPENARC_INSPECTOR (scripts/test.sh installs the MCP Inspector CLI)")
    base = [INSPECTOR, "--cli", f"{server.url}/mcp", "--transport", "http"]
    auth = ["--header", f"Authorization: Bearer {API_KEY}"]
    listed = subprocess.run(
        [*base, *auth, "--method", "tools/list"], check=False, capture_output=True, text=True, timeout=120
    )
    assert listed.returncode == 0, listed.stderr
    assert "generate" in {tool["name"] for tool in json.loads(listed.stdout)["tools"]}
    arguments = json.dumps({"model": LLM, "prompt": "What is the capital of France?", "temperature": 0})
    called = subprocess.run(
        [*base, *auth, "--method", "tools/call", "--tool-name", "generate", "--tool-args-json", arguments],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert called.returncode == 0, called.stderr
    assert "Paris" in called.stdout
    refused = subprocess.run(
        [*base, "--method", "tools/list"], check=False, capture_output=True, text=True, timeout=120
    )
    assert refused.returncode != 0


# ----- start-up refusals -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--host", "0.0.0.0"], "without an API key"),
        (["--allowed-hosts", "*"], "needs an API key"),
        (["--allowed-origins", "*"], "cannot be '*'"),
    ],
)
def test_unsafe_serving_is_refused_at_start(flags: list[str], message: str, tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key != "OPENARC_API_KEY"}
    env["OPENARC_MODELS_DIR"] = str(tmp_path)
    command = [
        sys.executable,
        "-m",
        "openarc_mcp",
        "serve",
        "--transport",
        "http",
        "--port",
        str(free_port()),
    ]
    completed = subprocess.run(
        [*command, *flags], env=env, check=False, capture_output=True, text=True, timeout=60
    )
    assert completed.returncode != 0
    assert message in completed.stderr
    assert completed.stdout == ""


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def test_a_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    env = {**os.environ, "OPENARC_MODELS_DIR": str(tmp_path)}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        command = [sys.executable, "-m", "openarc_mcp", "serve", "--transport", "http", "--port", port]
        completed = subprocess.run(command, env=env, check=False, capture_output=True, text=True, timeout=60)
    assert completed.returncode == 1
    assert "is the port in use?" in completed.stderr
    assert "Traceback" not in completed.stderr


@pytest.mark.anyio
async def test_remote_callers_cannot_make_the_server_read_its_files(
    server: HttpServer, fox_wav: Path
) -> None:
    content = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "/etc/hostname"}},
    ]
    body = {"model": VLM, "messages": [{"role": "user", "content": content}], "max_tokens": 4}
    reply = _post(server, "/v1/chat/completions", body)
    assert reply.status_code == 400
    assert "file paths are not accepted" in reply.json()["error"]["message"]
    assert reply.json()["error"]["param"] == "messages.0.content.1", reply.text  # the image at fault
    encoded = base64.b64encode(await anyio.Path(fox_wav).read_bytes()).decode()
    async with _mcp_http(server) as client:
        by_path = await client.call_tool("transcribe", {"model": WHISPER_EN, "audio": str(fox_wav)})
        as_data = await client.call_tool("transcribe", {"model": WHISPER_EN, "audio": encoded})
    assert by_path.is_error
    assert "file paths are not accepted" in getattr(by_path.content[0], "text", "")
    assert "fox" in structured(as_data)["text"].lower()


def test_parameters_with_their_own_definitions_are_held_to(oai: openai.OpenAI) -> None:
    """Schemas as pydantic writes them: "$ref": "#/$defs/..." resolved within the function."""
    place = {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 30},
            "country": {"type": "string", "maxLength": 30},
        },
        "required": ["city", "country"],
        "additionalProperties": False,
    }
    parameters = {
        "type": "object",
        "properties": {"place": {"$ref": "#/$defs/Place"}},
        "required": ["place"],
        "additionalProperties": False,
        "$defs": {"Place": place},
    }
    tool: Any = {"type": "function", "function": {"name": "get_weather", "parameters": parameters}}
    reply = oai.chat.completions.create(
        model=LLM, messages=WEATHER_QUESTION, tools=[tool], tool_choice="required", parallel_tool_calls=False,
        temperature=0, max_tokens=200,
    )  # fmt: skip
    calls = reply.choices[0].message.tool_calls or []
    assert reply.choices[0].finish_reason == "tool_calls" and len(calls) == 1
    assert calls[0].type == "function"
    arguments = json.loads(calls[0].function.arguments)
    assert set(arguments) == {"place"} and set(arguments["place"]) == {"city", "country"}, arguments


def _raw(server: HttpServer, request: bytes, wait_s: float = 10) -> bytes:
    """What the server answers to ``request`` sent on a socket of its own, until it closes it."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=wait_s) as connection:
        connection.sendall(request)
        received = b""
        while chunk := connection.recv(65536):
            received += chunk
        return received


def test_a_body_framed_two_ways_is_refused_before_it_is_read(server: HttpServer) -> None:
    """Content-Length within the limit beside chunked framing let any size of body through."""
    head = (
        f"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {API_KEY}\r\n"
        "Content-Type: application/json\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    first_chunk = b"%x\r\n%s\r\n" % (60_000, b'{"input": "' + b"a" * (60_000 - 11))
    answer = _raw(server, head + first_chunk, wait_s=30)  # refused before the rest would be sent
    assert answer.startswith(b"HTTP/1.1 400"), answer[:300]
    assert b"not both" in answer


def test_a_connection_that_stalls_in_its_headers_is_closed(server: HttpServer) -> None:
    """No key is needed to open connections: one that never finishes its headers must not stay."""
    started = time.monotonic()
    answer = _raw(server, b"GET /v1/models HTTP/1.1\r\nHost: local", wait_s=60)
    assert answer == b"" and time.monotonic() - started < 30
