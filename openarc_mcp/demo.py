"""``openarc-mcp demo``: the server driven exactly as an MCP host drives it, with results shown.

Prepares the default models if needed, launches ``openarc-mcp serve`` as a subprocess over stdio,
and calls its tools with the MCP client: list tools, read resources, load, generate (streaming the
partial text from progress notifications), chat, JSON held to a schema, embed (similarities),
rerank, speak (to a file), transcribe that file back (when a Whisper model can be prepared),
unload. Output goes to stdout; this command is not a protocol wire.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import anyio
from mcp import Client, StdioServerParameters
from mcp.types import CallToolResult

from .errors import CatalogueError, ServerFault
from .library import (
    DEFAULT_EMBEDDING,
    DEFAULT_LLM,
    DEFAULT_RERANKER,
    DEFAULT_TTS,
    DEFAULT_WHISPER,
)
from .library.prepare import prepare_models
from .settings import Settings

__all__ = ["run_demo"]


def run_demo(settings: Settings, model: str | None, prompt: str) -> int:
    """Prepare, serve, call; returns the process exit code."""
    name = model or DEFAULT_LLM
    names = [name, DEFAULT_EMBEDDING, DEFAULT_RERANKER, DEFAULT_TTS]
    _say(f"== preparing {', '.join(names)} in {settings.models_dir} (skipped when already done)\n")
    prepare_models(names, settings.models_dir)
    whisper = _prepare_whisper(settings)
    return anyio.run(_drive, settings, name, prompt, whisper)


def _prepare_whisper(settings: Settings) -> bool:
    """Whisper needs the convert extra to prepare; without it the demo says how to get it."""
    try:
        prepare_models([DEFAULT_WHISPER], settings.models_dir)
    except CatalogueError as exc:
        _say(f"== (transcribe will be skipped: {exc})\n")
        return False
    return True


def _server_parameters(settings: Settings) -> StdioServerParameters:
    env = {key: value for key, value in os.environ.items() if not key.startswith("OPENARC_")}
    env |= {
        "OPENARC_MODELS_DIR": str(settings.models_dir),
        "OPENARC_DEVICE": settings.device,
        "OPENARC_LOG_LEVEL": "WARNING",
    }
    if settings.output_dir is not None:
        env["OPENARC_OUTPUT_DIR"] = str(settings.output_dir)
    return StdioServerParameters(command=sys.executable, args=["-m", "openarc_mcp", "serve"], env=env)


async def _drive(settings: Settings, name: str, prompt: str, whisper: bool) -> int:
    started = time.perf_counter()
    async with Client(_server_parameters(settings), mode="legacy") as client:
        _say(f"== connected over stdio in {time.perf_counter() - started:.2f} s\n")
        tools = await client.list_tools()
        _say("== tools: " + ", ".join(tool.name for tool in tools.tools) + "\n")
        await _show_devices(client)
        loaded = _check(await client.call_tool("load_model", {"model_name": name}))
        _say(f"== loaded '{name}' in {loaded['load_time_s']} s on {loaded['device']}\n")
        await _generate_streaming(client, name, prompt)
        await _chat(client, name)
        await _json_answer(client, name)
        await _similarity(client)
        await _ranking(client)
        spoken = await _speech(client)
        if whisper:
            await _transcription(client, spoken)
        await _show_models(client)
        unloaded = _check(await client.call_tool("unload_model", {"model_name": name}))
        _say(f"== unloaded '{name}': status {unloaded['status']}\n")
    return 0


async def _generate_streaming(client: Client, name: str, prompt: str) -> None:
    _say(f"== generate (greedy), streaming progress\n   prompt: {prompt}\n   answer: ")

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        _say(message or "")

    arguments = {"model": name, "prompt": prompt, "temperature": 0, "max_tokens": 64}
    result = _check(await client.call_tool("generate", arguments, progress_callback=on_progress))
    metrics, usage = result["metrics"], result["usage"]
    _say(
        f"\n   final text: {result['text']!r}\n   finish: {result['finish_reason']}, "
        f"{usage['prompt_tokens']} prompt + {usage['completion_tokens']} generated tokens, "
        f"TTFT {metrics['ttft_ms']:.0f} ms, {metrics['tokens_per_second']:.1f} tokens/s\n"
    )


async def _chat(client: Client, name: str) -> None:
    messages = [
        {"role": "system", "content": "You are a concise assistant."},
        {"role": "user", "content": "Name three primary colours."},
    ]
    arguments = {"model": name, "messages": messages, "temperature": 0, "max_tokens": 40}
    result = _check(await client.call_tool("generate", arguments))
    _say(f"== chat (system + user messages)\n   answer: {result['text']}\n")


CITY_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 40},
        "country": {"type": "string", "maxLength": 40},
    },
    "required": ["city", "country"],
    "additionalProperties": False,
}


async def _json_answer(client: Client, name: str) -> None:
    prompt = "What is the capital of France? Answer in JSON with city and country."
    arguments = {
        "model": name,
        "prompt": prompt,
        "temperature": 0,
        "max_tokens": 60,
        "json_schema": CITY_SCHEMA,
    }
    result = _check(await client.call_tool("generate", arguments))
    _say(f"== generate held to a JSON Schema ({{city, country}})\n   answer: {result['text']}\n")


SENTENCES = [
    "What is the capital of France?",
    "Paris is the capital and largest city of France.",
    "Cats are small domesticated mammals.",
]


async def _similarity(client: Client) -> None:
    arguments = {"model": DEFAULT_EMBEDDING, "texts": SENTENCES}
    result = _check(await client.call_tool("embed", arguments))
    vectors = result["embeddings"]
    _say(f"== embed ({DEFAULT_EMBEDDING}, loaded on first use): {result['dimensions']} dimensions\n")
    for other in (1, 2):
        cosine = sum(a * b for a, b in zip(vectors[0], vectors[other], strict=True))
        _say(f"   cosine({SENTENCES[0]!r}, {SENTENCES[other]!r}) = {cosine:.3f}\n")
    async with anyio.create_task_group() as group:  # concurrent calls: the worker coalesces them
        for index in range(16):
            group.start_soon(
                client.call_tool, "embed", {"model": DEFAULT_EMBEDDING, "texts": f"text {index}"}
            )
    _say("   16 concurrent one-text embed calls answered\n")


async def _ranking(client: Client) -> None:
    documents = [
        "The Eiffel Tower is a wrought-iron tower in Paris.",
        "Paris is the capital and most populous city of France.",
        "Photosynthesis converts light into chemical energy.",
    ]
    arguments = {"model": DEFAULT_RERANKER, "query": SENTENCES[0], "documents": documents}
    result = _check(await client.call_tool("rerank", arguments))
    _say(f"== rerank ({DEFAULT_RERANKER}: MiniLM cosine, not a trained cross-encoder)\n")
    for item in result["results"]:
        _say(f"   {item['relevance_score']:.3f}  [{item['index']}] {item['document']}\n")


async def _speech(client: Client) -> str:
    text = "The capital of France is Paris.\nThis sentence is spoken by Kokoro, offline."
    arguments = {"model": DEFAULT_TTS, "text": text, "output_path": "openarc-demo.wav"}
    result = _check(await client.call_tool("speak", arguments))
    _say(
        f"== speak ({DEFAULT_TTS}, voice {result['voice']}): {result['duration_s']:.1f} s of "
        f"{result['sample_rate']} Hz audio, written to {result['path']}\n"
    )
    return str(result["path"])


async def _transcription(client: Client, path: str) -> None:
    result = _check(await client.call_tool("transcribe", {"model": DEFAULT_WHISPER, "audio": path}))
    _say(f"== transcribe ({DEFAULT_WHISPER}) of that file: {result['text']!r}\n")


async def _read(client: Client, uri: str) -> Any:
    contents = (await client.read_resource(uri)).contents
    return json.loads(getattr(contents[0], "text", "") if contents else "null")


async def _show_devices(client: Client) -> None:
    _say("== openarc://devices\n")
    for device in await _read(client, "openarc://devices"):
        _say(f"   {device['name']}: {device['full_name']}\n")


async def _show_models(client: Client) -> None:
    _say("== openarc://models\n")
    for model in await _read(client, "openarc://models"):
        line = f"{model['name']:<28} {model['model_type']:<10} {model['status']:<13}"
        _say(f"   {line} {model.get('requests', 0)} requests\n")
    details = await _read(client, f"openarc://models/{DEFAULT_EMBEDDING}")
    engine, batching = details.get("engine") or {}, details.get("batching")
    _say(
        f"== openarc://models/{DEFAULT_EMBEDDING}: pooling {engine.get('pooling')}, "
        f"{engine.get('dimensions')} dimensions, max length {engine.get('max_length')}, batching {batching}\n"
    )


def _check(result: CallToolResult) -> dict[str, Any]:
    if result.is_error:
        text = " ".join(getattr(block, "text", "") for block in result.content)
        raise ServerFault(f"demo call failed: {text}")
    return dict(result.structured_content or {})


def _say(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
