"""Bad input on the stdio wire itself: every line gets an answer it is owed, and serving goes on.

One real `openarc-mcp serve` process, spoken to over its pipes as a desktop host does. After every
case a `ping` must be answered (and nothing else may arrive first unless the case expects it); at
the end the loaded model still answers a tool call.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from openarc_mcp.transports import stdio
from openarc_mcp.transports.wire_lines import Oversized

from .conftest import EMBEDDER
from .stdio_session import RawSession, server_env

pytestmark = pytest.mark.anyio

MAX_MEDIA_BYTES = 600_000
LINE_LIMIT = MAX_MEDIA_BYTES * 4 // 3 + 1024 * 1024

NO_ANSWER: dict[str, Any] = {}


def _line(message: Any) -> bytes:
    return (json.dumps(message) + "\n").encode()


def _request(ident: Any, method: Any, params: Any = None, version: str = "2.0") -> bytes:
    message: dict[str, Any] = {"jsonrpc": version, "id": ident, "method": method}
    if params is not None:
        message["params"] = params
    return _line(message)


# (id for the case, raw bytes sent, what the answer must hold: id, error code or a result check)
CASES: list[tuple[str, bytes, dict[str, Any]]] = [
    ("not-json", b"{not json\n", {"id": None, "code": -32700}),
    ("truncated-json", b'{"jsonrpc": "2.0", "id": 7, "method": \n', {"id": None, "code": -32700}),
    ("json-array", b'[{"jsonrpc": "2.0", "id": "case-8", "method": "ping"}]\n', {"id": None, "code": -32600}),
    ("json-number", b"42\n", {"id": None, "code": -32600}),
    ("json-string", b'"ping"\n', {"id": None, "code": -32600}),
    ("wrong-version", _request("case-10", "ping", version="1.0"), {"id": "case-10", "code": -32600}),
    ("no-version", _line({"id": "case-11", "method": "ping"}), {"id": "case-11", "code": -32600}),
    ("null-id", _request(None, "ping"), {"id": None, "code": -32600}),
    ("boolean-id", _request(True, "ping"), {"id": None, "code": -32600}),
    ("object-id", _request({"a": 1}, "ping"), {"id": None, "code": -32600}),
    ("params-array", _request("case-12", "tools/call", [1, 2]), {"id": "case-12", "code": -32600}),
    ("method-number", _request("case-13", 5), {"id": "case-13", "code": -32600}),
    ("unknown-method", _request("case-14", "frobnicate"), {"id": "case-14", "code": -32601}),
    (
        "unknown-tool",
        _request("case-15", "tools/call", {"name": "nope", "arguments": {}}),
        {"id": "case-15", "tool_error": "nope"},
    ),
    (
        "tool-call-without-name",
        _request("case-16", "tools/call", {"arguments": {}}),
        {"id": "case-16", "code": -32602},
    ),
    (
        "lone-surrogate",
        b'{"jsonrpc": "2.0", "id": "case-17", "method": "tools/call", "params": '
        b'{"name": "embed", "arguments": {"texts": "\\ud800 x"}}}\n',
        {"id": "case-17", "code": -32600},
    ),
    (
        "invalid-utf8",
        b'{"jsonrpc": "2.0", "id": "case-18", "method": "tools/call", "params": {"name": "embed", '
        b'"arguments": {"texts": "caf\xe9 \xff", "model": "' + EMBEDDER.encode() + b'"}}}\n',
        {"id": "case-18", "result": True},
    ),
    ("line-over-the-limit", b'{"x": "' + b"a" * (LINE_LIMIT + 10) + b'"}\n', {"id": None, "code": -32600}),
    (
        "line-over-the-limit-answered-with-its-id",
        b'{"jsonrpc": "2.0", "id": "case-22", "method": "tools/call", "params": {"x": "'
        + b"a" * (LINE_LIMIT + 10)
        + b'"}}\n',
        {"id": "case-22", "code": -32600},
    ),
    (
        "line-over-the-limit-whose-id-comes-late",  # an "id" inside params is not taken for it
        b'{"jsonrpc": "2.0", "method": "tools/call", "params": {"id": "not-it", "x": "'
        + b"a" * (LINE_LIMIT + 10)
        + b'"}, "id": "case-23"}\n',
        {"id": None, "code": -32600},
    ),
    (
        "megabyte-and-a-half-line-parsed-off-the-loop",
        _request("case-25", "tools/call", {"name": "nope", "arguments": {"x": "a" * 1_500_000}}),
        {"id": "case-25", "tool_error": "nope"},
    ),
    (
        "megabyte-and-a-half-line-not-json",
        b'{"x": "' + b"a" * 1_500_000 + b"\n",
        {"id": None, "code": -32700},
    ),
    (
        "megabyte-and-a-half-invalid-notification",
        _line({"jsonrpc": "2.0", "method": 5, "params": {"x": "a" * 1_500_000}}),
        NO_ANSWER,
    ),
    (
        "nested-thousands-deep",
        b'{"jsonrpc": "2.0", "id": "case-20", "method": "ping", "params": {"a": '
        + b"[" * 5000
        + b"]" * 5000
        + b"}}\n",
        {"id": "case-20", "code": -32600},
    ),
    (
        "tool-name-not-a-string",
        _request("case-21", "tools/call", {"name": ["embed"], "arguments": {}}),
        {"id": "case-21", "code": -32602},
    ),
    (
        "unknown-resource",
        _request("case-19", "resources/read", {"uri": "openarc://nothing"}),
        {"id": "case-19", "error": True},
    ),
    (
        "cancel-unknown-request",
        _line({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 99_999}}),
        NO_ANSWER,
    ),
    ("request-without-id", _line({"jsonrpc": "2.0", "method": "tools/list"}), NO_ANSWER),
    ("invalid-notification", _line({"jsonrpc": "2.0", "method": 5}), NO_ANSWER),
    ("blank-lines", b"\n   \n\n", NO_ANSWER),
    ("response-nobody-asked-for", _line({"jsonrpc": "2.0", "id": 4242, "result": {}}), NO_ANSWER),
    (
        "invalid-response",  # an error under the host's own id could pass for the answer to its request
        _line({"jsonrpc": "2.0", "id": 1, "error": "not an object"}),
        NO_ANSWER,
    ),
    (
        "response-with-result-and-error",
        _line({"jsonrpc": "2.0", "id": 2, "result": {}, "error": {}}),
        NO_ANSWER,
    ),
]


@pytest.fixture(scope="module")
def wire_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("wire") / "server.log"


@pytest.fixture(scope="module")
async def wire(models_dir: Path, wire_log: Path) -> AsyncIterator[RawSession]:
    env = server_env(models_dir, OPENARC_PRELOAD=EMBEDDER, OPENARC_MAX_MEDIA_BYTES=str(MAX_MEDIA_BYTES))
    async with RawSession(env, stderr=wire_log) as session:
        await session.initialize()
        yield session


@pytest.mark.parametrize(("case", "raw", "expected"), CASES, ids=[case[0] for case in CASES])
async def test_every_bad_line_is_answered_and_serving_goes_on(
    wire: RawSession, case: str, raw: bytes, expected: dict[str, Any]
) -> None:
    assert wire.process.stdin is not None
    await wire.process.stdin.send(raw)
    ping = await wire.start_request("ping")
    pong = {"jsonrpc": "2.0", "id": ping, "result": {}}
    if expected is NO_ANSWER:
        first = await _next_response(wire)
        assert first == pong, first  # nothing was answered for the case itself
        return
    answers = [await _next_response(wire), await _next_response(wire)]  # the case's and the ping's
    assert pong in answers, answers
    answers.remove(pong)
    _check(answers[0], expected)


async def test_no_line_of_the_catalogue_needed_the_safety_net(wire: RawSession, wire_log: Path) -> None:
    """Each case above is answered by design: none reached the catch-all that keeps an unforeseen
    failure on one line from ending the connection."""
    await wire.request("ping")
    log = await anyio.Path(wire_log).read_text(errors="replace")
    assert "could not be parsed" not in log and "direct path failed" not in log, log[-2000:]


async def test_the_loaded_model_still_works_after_the_catalogue(wire: RawSession) -> None:
    reply = await wire.request(
        "tools/call", {"name": "embed", "arguments": {"model": EMBEDDER, "texts": "ok"}}
    )
    assert reply["result"].get("isError") is not True, reply
    assert len(reply["result"]["structuredContent"]["embeddings"][0]) == 384
    tools = await wire.request("tools/list")
    assert {tool["name"] for tool in tools["result"]["tools"]} >= {"generate", "embed"}


@pytest.mark.parametrize("reads_late", [False, True], ids=["host-reads-along", "host-reads-late"])
async def test_a_burst_written_at_once_is_answered_whole(wire: RawSession, reads_late: bool) -> None:
    """64 calls in one write, as a busy host sends them: each is answered once, with its own id and
    the vector a lone call gets; also when the host reads only after all are answered (~530 KB of
    answers against a 64 KiB pipe: the first written at once, the rest by the writer's thread)."""
    texts = [f"burst text number {i}" for i in range(64)]
    alone = await wire.request(
        "tools/call", {"name": "embed", "arguments": {"model": EMBEDDER, "texts": texts[7]}}
    )
    first = 10_000
    lines = [
        _request(first + i, "tools/call", {"name": "embed", "arguments": {"model": EMBEDDER, "texts": text}})
        for i, text in enumerate(texts)
    ]
    assert wire.process.stdin is not None
    await wire.process.stdin.send(b"".join(lines))
    if reads_late:
        await anyio.sleep(3)  # no deadline waits on this: it only lets the answers pile up
    answers = {}
    for _ in texts:
        answer = await _next_response(wire)
        answers[answer["id"]] = answer["result"]["structuredContent"]["embeddings"][0]
    assert sorted(answers) == list(range(first, first + 64))
    expected = alone["result"]["structuredContent"]["embeddings"][0]
    assert max(abs(a - b) for a, b in zip(answers[first + 7], expected, strict=True)) < 1e-4


async def test_lines_are_reassembled_across_reads_and_long_ones_skipped() -> None:
    """stdin arrives in pieces: a line may span reads, a line over the limit is skipped as it
    streams past (and reported once), a last line without a newline still counts."""
    reader, writer = os.pipe()
    pieces = [b'{"a": 1}\n{"b"', b": 2}\n" + b"x" * 40, b"x" * 40, b"x\n" + b'{"c": 3}\n{"d": 4}']

    def feed() -> None:
        for piece in pieces:
            os.write(writer, piece)
            time.sleep(0.05)  # separate reads
        os.close(writer)

    thread = threading.Thread(target=feed)
    thread.start()
    try:
        with anyio.fail_after(10):
            lines = [line async for line in stdio._lines(reader, limit=32)]
    finally:
        thread.join()
        os.close(reader)
    assert lines == [b'{"a": 1}', b'{"b": 2}', Oversized(b"x" * 40), b'{"c": 3}', b'{"d": 4}']


async def test_a_pipe_is_read_while_every_worker_thread_is_busy() -> None:
    """A pipe is read on the event loop: requests (a cancellation, say) still arrive when every
    thread of the default pool is taken by long calls."""
    reader, writer = os.pipe()
    limiter = anyio.to_thread.current_default_thread_limiter()
    borrowers = [object() for _ in range(int(limiter.total_tokens))]
    for borrower in borrowers:
        await limiter.acquire_on_behalf_of(borrower)
    try:
        os.write(writer, b'{"a": 1}\n{"b": 2}\n')
        os.close(writer)
        with anyio.fail_after(5):
            lines = [line async for line in stdio._lines(reader, limit=1024)]
    finally:
        for borrower in borrowers:
            limiter.release_on_behalf_of(borrower)
        os.close(reader)
    assert lines == [b'{"a": 1}', b'{"b": 2}']


async def test_stdin_that_is_a_file_is_read_to_its_end(tmp_path: Path) -> None:
    """A file cannot be watched for readiness; it is read by a thread instead."""
    requests = tmp_path / "requests.jsonl"
    requests.write_bytes(b'{"a": 1}\n{"b": 2}')
    fd = os.open(requests, os.O_RDONLY)
    try:
        with anyio.fail_after(5):
            lines = [line async for line in stdio._lines(fd, limit=1024)]
    finally:
        os.close(fd)
    assert lines == [b'{"a": 1}', b'{"b": 2}']


async def _next_response(wire: RawSession) -> dict[str, Any]:
    """The next message that is a response (notifications are set aside)."""
    while True:
        message = await wire.receive()
        if "method" not in message:
            return message


def _check(answer: dict[str, Any], expected: dict[str, Any]) -> None:
    assert answer["id"] == expected["id"], answer
    if "code" in expected:
        assert answer["error"]["code"] == expected["code"], answer
        assert answer["error"]["message"], answer
    elif "tool_error" in expected:
        assert answer["result"]["isError"] is True, answer
        assert expected["tool_error"] in answer["result"]["content"][0]["text"]
    elif expected.get("error"):
        assert "error" in answer, answer
    else:
        assert "result" in answer and answer["result"].get("isError") is not True, answer
