"""The direct path's answers (``transports/direct_calls.py``) equal those of ``MCPServer``'s own
tools/call handler, shaped by the SDK's serializer, for every protocol version and every way a tool
can end: a structured result, a value the SDK converts, a refusal, a crash, a result that fails the
SDK's conversion, and a JSON-RPC error. No model: a small ``MCPServer`` of such tools, in process.
(tests/test_direct_calls.py compares both paths end to end on the real server.)
"""

from __future__ import annotations

import ast
import inspect
import json
import logging
from typing import Annotated, Any, Literal, cast

import anyio
import pytest
from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.shared.exceptions import MCPError
from mcp.shared.message import SessionMessage
from mcp_types import (
    CallToolRequestParams,
    CallToolResult,
    ErrorData,
    JSONRPCError,
    JSONRPCRequest,
    JSONRPCResponse,
    TextContent,
)
from mcp_types.methods import serialize_server_result
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from pydantic import BaseModel, Field, ValidationError

from openarc_mcp.transports import mcp_server
from openarc_mcp.transports.direct_calls import DirectToolCalls, _answer_line

pytestmark = pytest.mark.anyio


class Measure(BaseModel):
    values: list[float]
    label: str = Field(min_length=1)


server = MCPServer("direct-answers")


@server.tool()
async def structured(count: int, label: str = "v") -> Annotated[CallToolResult, Measure]:
    """A result with structured content, built from its output model (as this project's tools do)."""
    values = [index / 7 for index in range(count)]
    measure = Measure(values=values, label=label)
    return CallToolResult(
        content=[TextContent(type="text", text=f"{count} values")],
        structured_content=measure.model_dump(mode="json"),
    )


@server.tool()
async def converted(count: int) -> Measure:
    """A model the SDK converts into structured content and a text block."""
    return Measure(values=[1.5] * count, label="m")


@server.tool()
async def unconvertible() -> Measure:
    """A value that fails the SDK's conversion to the declared output."""
    return cast(Measure, {"values": "not a list"})


@server.tool()
async def refuses(reason: str) -> str:
    """A deliberate failure."""
    raise ToolError(f"cannot: {reason}")


@server.tool()
async def crashes() -> str:
    """An unexpected failure, whose text must stay on the server."""
    raise RuntimeError("secret internal detail")


@server.tool()
async def protocol_error() -> str:
    """A JSON-RPC error raised by the tool."""
    raise MCPError(code=-32002, message="resource gone", data={"uri": "x://y"})


@server.tool()
async def nothing() -> None:
    """No return value."""


CALLS: list[tuple[str, dict[str, Any] | None]] = [
    ("structured", {"count": 384}),
    ("structured", {"count": 0, "label": "empty"}),
    ("structured", {"count": "12"}),  # coerced by the SDK's argument model
    ("structured", {"count": "twelve"}),  # refused by it
    ("structured", None),  # no arguments
    ("converted", {"count": 3}),
    ("unconvertible", {}),
    ("refuses", {"reason": "no"}),
    ("crashes", {}),
    ("protocol_error", {}),
    ("nothing", {}),
    ("structured", {"count": 2, "colour": "red"}),  # unknown argument: refused before the tool
]


async def _sdk_answer(params: CallToolRequestParams, version: str) -> dict[str, Any] | ErrorData:
    """What the SDK's path answers: ``MCPServer``'s handler, then its serializer for the version."""
    from openarc_mcp.transports.mcp_server import shaped_refusal, unknown_arguments_result

    refusal = unknown_arguments_result(server, params.name, params.arguments)
    if refusal is not None:  # the middleware's refusal, which the SDK sends as it is
        return shaped_refusal(refusal, version)
    try:
        result = await server._handle_call_tool(cast(Any, None), params)
    except MCPError as exc:
        return exc.error
    dumped = result.model_dump(by_alias=True, mode="json", exclude_none=True)
    return serialize_server_result("tools/call", version, dumped)


@pytest.mark.parametrize("version", HANDSHAKE_PROTOCOL_VERSIONS)
async def test_direct_answers_are_the_sdk_handlers_answers(
    version: str, caplog: pytest.LogCaptureFixture
) -> None:
    sent, received = anyio.create_memory_object_stream[bytes](len(CALLS))
    direct = DirectToolCalls(server, sent)
    direct._version = version  # as if the handshake had negotiated it
    caplog.set_level(logging.INFO)
    for name, arguments in CALLS:
        params = CallToolRequestParams(name=name, arguments=arguments)
        expected = await _sdk_answer(params, version)
        assert await direct._answer(params) == expected, (name, arguments)
        assert _answer_line(1, await direct._answer(params)) == _answer_line(1, expected)
    received.close()
    sent.close()
    ours = [record for record in caplog.records if record.name.endswith("direct_calls")]
    assert any(record.exc_info for record in ours if "crashes" in record.getMessage()), "no traceback"
    assert not any("twelve" in record.getMessage() for record in ours), "a caller's value was logged"


