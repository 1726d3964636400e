"""Tool calls served straight from the stdio wire (``transports/direct_calls.py``) answer exactly as
the MCP SDK's own path does, stop when cancelled, and are answered when stdin ends.

Real ``openarc-mcp serve`` processes over their pipes, one with the direct path (the default) and
one with ``OPENARC_DIRECT_TOOL_CALLS=false``; the server's DEBUG log shows which path served a call.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp_types import ErrorData, JSONRPCError, JSONRPCNotification, JSONRPCResponse

from openarc_mcp.transports.direct_calls import _answer_line, _progress_line

from .conftest import EMBEDDER, LLM, RERANKER
from .stdio_session import RawSession, server_env

pytestmark = pytest.mark.anyio

SERVED_DIRECTLY = "served directly"
DOCUMENTS = ["Paris is the capital of France.", "Photosynthesis makes sugar.", "Berlin is in Germany."]


def _call(name: str, arguments: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    params: dict[str, Any] = {"name": name, **extra}
    if arguments is not None:
        params["arguments"] = arguments
    return params


# Calls both paths must answer alike: results, tool errors, argument errors, JSON-RPC errors.
CALLS: list[dict[str, Any]] = [
    _call("embed", {"model": EMBEDDER, "texts": "What is the capital of France?"}),
    _call("embed", {"model": EMBEDDER, "texts": ["a", "b c"], "input_type": "query", "dimensions": 64}),
    _call("embed", {"model": EMBEDDER, "texts": "x"}, _meta={"progressToken": "p-1"}),
    _call("embed", {"model": EMBEDDER, "texts": "x", "colour": "red"}),  # unknown argument
    _call("embed", {"model": EMBEDDER, "texts": 5}),  # wrong type
    _call("embed", {"model": EMBEDDER, "texts": ["a", 3], "input_type": "other"}),  # two wrong
    _call("embed", {"model": EMBEDDER, "texts": ""}),  # empty text
    _call("embed", {"model": EMBEDDER, "texts": "x", "dimensions": 4096}),  # more than the model has
    _call("embed", {"model": "no-such-model", "texts": "x"}),
    _call("embed"),  # no arguments at all
    _call("rerank", {"model": RERANKER, "query": "capital of France", "documents": DOCUMENTS, "top_n": 2}),
    _call("rerank", {"model": RERANKER, "query": "q", "documents": []}),
    _call("unload_model", {"model_name": "no-such-model"}),
    _call("transcribe", {"model": "no-such-model", "audio": "bm90IGF1ZGlv"}),
    _call("speak", {"model": "no-such-model", "text": "hello", "speed": 9}),
    _call("generate", {"model": EMBEDDER, "prompt": "hi"}),  # not an LLM
    _call("generate", {"model": "no-such-model", "prompt": "hi"}, _meta={"progressToken": 9}),
    _call("generate", {"prompt": "hi", "max_tokens": 0}),  # refused argument
    _call("describe_image", {"model": "no-such-model", "prompt": "what is it?", "image": "aGk="}),
    _call("load_model", {"model_name": "x", "model_path": "/no/such/folder", "model_type": "llm"}),
    _call("frobnicate", {"x": 1}),  # unknown tool
    {"name": "embed", "arguments": {"texts": "x"}, "_meta": {"custom": True}},  # a _meta the SDK reads
    {"arguments": {"texts": "x"}},  # no tool name: invalid params
]
DIRECT_CALLS = 20  # all but the last three: tools that take no Context or use it only for progress


@pytest.fixture(scope="module")
async def sessions(
    models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[dict[str, Any]]:
    """Two initialized servers, direct path on and off; ``early`` holds each one's answer to a call
    sent before the handshake."""
    logs = tmp_path_factory.mktemp("direct-calls")
    env = server_env(models_dir, OPENARC_PRELOAD=f"{EMBEDDER},{RERANKER},{LLM}", OPENARC_LOG_LEVEL="DEBUG")
    direct = RawSession(env, stderr=logs / "direct.log")
    sdk = RawSession(env | {"OPENARC_DIRECT_TOOL_CALLS": "false"}, stderr=logs / "sdk.log")
    async with direct, sdk:
        early = {
            path: [await session.request("tools/call", CALLS[i]) for i in (0, 3)]  # 3: unknown argument
            for path, session in (("direct", direct), ("sdk", sdk))
        }
        await direct.initialize()
        await sdk.initialize()
        yield {"direct": direct, "sdk": sdk, "logs": logs, "early": early}


async def test_a_call_before_the_handshake_is_left_to_the_sdk(sessions: dict[str, Any]) -> None:
    """The SDK refuses calls before initialize, one with an unknown argument too (-32602)."""
    early = sessions["early"]
    assert early["direct"] == early["sdk"]
    assert [answer["error"]["code"] for answer in early["direct"]] == [-32602, -32602], early


async def test_both_paths_answer_every_call_alike(sessions: dict[str, Any]) -> None:
    for params in CALLS:
        direct = await sessions["direct"].request("tools/call", params)
        sdk = await sessions["sdk"].request("tools/call", params)
        assert direct == sdk, params
    answers = [await sessions["direct"].request("tools/call", params) for params in CALLS[:4]]
    assert "result" in answers[0] and not answers[0]["result"].get("isError"), answers[0]
    assert len(answers[1]["result"]["structuredContent"]["embeddings"][0]) == 64
    assert "unknown argument(s) colour" in answers[3]["result"]["content"][0]["text"]
    assert "resultType" not in answers[3]["result"], "a field 2025-11-25 does not have"
    direct_log = (sessions["logs"] / "direct.log").read_text()
    assert direct_log.count(SERVED_DIRECTLY) == DIRECT_CALLS + 4, "the direct path did not serve them"
    assert SERVED_DIRECTLY not in (sessions["logs"] / "sdk.log").read_text()
    zero_tokens = _call("generate", {"prompt": "hi", "max_tokens": 0})
    refused = await sessions["direct"].request("tools/call", zero_tokens)
    text = refused["result"]["content"][0]["text"]  # one plain line, naming the argument
    assert text == (
        "Error executing tool generate: invalid arguments: 'max_tokens' should be greater than or "
        "equal to 1, got 0"
    )
    two_wrong = await sessions["direct"].request("tools/call", CALLS[5])
    assert two_wrong["result"]["content"][0]["text"] == (  # the union's plain-string failure left out
        "Error executing tool embed: invalid arguments: 'texts[1]' should be a valid string, got 3; "
        "'input_type' should be 'document' or 'query', got 'other'"
    )


async def test_a_streamed_generation_is_answered_alike_with_its_progress_before_the_answer(
    sessions: dict[str, Any],
) -> None:
    """generate uses its Context only to report progress: served directly, it streams the same text
    in progress notifications against the caller's token, all before its answer, none after."""
    arguments = {"model": LLM, "prompt": "Name three colours.", "max_tokens": 24, "temperature": 0}
    seen: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]] = {}
    for path in ("direct", "sdk"):
        session: RawSession = sessions[path]
        await session.request("tools/call", _call("generate", {**arguments, "max_tokens": 1}))  # loaded
        session.notifications.clear()
        answer = await session.request(
            "tools/call", _call("generate", arguments, _meta={"progressToken": "g"})
        )
        progress = [n["params"] for n in session.notifications if n["method"] == "notifications/progress"]
        session.notifications.clear()
        await session.request("ping")  # anything still coming for the call would arrive before this answer
        assert not [n for n in session.notifications if n["method"] == "notifications/progress"], path
        seen[path] = answer, progress
    for path, (answer, progress) in seen.items():
        result = answer["result"]
        assert result.get("isError") is not True, (path, answer)
        assert progress and all(p["progressToken"] == "g" and p["total"] == 24.0 for p in progress), path
        assert [p["progress"] for p in progress] == sorted({p["progress"] for p in progress}), path
        assert "".join(p["message"] for p in progress) == result["structuredContent"]["text"], path
    (direct, _), (sdk, _) = seen["direct"], seen["sdk"]
    for answer in (direct, sdk):
        answer["result"]["structuredContent"].pop("metrics")  # timings differ
    assert direct["result"] == sdk["result"]
    assert "tools/call generate" in (sessions["logs"] / "direct.log").read_text()


