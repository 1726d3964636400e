"""`generate` on the real SmolLM2 through the in-memory MCP client."""

from __future__ import annotations

import re
from pathlib import Path

import anyio
import pytest
from mcp import Client

from openarc_mcp.app import OpenArcApp
from openarc_mcp.schema import LoadRequest, ModelType
from openarc_mcp.transports.mcp_server import build_mcp_server

from .conftest import LLM, structured, text_of

pytestmark = pytest.mark.anyio

CAPITAL = "What is the capital of France?"


async def test_greedy_answer_names_paris(client: Client) -> None:
    result = structured(
        await client.call_tool("generate", {"model": LLM, "prompt": CAPITAL, "temperature": 0})
    )
    assert "Paris" in result["text"]
    assert result["finish_reason"] == "stop"
    assert result["model"] == LLM
    assert result["usage"]["prompt_tokens"] > 5
    assert 0 < result["usage"]["completion_tokens"] < 64
    assert result["metrics"]["ttft_ms"] > 0


async def test_text_block_carries_the_generated_text(client: Client) -> None:
    result = await client.call_tool("generate", {"model": LLM, "prompt": CAPITAL, "temperature": 0})
    assert text_of(result) == structured(result)["text"]


async def test_chat_messages_are_templated(client: Client) -> None:
    messages = [
        {"role": "system", "content": "You are a helpful geography assistant."},
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello! Ask me about geography."},
        {"role": "user", "content": CAPITAL},
    ]
    result = structured(
        await client.call_tool("generate", {"model": LLM, "messages": messages, "temperature": 0})
    )
    assert "Paris" in result["text"]


async def test_stop_string_ends_generation_and_is_not_returned(client: Client) -> None:
    arguments = {"model": LLM, "prompt": CAPITAL, "temperature": 0, "stop": ["Paris"]}
    result = structured(await client.call_tool("generate", arguments))
    assert "Paris" not in result["text"]
    assert result["text"].startswith("The capital of France is")
    assert result["finish_reason"] == "stop"


async def test_metrics_time_the_model_not_the_stop_strings_holding_text_back(client: Client) -> None:
    """A stop string holds text back until it cannot be the string's start; the first token's time
    is when the model made it (it was the time the first text left: negative when none ever did)."""
    for stop in (["The"], ["Paris"]):  # the answer's first token, a later one
        arguments = {"model": LLM, "prompt": CAPITAL, "temperature": 0, "stop": stop}
        metrics = structured(await client.call_tool("generate", arguments))["metrics"]
        assert 0 < metrics["ttft_ms"] <= metrics["total_ms"], (stop, metrics)
        assert metrics["tokens_per_second"] >= 0, (stop, metrics)


async def test_single_stop_string_is_accepted(client: Client) -> None:
    arguments = {"model": LLM, "prompt": CAPITAL, "temperature": 0, "stop": "France"}
    result = structured(await client.call_tool("generate", arguments))
    assert result["text"] == "The capital of"


async def test_max_tokens_is_honoured(client: Client) -> None:
    arguments = {
        "model": LLM,
        "prompt": "Write a long story about a dragon.",
        "max_tokens": 7,
        "temperature": 0,
    }
    result = structured(await client.call_tool("generate", arguments))
    assert result["usage"]["completion_tokens"] == 7
    assert result["finish_reason"] == "length"


async def test_seeded_sampling_repeats_without_prefix_caching(fresh_app: OpenArcApp, llm_path: Path) -> None:
    # With the prefix cache on, a repeated prompt's logits come from cached KV blocks and round
    # differently on CPUs that compute in bf16 (AMX), so a seed alone cannot promise a repeat there
    # (README, "Seeds"); with it off, calls decoding alone repeat on any CPU.
    request = LoadRequest(
        model_name="no-prefix-cache",
        model_path=llm_path,
        model_type=ModelType.LLM,
        runtime_config={"prefix_caching": False},
    )
    await fresh_app.load_model(request)
    arguments = {
        "model": "no-prefix-cache",
        "prompt": "Tell me a story.",
        "temperature": 1.0,
        "seed": 1234,
        "max_tokens": 24,
    }
    async with Client(build_mcp_server(fresh_app)) as client:
        first = structured(await client.call_tool("generate", arguments))
        second = structured(await client.call_tool("generate", arguments))
        other_seed = structured(await client.call_tool("generate", {**arguments, "seed": 4321}))
        unseeded = {key: value for key, value in arguments.items() if key != "seed"}
        drawn = [structured(await client.call_tool("generate", unseeded))["text"] for _ in range(3)]
    assert first["text"] == second["text"]
    assert other_seed["text"] != first["text"]  # the seed is what fixed the draw
    assert len(set(drawn)) > 1, drawn  # without one, each call draws afresh (GenAI's default seed is 0)


async def test_model_may_be_omitted_when_one_llm_is_loaded(client: Client) -> None:
    result = structured(await client.call_tool("generate", {"prompt": CAPITAL, "temperature": 0}))
    assert result["model"] == LLM
    assert "Paris" in result["text"]


async def test_progress_notifications_carry_the_partial_text(client: Client) -> None:
    pieces: list[str] = []
    values: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        values.append(progress)
        pieces.append(message or "")
        assert total == 40

    arguments = {"model": LLM, "prompt": "Describe the sea in detail.", "max_tokens": 40, "temperature": 0}
    with anyio.fail_after(60):
        result = structured(await client.call_tool("generate", arguments, progress_callback=on_progress))
    assert len(pieces) >= 1
    assert "".join(pieces) == result["text"]
    assert values == sorted(values) and len(set(values)) == len(values)


def _without_chat_template(models_dir: Path, folder: Path) -> Path:
    """SmolLM2's folder as a base model would come: its tokenizer without a chat template (the
    weights linked, not copied)."""
    folder.mkdir()
    for source in (models_dir / LLM).iterdir():
        if source.name == "openvino_tokenizer.xml":
            text = source.read_text(encoding="utf-8")
            stripped = re.sub(r"\s*<chat_template value=\"[^\"]*\"\s*/>", "", text)
            assert stripped != text, "the tokenizer had no chat template to remove"
            (folder / source.name).write_text(stripped, encoding="utf-8")
        elif source.suffix in (".xml", ".bin"):
            (folder / source.name).symlink_to(source)
    return folder


@pytest.mark.parametrize("batching", [True, False])
async def test_a_model_without_a_chat_template_continues_a_prompt_and_refuses_a_chat(
    fresh_app: OpenArcApp, models_dir: Path, tmp_path: Path, batching: bool
) -> None:
    folder = _without_chat_template(models_dir, tmp_path / "base-llm")
    await fresh_app.load_model(
        LoadRequest(
            model_name="base-llm",
            model_path=folder,
            model_type=ModelType.LLM,
            runtime_config={"batching": batching},
        )
    )
    async with Client(build_mcp_server(fresh_app)) as client:
        arguments = {
            "model": "base-llm",
            "prompt": "The capital of France is",
            "max_tokens": 6,
            "temperature": 0,
        }
        continued = structured(await client.call_tool("generate", arguments))
        assert continued["text"].strip() and continued["usage"]["prompt_tokens"] == 5, continued
        chat = [{"role": "user", "content": "Hi"}]
        refused = await client.call_tool("generate", {"model": "base-llm", "messages": chat})
        assert refused.is_error and "has no chat template" in text_of(refused), text_of(refused)
        assert "send one plain 'prompt'" in text_of(refused)