async def test_failures_are_error_results_without_internal_detail() -> None:
    sent, received = anyio.create_memory_object_stream[bytes](1)
    direct = DirectToolCalls(server, sent)
    direct._version = HANDSHAKE_PROTOCOL_VERSIONS[-1]
    crash = await direct._answer(CallToolRequestParams(name="crashes", arguments={}))
    refusal = await direct._answer(CallToolRequestParams(name="refuses", arguments={"reason": "no"}))
    error = await direct._answer(CallToolRequestParams(name="protocol_error", arguments={}))
    assert isinstance(crash, dict) and crash["isError"] is True
    assert crash["content"] == [{"type": "text", "text": "Error executing tool crashes"}]
    assert (
        isinstance(refusal, dict)
        and refusal["content"][0]["text"] == "Error executing tool refuses: cannot: no"
    )
    assert error == ErrorData(code=-32002, message="resource gone", data={"uri": "x://y"})
    received.close()
    sent.close()


def _initialize(request_id: int, version: str) -> tuple[JSONRPCRequest, SessionMessage]:
    """An ``initialize`` request and the SDK's answer to it, negotiating ``version``."""
    hello = {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "host", "version": "1"}}
    result = {"protocolVersion": version, "capabilities": {}, "serverInfo": {"name": "s", "version": "1"}}
    request = JSONRPCRequest(jsonrpc="2.0", id=request_id, method="initialize", params=hello)
    return request, SessionMessage(JSONRPCResponse(jsonrpc="2.0", id=request_id, result=result))


def _pending(direct: DirectToolCalls) -> bool:
    """Whether ``direct`` waits for an answer to ``initialize`` (read afresh: not narrowed by mypy)."""
    return direct.awaiting_initialize


async def test_the_direct_path_answers_in_the_version_of_the_latest_accepted_initialize() -> None:
    """The SDK negotiates again at every ``initialize`` it accepts and serves what follows under the
    new version: so does the direct path, and calls written while one is unanswered go to the SDK."""
    oldest, newest = HANDSHAKE_PROTOCOL_VERSIONS[0], HANDSHAKE_PROTOCOL_VERSIONS[-1]
    sent, received = anyio.create_memory_object_stream[bytes](8)
    direct = DirectToolCalls(server, sent)

    def call(request_id: int) -> JSONRPCRequest:
        params = {"name": "structured", "arguments": {"count": 1}}
        return JSONRPCRequest(jsonrpc="2.0", id=request_id, method="tools/call", params=params)

    with anyio.fail_after(10):
        async with received:
            async with direct.serving():
                first, first_answer = _initialize(1, newest)
                assert not direct.take(first) and not direct.take(call(2))  # no handshake yet: the SDK's
                direct.observe(first_answer)
                assert direct.version == newest and direct.take(call(3))
                assert direct._running[3].version == newest  # answered in it, whatever comes next
                again, again_answer = _initialize(4, oldest)
                assert not direct.take(again) and _pending(direct)
                assert not direct.take(call(5)), "served before the SDK negotiated again"
                direct.observe(again_answer)
                assert direct.version == oldest and not _pending(direct) and direct.take(call(6))
                assert direct._running[6].version == oldest
                refused, _ = _initialize(7, newest)
                assert not direct.take(refused)
                error = ErrorData(code=-32600, message="refused")
                direct.observe(SessionMessage(JSONRPCError(jsonrpc="2.0", id=7, error=error)))
                assert direct.version == oldest, "a refused initialize changed the version"
                assert not _pending(direct)
                await anyio.wait_all_tasks_blocked()
            answered = [json.loads(line)["id"] async for line in received]
    assert sorted(answered) == [3, 6]


progress_server = MCPServer("progress")


@progress_server.tool(name="generate")  # a name the direct path serves with a progress-only Context
async def reports_progress(ctx: Context, steps: int) -> str:
    """Reports ``steps`` progress notifications, then answers."""
    for step in range(steps):
        await ctx.report_progress(step + 1, steps, f"piece {step}")
    return "done"