@pytest.mark.parametrize("total", [None, 24.0])
@pytest.mark.parametrize("message", [None, 'é ✓ "quoted"\n'])
@pytest.mark.parametrize("token", [3, "tok-3"])
def test_progress_lines_are_the_bytes_the_sdk_would_write(
    token: int | str, message: str | None, total: float | None
) -> None:
    params: dict[str, Any] = {"progressToken": token, "progress": 2.0}
    if total is not None:
        params["total"] = total
    if message is not None:
        params["message"] = message
    sdk = JSONRPCNotification(jsonrpc="2.0", method="notifications/progress", params=params)
    expected = sdk.model_dump_json(by_alias=True, exclude_unset=True).encode() + b"\n"
    assert _progress_line(token, 2.0, total, message) == expected


@pytest.mark.parametrize("path", ["direct", "sdk"])
async def test_a_cancelled_call_is_never_answered_and_its_work_stops(
    sessions: dict[str, Any], path: str
) -> None:
    session: RawSession = sessions[path]
    before = await _model_details(session, EMBEDDER)
    big = await session.start_request("tools/call", _long_embedding())
    await _wait_until_running(session, big)
    await session.send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": big}})
    small = await session.request("tools/call", CALLS[0], deadline=60)
    assert small["result"].get("isError") is not True, small
    details = await _model_details(session, EMBEDDER)
    assert details["cancelled_requests"] == before["cancelled_requests"] + 1
    assert details["running_requests"] == 0
    ping = await session.start_request("ping")
    assert await _next_response(session) == {"jsonrpc": "2.0", "id": ping, "result": {}}  # nothing for big


