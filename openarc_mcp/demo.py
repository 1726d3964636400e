"""``openarc-mcp demo``: the server driven exactly as an MCP host drives it, with results shown.

Prepares the default model if needed, launches ``openarc-mcp serve`` as a subprocess over stdio,
and calls its tools with the MCP client: list tools, read resources, load, generate (streaming the
partial text from progress notifications), chat, unload. Output goes to stdout; this command is
not a protocol wire.
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

from .errors import ServerFault
from .library import DEFAULT_LLM, prepare_models
from .settings import Settings

__all__ = ["run_demo"]


def run_demo(settings: Settings, model: str | None, prompt: str) -> int:
    """Prepare, serve, call; returns the process exit code."""
    name = model or DEFAULT_LLM
    _say(f"== preparing '{name}' in {settings.models_dir} (skipped when already done)\n")
    prepare_models([name], settings.models_dir)
    return anyio.run(_drive, settings, name, prompt)


def _server_parameters(settings: Settings) -> StdioServerParameters:
    env = {key: value for key, value in os.environ.items() if not key.startswith("OPENARC_")}
    env |= {
        "OPENARC_MODELS_DIR": str(settings.models_dir),
        "OPENARC_DEVICE": settings.device,
        "OPENARC_LOG_LEVEL": "WARNING",
    }
    return StdioServerParameters(command=sys.executable, args=["-m", "openarc_mcp", "serve"], env=env)


async def _drive(settings: Settings, name: str, prompt: str) -> int:
    started = time.perf_counter()
    async with Client(_server_parameters(settings), mode="legacy") as client:
        _say(f"== connected over stdio in {time.perf_counter() - started:.2f} s\n")
        tools = await client.list_tools()
        _say("== tools: " + ", ".join(tool.name for tool in tools.tools) + "\n")
        await _show_resource(client, "openarc://devices")
        loaded = _check(await client.call_tool("load_model", {"model_name": name}))
        _say(f"== loaded '{name}' in {loaded['load_time_s']} s on {loaded['device']}\n")
        await _generate_streaming(client, name, prompt)
        await _chat(client, name)
        await _show_resource(client, f"openarc://models/{name}")
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
    result = _check(
        await client.call_tool("generate", {"model": name, "messages": messages, "temperature": 0})
    )
    _say(f"== chat (system + user messages)\n   answer: {result['text']}\n")


async def _show_resource(client: Client, uri: str) -> None:
    contents = (await client.read_resource(uri)).contents
    text = getattr(contents[0], "text", "") if contents else ""
    _say(f"== {uri}\n{_indent(json.dumps(json.loads(text), indent=2))}\n")


def _check(result: CallToolResult) -> dict[str, Any]:
    if result.is_error:
        text = " ".join(getattr(block, "text", "") for block in result.content)
        raise ServerFault(f"demo call failed: {text}")
    return dict(result.structured_content or {})


def _indent(text: str) -> str:
    return "\n".join("   " + line for line in text.splitlines())


def _say(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