async def test_progress_and_answer_keep_their_order_when_a_line_must_wait() -> None:
    """The first progress line finds the wire busy and queues; the call's later lines could be written
    at once, but must queue behind it, or the host would read the answer before that progress."""
    written: list[bytes] = []
    busy_once = iter([True])

    def write_now(line: bytes) -> bool:
        if next(busy_once, False):
            return False
        written.append(line)
        return True

    sent, received = anyio.create_memory_object_stream[bytes](16)
    direct = DirectToolCalls(progress_server, sent, write_now=write_now)
    direct._version = HANDSHAKE_PROTOCOL_VERSIONS[-1]
    params = {"name": "generate", "arguments": {"steps": 3}, "_meta": {"progressToken": "t"}}
    with anyio.fail_after(10):
        async with received:
            async with direct.serving():
                assert direct.take(JSONRPCRequest(jsonrpc="2.0", id=1, method="tools/call", params=params))
                await anyio.wait_all_tasks_blocked()  # the call has run to its end
                assert not direct._running
            queued = [line async for line in received]
    seen = [json.loads(line) for line in written + queued]  # what the host reads: written, then queued
    assert [message.get("params", {}).get("progress") for message in seen] == [1, 2, 3, None]
    assert seen[-1]["id"] == 1 and seen[-1]["result"]["content"][0]["text"] == "done"


def test_the_tools_given_a_progress_only_context_use_it_only_for_progress() -> None:
    """The direct path hands these tools a context that can only report progress: each use of their
    ``ctx`` must be ``_progress(ctx, ...)``, and every tool that takes a Context must be listed."""
    tree = ast.parse(inspect.getsource(mcp_server))
    takes_context: set[str] = set()
    for function in ast.walk(tree):
        if not isinstance(function, ast.AsyncFunctionDef) or not any(
            isinstance(arg.annotation, ast.Name) and arg.annotation.id == "Context"
            for arg in function.args.args
        ):
            continue  # not a tool that takes the SDK's Context
        takes_context.add(function.name)
        progress_arguments = {
            id(call.args[0])
            for call in ast.walk(function)
            if isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "_progress"
        }
        uses = [node for node in ast.walk(function) if isinstance(node, ast.Name) and node.id == "ctx"]
        assert uses and all(id(use) in progress_arguments for use in uses), function.name
    assert takes_context == mcp_server.PROGRESS_ONLY_CONTEXT


def test_argument_problems_name_each_argument_as_the_caller_wrote_it() -> None:
    from openarc_mcp.transports.tool_arguments import argument_problems

    class Part(BaseModel):
        role: Literal["user", "assistant"]
        text: str

    class toolArguments(BaseModel):  # named as the SDK names a tool's argument model
        texts: str | list[str]
        parts: list[Part] = []
        count: Annotated[int, Field(ge=1)] = 1
        note: Annotated[str, Field(max_length=5)] = ""

    arguments: dict[str, Any] = {
        "texts": ["a", 3],
        "parts": [{"role": "user", "text": "hi"}, {"role": "robot"}],
        "count": 0,
        "note": "x" * 200,
    }
    with pytest.raises(ValidationError) as refused:
        toolArguments.model_validate(arguments)
    assert argument_problems(refused.value, arguments) == (
        "invalid arguments: 'texts[1]' should be a valid string, got 3; 'parts[1].role' should be "
        "'user' or 'assistant', got 'robot'; 'parts[1].text' is required; 'count' should be greater "
        f"than or equal to 1, got 0; 'note' should have at most 5 characters, got '{'x' * 76}..."
    )
    arguments = {"texts": [1, 2, 3, 4, 5, 6, 7]}
    with pytest.raises(ValidationError) as refused:
        toolArguments.model_validate(arguments)
    assert argument_problems(refused.value, arguments).endswith(
        "'texts[4]' should be a valid string, got 5; and 2 more"
    )


async def test_a_2026_era_refusal_carries_the_server_info_stamp_as_the_sdks_results_do(tmp_path: Any) -> None:
    """A result a middleware returns is sent as it is: the unknown-argument refusal must carry what
    the SDK adds to every 2026-era result (``resultType`` and the ``serverInfo`` stamp of ``_meta``)."""
    from mcp import Client
    from mcp_types import SERVER_INFO_META_KEY

    from openarc_mcp.app import OpenArcApp
    from openarc_mcp.settings import Settings

    async with (
        OpenArcApp(Settings(models_dir=tmp_path)) as app,
        Client(mcp_server.build_mcp_server(app), mode="2026-07-28") as client,
    ):
        refused = await client.call_tool("embed", {"texts": "x", "colour": "red"})
        failed = await client.call_tool("embed", {"texts": " "})
    assert refused.is_error and "unknown argument(s) colour" in refused.content[0].text  # type: ignore[union-attr]
    assert failed.is_error and failed.meta is not None and SERVER_INFO_META_KEY in failed.meta
    assert refused.meta == failed.meta