@pytest.mark.parametrize("direct", ["true", "false"])
async def test_a_call_running_when_stdin_ends_is_answered_connection_closed(
    models_dir: Path, direct: str
) -> None:
    env = server_env(models_dir, OPENARC_PRELOAD=EMBEDDER, OPENARC_DIRECT_TOOL_CALLS=direct)
    with anyio.fail_after(120):
        async with RawSession(env) as session:
            await session.initialize()
            big = await session.start_request("tools/call", _long_embedding())
            await _wait_until_running(session, big)
            await session.close_stdin()
            with anyio.fail_after(15):  # the embedding would take much longer: it must stop
                rest = await session.rest_of_stdout()
                assert await session.process.wait() == 0
    answers = [json.loads(line) for line in rest.splitlines() if line.strip()]
    closing = [answer for answer in answers if answer.get("id") == big]
    assert closing == [
        {"jsonrpc": "2.0", "id": big, "error": {"code": -32000, "message": "Connection closed"}}
    ]


def _long_embedding() -> dict[str, Any]:
    """An embed call of many long texts: tens of engine chunks, many seconds of work."""
    texts = [f"text {i}: " + "a fairly long sentence about nothing in particular " * 12 for i in range(2048)]
    return _call("embed", {"model": EMBEDDER, "texts": texts})


async def _wait_until_running(session: RawSession, request_id: int) -> None:
    """Poll the model's resource until a request runs on it (the big call reached the engine)."""
    with anyio.fail_after(60):
        while True:
            if (await _model_details(session, EMBEDDER, request_id))["running_requests"]:
                return
            await anyio.sleep(0.05)  # polling a resource of another process: no event to wait on


async def _model_details(session: RawSession, name: str, unanswered: int | None = None) -> dict[str, Any]:
    read = await session.start_request("resources/read", {"uri": f"openarc://models/{name}"})
    while True:
        answer = await _next_response(session)
        assert answer["id"] != unanswered, f"request {unanswered} finished before the test could act"
        if answer["id"] == read:
            return dict(json.loads(answer["result"]["contents"][0]["text"]))


async def _next_response(session: RawSession) -> dict[str, Any]:
    with anyio.fail_after(60):
        while True:
            message = await session.receive()
            if "method" not in message:
                return message


@pytest.mark.parametrize(
    "answer",
    [
        {"content": [{"type": "text", "text": "é ✓"}], "structuredContent": {"v": [0.1, -2.5e-08, 1e300]}},
        {"content": [], "structuredContent": {"nan": float("nan"), "inf": float("inf")}},  # JSON has neither
        ErrorData(code=-32602, message="bad"),
        ErrorData(code=-32000, message="Connection closed", data={"why": "stdin ended"}),
    ],
)
@pytest.mark.parametrize("request_id", [7, "req-7"])
def test_answer_lines_are_the_bytes_the_sdk_would_write(answer: Any, request_id: int | str) -> None:
    if isinstance(answer, ErrorData):
        sdk: JSONRPCResponse | JSONRPCError = JSONRPCError(jsonrpc="2.0", id=request_id, error=answer)
    else:
        sdk = JSONRPCResponse(jsonrpc="2.0", id=request_id, result=answer)
    expected = sdk.model_dump_json(by_alias=True, exclude_unset=True).encode() + b"\n"
    assert _answer_line(request_id, answer) == expected
