"""Bad input gets an error a caller can act on, and the server keeps serving."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from openarc_mcp.library import METADATA_FILE

from .conftest import LLM, structured, text_of

pytestmark = pytest.mark.anyio


async def _error(client: Client, tool: str, arguments: dict[str, Any]) -> str:
    result = await client.call_tool(tool, arguments)
    assert result.is_error, f"expected an error, got {result.structured_content}"
    return text_of(result)


async def test_unknown_model_lists_the_known_ones(client: Client) -> None:
    message = await _error(client, "generate", {"model": "no-such-model", "prompt": "hi"})
    assert "no model named 'no-such-model'" in message
    assert LLM in message


async def test_prompt_and_messages_together_are_refused(client: Client) -> None:
    arguments = {"model": LLM, "prompt": "hi", "messages": [{"role": "user", "content": "hi"}]}
    assert "exactly one of 'prompt'" in await _error(client, "generate", arguments)


async def test_neither_prompt_nor_messages_is_refused(client: Client) -> None:
    assert "exactly one of 'prompt'" in await _error(client, "generate", {"model": LLM})


async def test_blank_prompt_is_refused(client: Client) -> None:
    assert "'prompt' is empty" in await _error(client, "generate", {"model": LLM, "prompt": "   "})


async def test_chat_ending_with_assistant_is_refused(client: Client) -> None:
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    message = await _error(client, "generate", {"model": LLM, "messages": messages})
    assert "end the chat with a user (or tool) message" in message


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"temperature": -0.5}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_p": 0}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": -3}, "max_tokens"),
        ({"top_k": 0}, "top_k"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"seed": -1}, "seed"),
        ({"max_tokens": "many"}, "max_tokens"),
    ],
)
async def test_out_of_range_parameters_name_the_parameter(
    client: Client, arguments: dict[str, Any], field: str
) -> None:
    message = await _error(client, "generate", {"model": LLM, "prompt": "hi", **arguments})
    assert field in message


async def test_unknown_role_is_refused(client: Client) -> None:
    messages = [{"role": "wizard", "content": "hi"}]
    assert "role" in await _error(client, "generate", {"model": LLM, "messages": messages})


async def test_empty_stop_string_is_refused(client: Client) -> None:
    assert "stop strings must not be empty" in await _error(
        client, "generate", {"model": LLM, "prompt": "hi", "stop": [""]}
    )


async def test_load_missing_path(client: Client, tmp_path: Path) -> None:
    arguments = {"model_name": "x", "model_path": str(tmp_path / "missing"), "model_type": "llm"}
    assert "does not exist" in await _error(client, "load_model", arguments)


async def test_load_folder_that_is_not_a_model(client: Client, tmp_path: Path) -> None:
    arguments = {"model_name": "x", "model_path": str(tmp_path), "model_type": "llm"}
    message = await _error(client, "load_model", arguments)
    assert "openvino_model.xml" in message


async def test_load_non_gguf_file(client: Client, tmp_path: Path) -> None:
    file = tmp_path / "weights.bin"
    file.write_bytes(b"\0" * 16)
    arguments = {"model_name": "x", "model_path": str(file), "model_type": "llm"}
    assert ".gguf" in await _error(client, "load_model", arguments)


@pytest.fixture
def unlabelled_llm(llm_path: Path, tmp_path: Path) -> Path:
    """The LLM's files in a folder of the caller's own: without the library's metadata."""
    folder = tmp_path / "my-llm"
    folder.mkdir()
    for item in llm_path.iterdir():
        if item.name != METADATA_FILE:
            (folder / item.name).symlink_to(item)
    return folder


async def test_load_an_llm_as_a_vlm(client: Client, unlabelled_llm: Path) -> None:
    arguments = {"model_name": "x", "model_path": str(unlabelled_llm), "model_type": "vlm"}
    message = await _error(client, "load_model", arguments)
    assert "is not a 'vlm' model" in message and "openvino_vision_embeddings_model.xml" in message


async def test_load_a_model_as_the_wrong_type(client: Client, unlabelled_llm: Path, llm_path: Path) -> None:
    arguments = {"model_name": "x", "model_path": str(unlabelled_llm), "model_type": "whisper"}
    message = await _error(client, "load_model", arguments)
    assert "is not a 'whisper' model" in message and "openvino_encoder_model.xml" in message
    prepared = {"model_name": "x", "model_path": str(llm_path), "model_type": "whisper"}  # the library says
    assert "is a prepared 'llm' model, not 'whisper'" in await _error(client, "load_model", prepared)


async def test_load_unknown_engine(client: Client, llm_path: Path) -> None:
    arguments = {"model_name": "x", "model_path": str(llm_path), "model_type": "llm", "engine": "pytorch"}
    assert "available: genai" in await _error(client, "load_model", arguments)


async def test_load_unprepared_name_without_path(client: Client) -> None:
    message = await _error(client, "load_model", {"model_name": "my-model"})
    assert "model_path is required" in message


async def test_load_under_a_name_in_use(client: Client, llm_path: Path) -> None:
    arguments = {"model_name": LLM, "model_path": str(llm_path), "model_type": "llm"}
    assert "already in use" in await _error(client, "load_model", arguments)


async def test_unload_unknown_model(client: Client) -> None:
    assert "no model named 'ghost' is loaded" in await _error(client, "unload_model", {"model_name": "ghost"})


async def test_server_keeps_serving_after_errors(client: Client) -> None:
    await _error(client, "generate", {"model": "no-such-model", "prompt": "hi"})
    await _error(client, "generate", {"model": LLM, "prompt": "hi", "temperature": -1})
    result = structured(
        await client.call_tool("generate", {"model": LLM, "prompt": "Say hi.", "max_tokens": 4})
    )
    assert result["usage"]["completion_tokens"] >= 1


@pytest.mark.parametrize("extra", [{"top_p": 0.5}, {"top_k": 5}, {"seed": 3}])
async def test_greedy_with_sampling_options_is_refused(client: Client, extra: dict[str, Any]) -> None:
    arguments = {"model": LLM, "prompt": "hi", "temperature": 0, **extra}
    message = await _error(client, "generate", arguments)
    assert "temperature 0 means greedy decoding" in message
    assert next(iter(extra)) in message


async def test_chat_ending_with_system_message_is_refused(client: Client) -> None:
    messages = [{"role": "user", "content": "hi"}, {"role": "system", "content": "be brief"}]
    assert "end the chat with a user" in await _error(
        client, "generate", {"model": LLM, "messages": messages}
    )


async def test_prompt_longer_than_the_tokenizer_takes_is_refused_not_cut(client: Client) -> None:
    message = await _error(client, "generate", {"model": LLM, "prompt": "apple " * 9000 + "How many apples?"})
    assert "the prompt is too long" in message and "8192" in message
    chat = [{"role": "user", "content": "pear " * 9000}]
    assert "the prompt is too long" in await _error(client, "generate", {"model": LLM, "messages": chat})
